//! Saving and loading the shards' replay filters, so that a restart does not forget replays.
//!
//! The file is `replay_filter.bin` beside the Sphinx private key (the filters belong to that
//! key). It is loaded before the engine starts. A thread asks the shards for copies of their
//! filters every `engine.replay_filter_save_interval` (each shard copies a bounded part per
//! round between packets, so no shard stalls), encodes them and writes the file atomically
//! (temporary file, fsync, rename, fsync of the folder); at shutdown the shards' final copies
//! are written the same way.
//!
//! What a crash can let through: packets first seen after the last save (at most one save
//! interval of them) are forgotten by a SIGKILL or power loss, and a replay of one of them
//! after the restart is mixed again. A clean stop (SIGINT, SIGTERM) saves everything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::replay::snapshot::{self, FilterImage, SnapshotHeader};
use crate::shard::{FilterSaveRequester, ShardFilterImage, FINAL_IMAGE};

/// File name of the saved filters, in the Sphinx key's folder.
pub const FILE_NAME: &str = "replay_filter.bin";
/// Longest wait for every shard's answer to one save request.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often the saver looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Where `config`'s node keeps its saved replay filters.
pub fn path_for(config: &Config) -> PathBuf {
    let key = &config.mixnode.private_sphinx_key_file;
    key.parent()
        .map(|dir| dir.join(FILE_NAME))
        .unwrap_or_else(|| PathBuf::from(FILE_NAME))
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

/// The saved filters at `path` for the Sphinx key `sphinx_public_key`: empty (with a line in
/// the log) when there is no file or it belongs to another key.
pub fn load(path: &Path, sphinx_public_key: &[u8; 32]) -> Result<Vec<FilterImage>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), "no saved replay filter: starting with an empty one");
            return Ok(Vec::new());
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
        return Ok(Vec::new());
    }
    tracing::info!(file = %path.display(), shards = images.len(), "loaded the saved replay filter");
    Ok(images)
}

/// Write `images` (one per shard, in shard order) to `path` atomically.
pub fn save(path: &Path, header: &SnapshotHeader, images: &[FilterImage]) -> std::io::Result<()> {
    let bytes = snapshot::encode(header, images);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("bin.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Collects one image per shard for `epoch` from `images`, within `wait`, giving up early
/// when `stop` is set.
fn collect(
    images: &Receiver<ShardFilterImage>,
    shards: usize,
    epoch: u64,
    wait: Duration,
    stop: &AtomicBool,
) -> Option<Vec<FilterImage>> {
    let deadline = Instant::now() + wait;
    let mut slots: Vec<Option<FilterImage>> = (0..shards).map(|_| None).collect();
    while slots.iter().any(Option::is_none) {
        if stop.load(Ordering::Acquire) || Instant::now() >= deadline {
            return None;
        }
        let Ok(answer) = images.recv_timeout(STOP_POLL) else {
            continue;
        };
        if answer.epoch == epoch && answer.shard < shards {
            slots[answer.shard] = Some(answer.image);
        }
    }
    slots.into_iter().collect()
}

/// The thread that saves the filters periodically.
pub struct Saver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    images: Receiver<ShardFilterImage>,
    path: PathBuf,
    header: SnapshotHeader,
}

impl Saver {
    /// Save to `path` every `interval`, asking through `requester`.
    pub fn start(
        path: PathBuf,
        header: SnapshotHeader,
        interval: Duration,
        requester: FilterSaveRequester,
        images: Receiver<ShardFilterImage>,
    ) -> Saver {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, images, path) = (Arc::clone(&stop), images.clone(), path.clone());
            std::thread::Builder::new()
                .name("replay-saver".into())
                .spawn(move || {
                    let shards = header.shards as usize;
                    let mut next = Instant::now() + interval;
                    while !stop.load(Ordering::Acquire) {
                        if Instant::now() < next {
                            std::thread::sleep(STOP_POLL);
                            continue;
                        }
                        next = Instant::now() + interval;
                        let epoch = requester.request();
                        let started = Instant::now();
                        match collect(&images, shards, epoch, ANSWER_WAIT_MAX, &stop) {
                            Some(all) => match save(&path, &header, &all) {
                                Ok(()) => tracing::info!(file = %path.display(), took_ms = started.elapsed().as_millis() as u64, "saved the replay filter"),
                                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot save the replay filter; will try again at the next interval"),
                            },
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
            images,
            path,
            header,
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
        let shards = self.header.shards as usize;
        let never = AtomicBool::new(false);
        match collect(
            &self.images,
            shards,
            FINAL_IMAGE,
            Duration::from_secs(5),
            &never,
        ) {
            Some(all) => match save(&self.path, &self.header, &all) {
                Ok(()) => tracing::info!(file = %self.path.display(), "saved the replay filter"),
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot save the replay filter at shutdown: replays of recent packets will be mixed after a restart")
                }
            },
            None => tracing::warn!("not every shard sent its final replay filter; not saved"),
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.stop();
    }
}
