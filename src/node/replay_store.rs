//! Saving and loading the shards' replay filters, so that a restart does not forget replays.
//!
//! The static key's filters are saved in `replay_filter.bin` beside its private key; each
//! rotating key's in `replay_filter_<rotation id>.bin` (deleted with the key when it is
//! purged). They are loaded before the engine starts. A thread asks the shards for copies of their
//! filters every `engine.replay_filter_save_interval` (each shard copies a bounded part per
//! round between packets, so no shard stalls), encodes them and writes the file atomically
//! (temporary file, fsync, rename, fsync of the folder); at shutdown the shards' final copies
//! are written the same way.
//!
//! What a crash can let through: packets first seen after the last save (at most one save
//! interval of them) are forgotten by a SIGKILL or power loss, and a replay of one of them
//! after the restart is mixed again. A clean stop (SIGINT, SIGTERM) saves everything.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::replay::snapshot::{self, FilterImage, SnapshotHeader};
use crate::rotation::store::KeyStore;
use crate::shard::{FilterMessage, FilterSaveRequester, FINAL_IMAGE};

/// File name of the saved filters, in the Sphinx key's folder.
pub const FILE_NAME: &str = "replay_filter.bin";
/// Longest wait for every shard's answer to one save request.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often the saver looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The folder of `config`'s node keys (`data/`).
pub fn data_dir(config: &Config) -> PathBuf {
    let key = &config.mixnode.private_sphinx_key_file;
    key.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `config`'s node keeps the static key's saved replay filter.
pub fn path_for(config: &Config) -> PathBuf {
    data_dir(config).join(FILE_NAME)
}

/// The saved filters could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read.
    #[error("cannot read the saved replay filter {path}: {cause}. Fix: make it readable by the node's user, or delete it to start with an empty filter (replays of packets seen before the restart are then mixed again)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The file is not a valid snapshot.
    #[error("the saved replay filter {path} is unusable: {reason}. Fix: delete it to start with an empty filter (replays of packets seen before the restart are then mixed again)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: snapshot::SnapshotError,
    },
}

/// The saved filters at `path` for the Sphinx key `sphinx_public_key`, with their sizes: None
/// (with a line in the log) when there is no file or it belongs to another key.
pub fn load(
    path: &Path,
    sphinx_public_key: &[u8; 32],
) -> Result<Option<(SnapshotHeader, Vec<FilterImage>)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), "no saved replay filter: starting with an empty one");
            return Ok(None);
        }
        Err(cause) => {
            return Err(StoreError::Read {
                path: path.to_path_buf(),
                cause,
            })
        }
    };
    let (header, images) = snapshot::decode(&bytes).map_err(|reason| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })?;
    if &header.sphinx_public_key != sphinx_public_key {
        tracing::warn!(file = %path.display(), "the saved replay filter belongs to another Sphinx key: starting with an empty one");
        return Ok(None);
    }
    tracing::info!(file = %path.display(), shards = images.len(), "loaded the saved replay filter");
    Ok(Some((header, images)))
}

/// Write `images` (one per shard, in shard order) to `path` atomically.
pub fn save(path: &Path, header: &SnapshotHeader, images: &[FilterImage]) -> std::io::Result<()> {
    crate::rotation::store::write_atomic(path, &snapshot::encode(header, images), 0o600)
}

/// Where each key's filter is saved.
#[derive(Clone, Debug)]
pub struct FilterPaths {
    /// The static key's file (`mode = "off"`), or None for rotating keys.
    pub fixed: Option<PathBuf>,
    /// The rotating keys' files.
    pub store: KeyStore,
}

impl FilterPaths {
    /// The file of rotation `rotation_id`'s filter.
    pub fn path(&self, rotation_id: u32) -> PathBuf {
        match &self.fixed {
            Some(path) => path.clone(),
            None => self.store.filter_path(rotation_id),
        }
    }
}

/// One key's images from every shard, ready to write.
struct KeyImages {
    rotation_id: u32,
    header: SnapshotHeader,
    images: Vec<Option<FilterImage>>,
}

