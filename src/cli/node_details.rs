//! `node-details`: print what an operator needs to bond or check the node.

use super::Output;

/// Arguments of `node-details`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node.
    #[arg(long)]
    pub id: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    let (config, keys) = super::load_node(&args.id)?;
    let m = &config.mixnode;
    match args.output {
        Output::Json => {
            let out = serde_json::json!({
                "identity_key": keys.identity_base58(),
                "sphinx_key": keys.sphinx_base58(),
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
            println!("Sphinx key: {}", keys.sphinx_base58());
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
