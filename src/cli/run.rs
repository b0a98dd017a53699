//! `run`: load and check everything, then start the node and wait for SIGINT or SIGTERM.

use crate::config::description::Description;
use crate::node::{self, NodeOptions};

/// Arguments of `run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node.
    #[arg(long, env = "NYM_MIXNODE_ID")]
    pub id: String,
    /// Shards (cores) to run; overrides `engine.cores` in the config (0 = all cores).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Topology: a JSON file or an http(s):// URL listing the nodes, or "nym-api"; VerLoc
    /// measures them and, with `engine.forward_to = "known"`, packets go only to their
    /// addresses. Overrides `topology.source` and `verloc.topology` in the config.
    #[arg(long)]
    pub topology: Option<String>,
    /// nym-api's base URL (e.g. https://validator.nymtech.net/api): read the topology from
    /// its node list. Sets `rotation.nym_api` and, unless --topology is given,
    /// `topology.source = "nym-api"`.
    #[arg(long, value_name = "URL")]
    pub nym_api: Option<String>,
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    let paths = super::node_paths(&args.id)?;
    let mut config = crate::config::Config::load_for_run(&paths, &args.id)?;
    if let Some(cores) = args.cores {
        config.engine.cores = cores;
    }
    if let Some(url) = args.nym_api {
        match crate::topology::TopologySource::parse(&url) {
            Ok(Some(crate::topology::TopologySource::Url(_))) => {}
            Ok(_) => anyhow::bail!(
                "--nym-api: '{url}' is not an http:// or https:// URL. Fix: give nym-api's base URL, e.g. --nym-api https://validator.nymtech.net/api"
            ),
            Err(e) => anyhow::bail!("--nym-api: {e}"),
        }
        config.rotation.nym_api = Some(url);
        if args.topology.is_none() {
            config.topology.source = crate::topology::NYM_API_SOURCE.to_string();
            config.verloc.topology = String::new();
        }
    }
    if let Some(topology) = args.topology {
        // Checked here so that a bad --topology fails before anything starts.
        crate::topology::refresh::KnownSource::parse(&topology, config.rotation.nym_api.as_deref())
            .map_err(|e| anyhow::anyhow!("--topology: {e}"))?;
        config.verloc.topology = topology.clone();
        config.topology.source = topology;
    }
    let keys = crate::keys::NodeKeys::load(&config.key_paths())?;
    let description = Description::load(&paths.description_file())?;
    crate::logging::init(&config.logging.level, config.logging.format);

    let m = &config.mixnode;
    print!("{}", super::banner());
    println!("Starting mixnode {}...", args.id);
    println!("Listening for incoming packets on {}", m.listening_address);
    println!("Announcing the following address: {}", m.announce_address);
    println!();
    println!("To bond your mixnode, you will need to provide the following:");
    println!("    Identity key: {}", keys.identity_base58());
    if config.rotation.mode == crate::rotation::RotationMode::Off {
        println!("    Sphinx key: {}", keys.sphinx_base58());
    } else {
        println!(
            "    Sphinx key: rotated by the node (rotation.mode = \"{}\"); `nym-mixnode node-details --id {}` lists the live ones",
            config.rotation.mode.as_str(),
            args.id
        );
    }
    println!("    Address: {}", m.announce_address);
    println!("    Mix port: {}", m.mix_port);
    println!("    Version: {}", m.version);
    println!();

    let shards = crate::shard::shard_count(config.engine.cores);
    // Capped (with a warning) if more than the CPUs this node may use.
    config.engine.cores = shards;
    node::limits::raise_open_files_limit(node::limits::descriptors_needed(&config, shards))?;
    // Caught before anything starts: a stop request while the node starts is answered once
    // it has started, not by the default action (death without a clean stop).
    let mut signals = node::ShutdownSignals::install()?;
    let running = node::start(&config, keys, description, NodeOptions::default())?;
    // Under systemd (Type=notify): ready once every port is bound. With WatchdogSec, the
    // watchdog is fed at half its interval, and only while no shard is stalled, so that
    // systemd restarts a node whose shard has hung.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled();
    let summary_interval = config.logging.summary_interval;
    let tick = watchdog.map_or(summary_interval, |w| (w / 2).min(summary_interval));
    let mut next_summary = std::time::Instant::now() + summary_interval;
    let mut summary = node::summary::Summarizer::default();
    let signal = signals.wait_every(tick, || {
        let snapshots = running.snapshots();
        if watchdog.is_some() && !snapshots.iter().any(|s| s.stalled) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        let now = std::time::Instant::now();
        if now >= next_summary {
            summary.log(&snapshots);
            next_summary = now + summary_interval;
        }
    });
    tracing::info!(signal, "shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.shutdown();
    Ok(())
}
