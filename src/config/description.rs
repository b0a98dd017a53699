//! `description.toml`: what the operator says about the node, served at `/description`.

use std::fs;
use std::path::Path;

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
}

impl Description {
    /// Read `path`; a missing file is an empty description.
    pub fn load(path: &Path) -> Result<Description, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Description::default()),
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
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
        Ok(description)
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

    /// Write `path`.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate(path)?;
        let text = toml::to_string(self).unwrap_or_default();
        fs::write(path, text).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
