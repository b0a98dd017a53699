//! `upgrade`: migrate a config written by an older version, keeping a copy of the old file.

use anyhow::Context;

use crate::config::upgrade::{upgrade, Upgrade};

/// Arguments of `upgrade`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node.
    #[arg(long, env = "NYM_MIXNODE_ID")]
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
            let config = crate::config::Config::from_text(&file, &text)?;
            match make_noise_key(&config)? {
                Some(note) => {
                    println!(
                        "{} is already at version {}.",
                        file.display(),
                        crate::config::VERSION
                    );
                    println!("  - {note}");
                }
                None => println!(
                    "{} is already at version {}; nothing to do.",
                    file.display(),
                    crate::config::VERSION
                ),
            }
        }
        Upgrade::Migrated {
            from,
            mut config,
            mut notes,
        } => {
            notes.extend(find_moved_keys(&mut config, &paths.data_dir()));
            config.validate(&file)?;
            notes.extend(make_noise_key(&config)?);
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

/// A node made before Noise has no Noise key pair: make one beside its identity key (never
/// over an existing file). The note to print, if one was made.
fn make_noise_key(config: &crate::config::Config) -> anyhow::Result<Option<String>> {
    let paths = config.key_paths().noise();
    if paths.any_exists() {
        // Loaded (and checked) when the node starts.
        return Ok(None);
    }
    let key = crate::keys::NoiseKey::generate()
        .map_err(|e| anyhow::anyhow!("the operating system's random generator failed: {e}"))?;
    key.write_new(&paths)?;
    Ok(Some(format!(
        "made the node's Noise key pair ({}, {}); Noise key {}. The node announces it and speaks Noise with peers that announce one (engine.noise = \"off\" turns this off)",
        paths.private.display(),
        paths.public.display(),
        key.public_base58()
    )))
}

/// Key paths of an old file that point where no key is (a home moved from another machine or
/// user, e.g. /home/nym/.nym/...) while a file of the same name sits in this node's own
/// `data/`: point them there. One note per path changed.
fn find_moved_keys(config: &mut crate::config::Config, data_dir: &std::path::Path) -> Vec<String> {
    let m = &mut config.mixnode;
    let mut notes = Vec::new();
    for path in [
        &mut m.private_identity_key_file,
        &mut m.public_identity_key_file,
        &mut m.private_sphinx_key_file,
        &mut m.public_sphinx_key_file,
    ] {
        if path.is_file() {
            continue;
        }
        let Some(name) = path.file_name() else {
            continue;
        };
        let here = data_dir.join(name);
        if here.is_file() {
            notes.push(format!(
                "key file {} does not exist; using {} (the same name in this node's data/)",
                path.display(),
                here.display()
            ));
            *path = here;
        }
    }
    notes
}
