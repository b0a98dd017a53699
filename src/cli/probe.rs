//! `probe`: tell an operator whether a node is mixing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::Output;
use crate::framing::KeyRotation;
use crate::probe::{probe, ProbeOptions};

/// The rotation byte that names the key of `rotation_id`.
fn rotation_byte(rotation_id: u32) -> KeyRotation {
    if rotation_id % 2 == 1 {
        KeyRotation::Odd
    } else {
        KeyRotation::Even
    }
}

/// The local node's primary key and the rotation byte for it: the static key with byte 0, or
/// the primary the running node last listed (what `node-details` shows).
fn primary_key(
    config: &crate::config::Config,
    keys: &crate::keys::NodeKeys,
) -> anyhow::Result<(x25519_dalek::PublicKey, KeyRotation)> {
    use crate::rotation::{KeyState, RotationMode};
    if config.rotation.mode == RotationMode::Off {
        return Ok((keys.sphinx_public(), KeyRotation::Unknown));
    }
    let primary = super::node_details::live_keys(config, keys)?
        .into_iter()
        .find(|k| k.state == KeyState::Primary)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the node lists no rotating sphinx key yet ({} in its data folder): start it first",
                crate::rotation::store::MANIFEST
            )
        })?;
    let bytes = crate::keys::decode_base58_key(&primary.public_key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", crate::rotation::store::MANIFEST))?;
    Ok((
        x25519_dalek::PublicKey::from(bytes),
        rotation_byte(primary.rotation_id),
    ))
}

/// Arguments of `probe`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("node").required(true).args(["id", "target"])))]
pub struct Args {
    /// Probe the local node with this id (its mix port and Sphinx key from its config).
    #[arg(long)]
    pub id: Option<String>,
    /// The node's mix address, HOST:PORT (with --sphinx-key).
    #[arg(long, requires = "sphinx_key")]
    pub target: Option<SocketAddr>,
    /// The node's Sphinx public key in base58 (node-details prints it).
    #[arg(long)]
    pub sphinx_key: Option<String>,
    /// The rotation id of --sphinx-key, if it rotates (its parity goes in each frame's
    /// rotation byte); without it the byte is 0 and the node tries its primary key first.
    #[arg(long, requires = "sphinx_key")]
    pub rotation_id: Option<u32>,
    /// Test packets to send.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Address of this machine the node can reach to send the packets back (default: the
    /// address this machine uses towards the node).
    #[arg(long, value_parser = super::host_arg)]
    pub reply_host: Option<std::net::IpAddr>,
    /// A topology file (as `run --topology` takes): after the probed node, the packets also
    /// cross the nodes listed after it, in file order and wrapping round, up to 3 (Sphinx
    /// routes have at most five hops), so that one probe shows mixing across hops. When the
    /// file lists the probed node with a Noise key, the probe speaks Noise to it (as the
    /// node's peers listed with keys must).
    #[arg(long)]
    pub through: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    let (target, key, key_rotation) = match (&args.id, args.target, &args.sphinx_key) {
        (Some(id), _, _) => {
            let (config, keys) = super::load_node(id)?;
            let m = &config.mixnode;
            let host = if m.listening_address.is_unspecified() {
                if m.listening_address.is_ipv4() {
                    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                } else {
                    std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                }
            } else {
                m.listening_address
            };
            let (key, rotation) = primary_key(&config, &keys)?;
            (SocketAddr::new(host, m.mix_port), key, rotation)
        }
        (None, Some(target), Some(key)) => {
            let bytes = crate::keys::decode_base58_key(key)
                .map_err(|e| anyhow::anyhow!("--sphinx-key: {e}"))?;
            let rotation = args.rotation_id.map_or(KeyRotation::Unknown, rotation_byte);
            (target, x25519_dalek::PublicKey::from(bytes), rotation)
        }
        _ => anyhow::bail!("pass --id, or --target with --sphinx-key"),
    };
    let (then, target_noise) = match &args.through {
        Some(path) => hops_after(path, target)?,
        None => (Vec::new(), None),
    };
    // A fresh key pair: the node accepts any initiator key (as nym-nodes do); what it checks
    // is that the probe knows the node's own key.
    let noise = match target_noise {
        Some(remote) => {
            let private = crate::keys::NoiseKey::generate()
                .map_err(|e| {
                    anyhow::anyhow!("the operating system's random generator failed: {e}")
                })?
                .private
                .to_bytes();
            Some((crate::noise::NoiseIdentity::from_private(private), remote))
        }
        None => None,
    };
    let options = ProbeOptions {
        target,
        sphinx_key: key,
        key_rotation,
        count: args.count as usize,
        reply_host: args.reply_host,
        grace: Duration::from_secs(5),
        then,
        noise,
    };
    let report = probe(&options).context("probe failed")?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&report)?),
        Output::Text => {
            println!(
                "Probing {} with {} test packets; replies to {}",
                report.target, report.sent, report.reply_address
            );
            for (i, p) in report.packets.iter().enumerate() {
                match p.measured_ms {
                    Some(m) => println!(
                        "  packet {i:>3}: asked {:>5.1} ms, came back after {:>7.1} ms",
                        p.requested_ms, m
                    ),
                    None => println!(
                        "  packet {i:>3}: asked {:>5.1} ms, did not come back",
                        p.requested_ms
                    ),
                }
            }
            println!(
                "{}/{} came back, {} early",
                report.returned, report.sent, report.early
            );
            println!("{}", report.verdict);
        }
    }
    if !report.mixing {
        anyhow::bail!("{}", report.verdict);
    }
    Ok(())
}

/// Hops after a probed node, and the probed node's Noise key if the file lists one.
type HopsAfter = (Vec<(SocketAddr, x25519_dalek::PublicKey)>, Option<[u8; 32]>);

/// The nodes of the topology file at `path` after the one at `target` (by mix address), in
/// file order and wrapping round, at most [`crate::probe::THEN_HOPS_MAX`]; and `target`'s
/// Noise key, if the file lists one.
fn hops_after(path: &std::path::Path, target: SocketAddr) -> anyhow::Result<HopsAfter> {
    let source = crate::topology::TopologySource::File(path.to_path_buf());
    let topology = source.load(Duration::from_secs(5))?;
    let mut nodes = Vec::new();
    for node in &topology.nodes {
        let ip: std::net::IpAddr = node.host.parse().map_err(|_| {
            anyhow::anyhow!(
                "--through: {} lists host {:?}; the probe routes through IP addresses only",
                path.display(),
                node.host
            )
        })?;
        nodes.push((SocketAddr::new(ip, node.mix_port), node.sphinx_key));
    }
    let position = nodes.iter().position(|(address, _)| *address == target);
    let target_noise = position.and_then(|i| topology.nodes[i].noise_key);
    let start = position.map_or(0, |i| i + 1);
    let then = (0..nodes.len())
        .map(|k| nodes[(start + k) % nodes.len()])
        .filter(|(address, _)| *address != target)
        .take(crate::probe::THEN_HOPS_MAX)
        .collect();
    Ok((then, target_noise))
}
