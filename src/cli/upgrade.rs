//! `upgrade`: migrate a config written by an older version, keeping a copy of the old file.

use anyhow::Context;

use crate::config::upgrade::{upgrade, Upgrade};

/// Arguments of `upgrade`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node.
    #[arg(long)]
    pub id: String,
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    print!("{}", super::banner());
    let paths = super::node_paths(&args.id)?;
    let file = paths.config_file();
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read config file {}. Fix: check --id and ${}",
            file.display(),
            crate::config::HOME_ENV
        )
    })?;
    match upgrade(&file, &text, &args.id)? {
        Upgrade::Current => {
            println!(
                "{} is already at version {}; nothing to do.",
                file.display(),
                crate::config::VERSION
            );
        }
        Upgrade::Migrated {
            from,
            config,
            notes,
        } => {
            config.validate(&file)?;
            let mut backup = file.with_file_name(format!("config.toml.{from}.bak"));
            let mut n = 1;
            while backup.exists() {
                backup = file.with_file_name(format!("config.toml.{from}.bak.{n}"));
                n += 1;
            }
            std::fs::copy(&file, &backup).with_context(|| {
                format!(
                    "cannot keep a copy of {} at {}",
                    file.display(),
                    backup.display()
                )
            })?;
            config.save(&file)?;
            println!(
                "Upgraded {} from {from} to {}.",
                file.display(),
                crate::config::VERSION
            );
            println!("The old file is kept at {}.", backup.display());
            for note in notes {
                println!("  - {note}");
            }
        }
    }
    Ok(())
}
