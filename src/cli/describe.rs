//! `describe`: set the name, description, link and location served at `/description`.
//!
//! At a terminal, asks for each field not given as a flag (Enter keeps the current value);
//! from a script, the flags alone are applied.

use std::io::{BufRead, IsTerminal, Write};

use crate::config::description::Description;

/// Arguments of `describe`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node.
    #[arg(long, env = "NYM_MIXNODE_ID")]
    pub id: String,
    /// Name of the node.
    #[arg(long)]
    pub name: Option<String>,
    /// A sentence or two about the node.
    #[arg(long)]
    pub description: Option<String>,
    /// A web link, e.g. https://mixnode.yourdomain.com.
    #[arg(long)]
    pub link: Option<String>,
    /// Where the node runs, e.g. a city or country.
    #[arg(long)]
    pub location: Option<String>,
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    let paths = super::node_paths(&args.id)?;
    if !paths.config_file().exists() {
        anyhow::bail!(
            "node {} does not exist ({} is missing). Fix: run `nym-mixnode init --id {} --host <your IP>` first",
            args.id,
            paths.config_file().display(),
            args.id
        );
    }
    let file = paths.description_file();
    let mut description = Description::load(&file)?;
    let interactive = std::io::stdin().is_terminal();
    print!("{}", super::banner());
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut ask =
        |label: &str, given: Option<String>, current: &mut String| -> anyhow::Result<()> {
            if let Some(value) = given {
                *current = value;
            } else if interactive {
                print!("{label} [{current}]: ");
                std::io::stdout().flush()?;
                if let Some(line) = lines.next() {
                    let line = line?;
                    let line = line.trim();
                    if !line.is_empty() {
                        *current = line.to_string();
                    }
                }
            }
            Ok(())
        };
    ask("name", args.name, &mut description.name)?;
    ask(
        "description",
        args.description,
        &mut description.description,
    )?;
    ask(
        "link, e.g. https://mixnode.yourdomain.com",
        args.link,
        &mut description.link,
    )?;
    ask(
        "location, e.g. City, Country",
        args.location,
        &mut description.location,
    )?;
    description.save(&file)?;
    println!("Saved the description to {}", file.display());
    println!(
        "A running node serves it at /description from its next request on; no restart is needed."
    );
    Ok(())
}
