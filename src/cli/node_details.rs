//! `node-details`: print what an operator needs to bond or check the node.

use super::Output;
use crate::config::Config;
use crate::keys::NodeKeys;
use crate::rotation::store::{KeyStore, ManifestKey};
use crate::rotation::{KeyState, RotationMode};

/// The keys the node holds live, as it last wrote them (`data/sphinx_keys.json`); with one
/// static key, that key.
pub(super) fn live_keys(config: &Config, keys: &NodeKeys) -> anyhow::Result<Vec<ManifestKey>> {
    let store = KeyStore::new(crate::node::replay_store::data_dir(config));
    let manifest = store.read_manifest()?;
    let fixed = || {
        vec![ManifestKey {
            rotation_id: 0,
            public_key: keys.sphinx_base58(),
            state: KeyState::Primary,
        }]
    };
    Ok(match (config.rotation.mode, manifest) {
        (RotationMode::Off, _) => fixed(),
        (mode, Some(manifest)) if manifest.mode == mode => manifest.keys,
        _ => Vec::new(),
    })
}

/// The Noise key the node announces: None with `engine.noise = "off"` or no key pair.
fn noise_key(config: &Config, keys: &NodeKeys) -> Option<String> {
    match config.engine.noise {
        crate::config::NoiseMode::Off => None,
        crate::config::NoiseMode::Auto => keys.noise.as_ref().map(|k| k.public_base58()),
    }
}

/// Arguments of `node-details`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node.
    #[arg(long, env = "NYM_MIXNODE_ID")]
    pub id: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    let (config, keys) = super::load_node(&args.id)?;
    let m = &config.mixnode;
    let live = live_keys(&config, &keys)?;
    let primary = live
        .iter()
        .find(|k| k.state == KeyState::Primary)
        .map(|k| k.public_key.clone())
        .unwrap_or_else(|| keys.sphinx_base58());
    match args.output {
        Output::Json => {
            let out = serde_json::json!({
                "identity_key": keys.identity_base58(),
                "sphinx_key": primary,
                "sphinx_keys": live,
                "rotation_mode": config.rotation.mode.as_str(),
                "noise_key": noise_key(&config, &keys),
                "host": m.listening_address.to_string(),
                "announce_host": m.announce_address.to_string(),
                "mix_port": m.mix_port,
                "verloc_port": m.verloc_port,
                "http_api_port": m.http_api_port,
                "version": m.version,
            });
            println!("{out}");
        }
        Output::Text => {
            print!("{}", super::banner());
            println!("Identity key: {}", keys.identity_base58());
            println!("Sphinx key: {primary}");
            println!("Key rotation: {}", config.rotation.mode.as_str());
            match noise_key(&config, &keys) {
                Some(key) => println!("Noise key: {key}"),
                None if config.engine.noise == crate::config::NoiseMode::Off => {
                    println!("Noise key: none announced (engine.noise = \"off\")")
                }
                None => println!(
                    "Noise key: none yet. Fix: run `nym-mixnode upgrade --id {}` to make one",
                    args.id
                ),
            }
            if live.is_empty() {
                println!("Sphinx keys: none yet (the node makes its rotating keys when it starts)");
            }
            for key in &live {
                println!(
                    "Sphinx key of rotation {} ({}): {}",
                    key.rotation_id,
                    key.state.as_str(),
                    key.public_key
                );
            }
            println!("Host: {}", m.listening_address);
            println!("Announce host: {}", m.announce_address);
            println!("Mix port: {}", m.mix_port);
            println!("VerLoc port: {}", m.verloc_port);
            println!("HTTP API port: {}", m.http_api_port);
            println!("Version: {}", m.version);
        }
    }
    Ok(())
}
