//! The operator commands: `init`, `run`, `sign`, `describe`, `upgrade`, `node-details`,
//! and `probe`.
//!
//! This is the only place where errors become messages for a person and exit codes
//! (`anyhow` lives here and nowhere else). Each command is a thin function over the library.

mod describe;
mod init;
mod node_details;
mod probe;
mod run;
mod sign;
mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, NodePaths};

/// The banner every command prints first, as the operator guide shows it.
pub fn banner() -> String {
    format!(
        r#"

      _ __  _   _ _ __ ___
     | '_ \| | | | '_ \ _ \
     | | | | |_| | | | | | |
     |_| |_|\__, |_| |_| |_|
            |___/

             (mixnode - version {})

"#,
        config::VERSION
    )
}

/// A Sphinx mixnode for the Nym mixnet.
#[derive(Parser, Debug)]
#[command(name = "nym-mixnode", version = config::VERSION, about, long_about = None)]
#[command(
    after_help = "Files live in <home>/mixnodes/<id>/ (home: --home, else $NYM_MIXNODE_HOME, else ~/.nym). Every --id also reads $NYM_MIXNODE_ID."
)]
pub struct Cli {
    /// The home folder of the nodes' files [default: ~/.nym].
    #[arg(long, global = true, env = "NYM_MIXNODE_HOME", value_name = "DIR")]
    pub home: Option<std::path::PathBuf>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of commands that print data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Text for a person.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// The operator commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a node: its config file and its identity and Sphinx keys.
    Init(init::Args),
    /// Run the node.
    Run(run::Args),
    /// Sign a text with the node's identity key.
    Sign(sign::Args),
    /// Describe the node: name, description, link and location shown by the HTTP API.
    Describe(describe::Args),
    /// Migrate a config written by an older version, keeping a copy of the old file.
    Upgrade(upgrade::Args),
    /// Print the node's keys, addresses, ports and version.
    NodeDetails(node_details::Args),
    /// Send test packets through a node and report whether it is mixing.
    Probe(probe::Args),
}

/// Parse the command line, run the command, turn any error into a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(home) = &cli.home {
        // Set once, before any thread starts: every path below reads the home from here.
        std::env::set_var(config::HOME_ENV, home);
    }
    let result = match cli.command {
        Command::Init(args) => init::execute(args),
        Command::Run(args) => run::execute(args),
        Command::Sign(args) => sign::execute(args),
        Command::Describe(args) => describe::execute(args),
        Command::Upgrade(args) => upgrade::execute(args),
        Command::NodeDetails(args) => node_details::execute(args),
        Command::Probe(args) => probe::execute(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Paths of node `id` in the home folder, after checking the id.
fn node_paths(id: &str) -> anyhow::Result<NodePaths> {
    config::validate_id(id).map_err(anyhow::Error::msg)?;
    Ok(NodePaths::new(&config::home_dir(), id))
}

/// Load a node's config and keys for commands other than `run` (any runnable version).
fn load_node(id: &str) -> anyhow::Result<(config::Config, crate::keys::NodeKeys)> {
    let paths = node_paths(id)?;
    let config = config::Config::load_for_run(&paths, id)?;
    let keys = crate::keys::NodeKeys::load(&config.key_paths())?;
    Ok((config, keys))
}

/// Parse `--host`-style values for clap.
fn host_arg(text: &str) -> Result<std::net::IpAddr, String> {
    config::parse_host(text)
}
