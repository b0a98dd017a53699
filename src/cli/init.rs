//! `init`: create a node, or re-apply settings to an existing one without touching its keys.

use std::net::IpAddr;

use anyhow::Context;

use crate::config::{self, Config, InitSettings};
use crate::keys::{KeyPaths, NodeKeys};

/// Arguments of `init`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node: the name of its folder under <home>/mixnodes/.
    #[arg(long, env = "NYM_MIXNODE_ID")]
    pub id: String,
    /// IPv4 or IPv6 address to bind (no port, no host name).
    #[arg(long, value_parser = super::host_arg)]
    pub host: IpAddr,
    /// Address to announce when it differs from --host (e.g. behind cloud NAT).
    #[arg(long, value_parser = super::host_arg)]
    pub announce_host: Option<IpAddr>,
    /// Port for mix traffic [default: 1789].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub mix_port: Option<u16>,
    /// Port for VerLoc measurements [default: 1790].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub verloc_port: Option<u16>,
    /// Port for the HTTP API [default: 8000].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub http_api_port: Option<u16>,
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    print!("{}", super::banner());
    let paths = super::node_paths(&args.id)?;
    let config_file = paths.config_file();
    println!("Initialising mixnode {}...", args.id);

    let config = if config_file.exists() {
        println!(
            "Node {} already exists at {}: its keys are kept as they are; only the settings given on the command line are applied.",
            args.id,
            paths.root.display()
        );
        let text = std::fs::read_to_string(&config_file)
            .with_context(|| format!("cannot read {}", config_file.display()))?;
        let mut config = Config::from_text(&config_file, &text).map_err(|e| {
            anyhow::anyhow!("{e}\n(if the file is from an older version, run `nym-mixnode upgrade --id {}` first)", args.id)
        })?;
        let m = &mut config.mixnode;
        m.listening_address = args.host;
        if let Some(announce) = args.announce_host {
            m.announce_address = announce;
        }
        if let Some(port) = args.mix_port {
            m.mix_port = port;
        }
        if let Some(port) = args.verloc_port {
            m.verloc_port = port;
        }
        if let Some(port) = args.http_api_port {
            m.http_api_port = port;
        }
        config
    } else {
        let settings = InitSettings {
            id: args.id.clone(),
            host: args.host,
            announce_host: args.announce_host,
            mix_port: args.mix_port.unwrap_or(config::DEFAULT_MIX_PORT),
            verloc_port: args.verloc_port.unwrap_or(config::DEFAULT_VERLOC_PORT),
            http_api_port: args.http_api_port.unwrap_or(config::DEFAULT_HTTP_API_PORT),
        };
        let config = Config::new(&settings, &paths);
        // Every argument is checked before anything is written.
        config.validate_settings(&config_file)?;
        let data_dir = paths.data_dir();
        let key_paths = KeyPaths::in_data_dir(&data_dir);
        if key_paths.any_exists() {
            anyhow::bail!(
                "{} already holds key files but {} is missing; refusing to overwrite keys. Fix: restore config.toml from your backup, or choose another --id",
                data_dir.display(),
                config_file.display()
            );
        }
        let keys = NodeKeys::generate()
            .map_err(|e| anyhow::anyhow!("the operating system's random generator failed: {e}"))?;
        let new_dirs: Vec<std::path::PathBuf> =
            [paths.root.clone(), data_dir.clone(), paths.config_dir()]
                .into_iter()
                .filter(|dir| !dir.exists())
                .collect();
        let made = std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))
            .and_then(|()| keys.write_new(&key_paths).map_err(anyhow::Error::from))
            .and_then(|()| config.save(&config_file).map_err(anyhow::Error::from));
        if let Err(error) = made {
            // Never leave a half-made id: what this call wrote goes again.
            remove_new_node(&paths, &key_paths, &new_dirs);
            return Err(error.context(format!(
                "nothing was kept of node {}; fix the cause and run init again",
                args.id
            )));
        }
        println!(
            "Saved identity, Sphinx and Noise key pairs in {}",
            data_dir.display()
        );
        config
    };
    config.validate(&config_file)?;
    config.save(&config_file)?;
    println!("Saved configuration file to {}", config_file.display());

    let keys = NodeKeys::load(&config.key_paths())?;
    let m = &config.mixnode;
    println!();
    println!("Identity key: {}", keys.identity_base58());
    println!("Sphinx key: {}", keys.sphinx_base58());
    if let Some(noise) = &keys.noise {
        println!("Noise key: {}", noise.public_base58());
    }
    println!("Host: {} (bind)", m.listening_address);
    println!("Announced address: {}", m.announce_address);
    println!(
        "Mix port: {}, VerLoc port: {}, HTTP API port: {}",
        m.mix_port, m.verloc_port, m.http_api_port
    );
    println!("Version: {}", m.version);
    println!("Mixnode configuration completed.");
    Ok(())
}

/// Remove what a failed `init` of a new node wrote: its key files, its config file and the
/// folders it made (`new_dirs`, outermost first; each only if empty, so nothing else goes).
fn remove_new_node(paths: &config::NodePaths, keys: &KeyPaths, new_dirs: &[std::path::PathBuf]) {
    let noise = keys.noise();
    for file in keys
        .all()
        .into_iter()
        .chain([&*noise.private, &*noise.public])
    {
        let _ = std::fs::remove_file(file);
    }
    let config_file = paths.config_file();
    let _ = std::fs::remove_file(&config_file);
    let _ = std::fs::remove_file(config_file.with_extension("toml.tmp"));
    for dir in new_dirs.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}