/// Collects every shard's answer to `epoch` from `messages`, within `wait`, giving up early
/// when `stop` is set: the keys whose images came from every shard (with one public key and
/// one size), or None if some shard did not finish.
fn collect(
    messages: &Receiver<FilterMessage>,
    shards: usize,
    epoch: u64,
    wait: Duration,
    stop: &AtomicBool,
) -> Option<Vec<(u32, SnapshotHeader, Vec<FilterImage>)>> {
    let deadline = Instant::now() + wait;
    let mut done = vec![false; shards];
    let mut keys: Vec<KeyImages> = Vec::new();
    while done.iter().any(|d| !d) {
        if stop.load(Ordering::Acquire) || Instant::now() >= deadline {
            return None;
        }
        let Ok(message) = messages.recv_timeout(STOP_POLL) else {
            continue;
        };
        match message {
            FilterMessage::Done { shard, epoch: e } if e == epoch && shard < shards => {
                done[shard] = true;
            }
            FilterMessage::Image {
                shard,
                epoch: e,
                rotation_id,
                public_key,
                capacity,
                bit_count,
                hash_count,
                image,
            } if e == epoch && shard < shards => {
                let header = SnapshotHeader {
                    sphinx_public_key: public_key,
                    shards: shards as u32,
                    hash_count,
                    capacity,
                    bit_count,
                };
                let at = match keys.iter().position(|k| k.rotation_id == rotation_id) {
                    Some(at) => at,
                    None => {
                        keys.push(KeyImages {
                            rotation_id,
                            header,
                            images: (0..shards).map(|_| None).collect(),
                        });
                        keys.len() - 1
                    }
                };
                let key = &mut keys[at];
                if key.header == header {
                    key.images[shard] = Some(image);
                }
            }
            _ => {}
        }
    }
    Some(
        keys.into_iter()
            .filter_map(|key| {
                let images: Option<Vec<FilterImage>> = key.images.into_iter().collect();
                images.map(|images| (key.rotation_id, key.header, images))
            })
            .collect(),
    )
}

fn save_all(
    paths: &FilterPaths,
    keys: &[(u32, SnapshotHeader, Vec<FilterImage>)],
    started: Instant,
) {
    for (rotation_id, header, images) in keys {
        let path = paths.path(*rotation_id);
        match save(&path, header, images) {
            Ok(()) => {
                tracing::info!(file = %path.display(), took_ms = started.elapsed().as_millis() as u64, "saved the replay filter")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot save the replay filter; will try again at the next interval")
            }
        }
    }
}

/// The thread that saves the filters periodically.
pub struct Saver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    messages: Receiver<FilterMessage>,
    paths: FilterPaths,
    shards: usize,
}

impl Saver {
    /// Save every key's filter of `shards` shards to `paths` every `interval`, asking through
    /// `requester`.
    pub fn start(
        paths: FilterPaths,
        shards: usize,
        interval: Duration,
        requester: FilterSaveRequester,
        messages: Receiver<FilterMessage>,
    ) -> Saver {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, messages, paths) = (Arc::clone(&stop), messages.clone(), paths.clone());
            std::thread::Builder::new()
                .name("replay-saver".into())
                .spawn(move || {
                    let mut next = Instant::now() + interval;
                    while !stop.load(Ordering::Acquire) {
                        if Instant::now() < next {
                            std::thread::sleep(STOP_POLL);
                            continue;
                        }
                        next = Instant::now() + interval;
                        let epoch = requester.request();
                        let started = Instant::now();
                        match collect(&messages, shards, epoch, ANSWER_WAIT_MAX, &stop) {
                            Some(keys) => save_all(&paths, &keys, started),
                            None if stop.load(Ordering::Acquire) => {}
                            None => tracing::warn!("not every shard answered the replay filter save in time; skipping this save"),
                        }
                    }
                })
                .ok()
        };
        if thread.is_none() {
            tracing::warn!(
                "cannot start the replay filter saver; the filter is saved only at shutdown"
            );
        }
        Saver {
            stop,
            thread,
            messages,
            paths,
            shards,
        }
    }

    /// Stop the thread (call before the engine stops); then [`Self::save_final`].
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// After the engine stopped: write the shards' final images.
    pub fn save_final(&self) {
        let never = AtomicBool::new(false);
        match collect(
            &self.messages,
            self.shards,
            FINAL_IMAGE,
            Duration::from_secs(5),
            &never,
        ) {
            Some(keys) => save_all(&self.paths, &keys, Instant::now()),
            None => tracing::warn!("not every shard sent its final replay filter; not saved: replays of recent packets will be mixed after a restart"),
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.stop();
    }
}
