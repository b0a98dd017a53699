//! Rotating Sphinx keys on disk, beside the node's other keys in `data/`:
//!
//! - `sphinx_rotation_<id>.pem`: the private key of rotation `<id>` (mode 0600, written
//!   atomically: temporary file, fsync, rename, fsync of the folder);
//! - `replay_filter_<id>.bin`: that key's saved replay filter (see
//!   [`crate::node::replay_store`]);
//! - `sphinx_keys.json`: the live keys and their states, rewritten after every change, which
//!   `node-details` reads;
//! - `rotation_schedule.json`: the last schedule nym-api gave (`mode = "network"`), so that a
//!   node restarting while nym-api is unreachable still knows its keys' rotations.
//!
//! What it deliberately does not do: decide which keys should exist (the controller does).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::{KeyState, Schedule};
use crate::keys::{KeyError, PEM_TAG_SPHINX_PRIVATE};

/// File name of the manifest of live keys.
pub const MANIFEST: &str = "sphinx_keys.json";
/// File name of the last nym-api schedule.
pub const SCHEDULE: &str = "rotation_schedule.json";
const KEY_PREFIX: &str = "sphinx_rotation_";
const FILTER_PREFIX: &str = "replay_filter_";

/// A key file or manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or parsing a key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Writing a file.
    #[error("cannot write {path}: {cause}. Fix: make the node's data folder writable by its user")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The manifest cannot be read.
    #[error("cannot read {path}: {reason}. Fix: start the node once (it rewrites the file), or delete the file")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No randomness.
    #[error("cannot get randomness for a new sphinx key: {0}")]
    Random(String),
}

/// One live key as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestKey {
    /// Its rotation id.
    pub rotation_id: u32,
    /// Its public key in base58.
    pub public_key: String,
    /// What it is for.
    pub state: KeyState,
}

/// The manifest file's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `rotation.mode` when it was written.
    pub mode: super::RotationMode,
    /// The live keys, primary first.
    pub keys: Vec<ManifestKey>,
}

/// A schedule as saved.
#[derive(Serialize, Deserialize)]
struct SavedSchedule {
    validity_epochs: u32,
    initial_epoch: u32,
    current_epoch: u32,
    current_epoch_start_unix_ms: u64,
    epoch_duration_ms: u64,
}

/// Write `bytes` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = dir.join(name);
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)?;
        // The umask may have narrowed the mode, or an old temporary file had another.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The key files of one node's `data/` folder.
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// The store in `dir` (the node's `data/` folder).
    pub fn new(dir: PathBuf) -> KeyStore {
        KeyStore { dir }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The private key file of rotation `id`.
    pub fn key_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{KEY_PREFIX}{id}.pem"))
    }

    /// The saved replay filter of rotation `id`.
    pub fn filter_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{FILTER_PREFIX}{id}.bin"))
    }

    /// The key of rotation `id`, if its file exists.
    pub fn load(&self, id: u32) -> Result<Option<StaticSecret>, StoreError> {
        let path = self.key_path(id);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = crate::keys::read_pem(&path, PEM_TAG_SPHINX_PRIVATE)?;
        Ok(Some(StaticSecret::from(bytes)))
    }

    /// The key of rotation `id`: loaded, or fresh randomness written to its file first. The
    /// second value says whether it was made now.
    pub fn load_or_generate(&self, id: u32) -> Result<(StaticSecret, bool), StoreError> {
        if let Some(secret) = self.load(id)? {
            return Ok((secret, false));
        }
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut bytes[..]).map_err(|e| StoreError::Random(e.to_string()))?;
        let secret = StaticSecret::from(*bytes);
        self.store(id, &secret)?;
        Ok((secret, true))
    }

    /// Write `secret` as the key of rotation `id` (replacing any).
    pub fn store(&self, id: u32, secret: &StaticSecret) -> Result<(), StoreError> {
        let text = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(
            PEM_TAG_SPHINX_PRIVATE,
            secret.to_bytes().to_vec(),
        )));
        let path = self.key_path(id);
        write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|cause| StoreError::Write { path, cause })
    }

    /// Delete rotation `id`'s key file and saved filter (missing files are fine).
    pub fn remove(&self, id: u32) {
        for path in [self.key_path(id), self.filter_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed a purged key's file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a purged key's file; delete it by hand")
                }
            }
        }
    }

    /// Rotation ids with a key file or a saved filter here.
    pub fn stored_ids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let id = name
                    .strip_prefix(KEY_PREFIX)
                    .and_then(|rest| rest.strip_suffix(".pem"))
                    .or_else(|| {
                        name.strip_prefix(FILTER_PREFIX)
                            .and_then(|rest| rest.strip_suffix(".bin"))
                    })?;
                id.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Rewrite the manifest.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let path = self.dir.join(MANIFEST);
        let mut text = serde_json::to_string_pretty(manifest).unwrap_or_default();
        text.push('\n');
        write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|cause| StoreError::Write { path, cause })
    }

    /// The manifest, if the node wrote one.
    pub fn read_manifest(&self) -> Result<Option<Manifest>, StoreError> {
        let path = self.dir.join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Manifest {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Manifest {
                path,
                reason: e.to_string(),
            })
    }

    /// Save the schedule nym-api gave.
    pub fn save_schedule(&self, schedule: &Schedule) -> Result<(), StoreError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let saved = SavedSchedule {
            validity_epochs: schedule.validity_epochs,
            initial_epoch: schedule.initial_epoch,
            current_epoch: schedule.current_epoch,
            current_epoch_start_unix_ms: ms(schedule
                .current_epoch_start
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()),
            epoch_duration_ms: ms(schedule.epoch_duration),
        };
        let path = self.dir.join(SCHEDULE);
        let text = serde_json::to_string(&saved).unwrap_or_default();
        write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|cause| StoreError::Write { path, cause })
    }

    /// The last saved schedule, if any and readable (an unreadable one is ignored with a
    /// warning: nym-api is asked again).
    pub fn load_schedule(&self) -> Option<Schedule> {
        let path = self.dir.join(SCHEDULE);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<SavedSchedule>(&bytes) {
            Ok(saved) if saved.validity_epochs > 0 && saved.epoch_duration_ms >= 1000 => {
                Some(Schedule {
                    validity_epochs: saved.validity_epochs,
                    initial_epoch: saved.initial_epoch,
                    current_epoch: saved.current_epoch,
                    current_epoch_start: UNIX_EPOCH
                        + Duration::from_millis(saved.current_epoch_start_unix_ms),
                    epoch_duration: Duration::from_millis(saved.epoch_duration_ms),
                })
            }
            _ => {
                tracing::warn!(file = %path.display(), "ignoring an unreadable saved rotation schedule");
                None
            }
        }
    }
}

