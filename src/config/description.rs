//! `description.toml`: what the operator says about the node, served at `/description`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Longest value of any description field, in bytes.
pub const FIELD_LENGTH_MAX: usize = 1024;

/// The node's self-description.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Description {
    /// A short name.
    pub name: String,
    /// A sentence or two about the node.
    pub description: String,
    /// A web link.
    pub link: String,
    /// Where the node runs.
    pub location: String,
    /// The file it was read from, if any (not part of the file or of `/description`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Description {
    /// Read `path`; a missing file is an empty description.
    pub fn load(path: &Path) -> Result<Description, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Description {
                    source: Some(path.to_path_buf()),
                    ..Description::default()
                })
            }
            Err(cause) => {
                return Err(ConfigError::Io {
                    path: path.to_path_buf(),
                    cause,
                })
            }
        };
        let description: Description = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: super::indent(&e.to_string()),
            fix: "correct the line, or run `nym-mixnode describe` again to rewrite the file"
                .to_string(),
        })?;
        description.validate(path)?;
        Ok(Description {
            source: Some(path.to_path_buf()),
            ..description
        })
    }

    /// Check field lengths.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        for (field, value) in [
            ("name", &self.name),
            ("description", &self.description),
            ("link", &self.link),
            ("location", &self.location),
        ] {
            if value.len() > FIELD_LENGTH_MAX {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    field: field.to_string(),
                    problem: format!("is {} bytes long", value.len()),
                    fix: format!("shorten it to at most {FIELD_LENGTH_MAX} bytes"),
                });
            }
        }
        Ok(())
    }

    /// Write `path` atomically (temporary file, then rename), so that a running node never
    /// reads half a file.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate(path)?;
        let text = toml::to_string(self).unwrap_or_default();
        let io = |cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let temporary = path.with_extension("toml.tmp");
        fs::write(&temporary, text).map_err(io)?;
        fs::rename(&temporary, path).map_err(io)
    }
}

/// The description as the HTTP API serves it: read again from its file whenever the file
/// changed, so that `describe` on a running node takes effect at once. A file that no longer
/// reads keeps the last good description (and is logged once per change).
#[derive(Debug)]
pub struct LiveDescription {
    /// The file's modification time when last read, and what was read.
    last: Mutex<(Option<SystemTime>, Description)>,
}

impl LiveDescription {
    /// Serve `description`, and follow its file if it was read from one.
    pub fn new(description: Description) -> LiveDescription {
        let modified = description
            .source
            .as_deref()
            .and_then(|path| fs::metadata(path).and_then(|m| m.modified()).ok());
        LiveDescription {
            last: Mutex::new((modified, description)),
        }
    }

    /// The description now.
    pub fn current(&self) -> Description {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = last.1.source.clone() else {
            return last.1.clone();
        };
        let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified != last.0 {
            last.0 = modified;
            match Description::load(&path) {
                Ok(description) => last.1 = description,
                Err(error) => {
                    tracing::warn!(%error, "description: keeping the last good one");
                }
            }
        }
        last.1.clone()
    }
}