/// A public key in base58, as node-details and host-information show it.
pub fn public_base58(secret: &StaticSecret) -> String {
    bs58::encode(PublicKey::from(secret).as_bytes()).into_string()
}

/// When a saved schedule was last true, for the log.
pub fn describe_age(schedule: &Schedule, now: SystemTime) -> String {
    let age = now
        .duration_since(schedule.current_epoch_start)
        .unwrap_or_default();
    humantime::format_duration(Duration::from_secs(age.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_written_private_and_read_back_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().to_path_buf());
        assert!(store.load(7).unwrap().is_none());
        let (secret, made) = store.load_or_generate(7).unwrap();
        assert!(made);
        let mode = std::fs::metadata(store.key_path(7))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (again, made) = store.load_or_generate(7).unwrap();
        assert!(!made);
        assert_eq!(again.to_bytes(), secret.to_bytes());
        let (other, _) = store.load_or_generate(8).unwrap();
        assert_ne!(
            other.to_bytes(),
            secret.to_bytes(),
            "fresh randomness per key"
        );
        std::fs::write(store.filter_path(9), b"x").unwrap();
        assert_eq!(store.stored_ids(), vec![7, 8, 9]);
        store.remove(7);
        store.remove(9);
        assert_eq!(store.stored_ids(), vec![8]);
        assert!(!dir.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().to_path_buf());
        std::fs::write(store.key_path(3), "garbage").unwrap();
        let err = store.load(3).err().expect("refused").to_string();
        assert!(err.contains("sphinx_rotation_3.pem"), "{err}");
    }

    #[test]
    fn manifest_and_schedule_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().to_path_buf());
        assert!(store.read_manifest().unwrap().is_none());
        let manifest = Manifest {
            mode: super::super::RotationMode::Local,
            keys: vec![ManifestKey {
                rotation_id: 4,
                public_key: "abc".into(),
                state: KeyState::Primary,
            }],
        };
        store.write_manifest(&manifest).unwrap();
        assert_eq!(store.read_manifest().unwrap(), Some(manifest));
        let schedule = Schedule::local(Duration::from_secs(60), 5, SystemTime::now());
        store.save_schedule(&schedule).unwrap();
        assert_eq!(store.load_schedule(), Some(schedule));
        std::fs::write(dir.path().join(SCHEDULE), "{").unwrap();
        assert_eq!(store.load_schedule(), None);
    }
}
