//! The thread that follows the key schedule: it asks nym-api for the schedule
//! (`mode = "network"`) or reads the clock (`mode = "local"`), and at each epoch boundary
//! changes the engine's live keys as [`Schedule::plan`] says: a new key is generated, written to
//! its file and given freshly allocated replay filters on this thread (never on a shard), then
//! handed to every shard, which switches between two packets; a purged key's files are
//! deleted once the shards let go of it.
//!
//! [`prepare`] runs once before the engine starts and gives the keys to start with, so that a
//! restart in the middle of a rotation comes back with the same keys (their files) and the
//! same rotation ids (the clock, or nym-api, or the schedule nym-api gave last).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use x25519_dalek::StaticSecret;

use super::store::{public_base58, KeyStore, Manifest, ManifestKey, StoreError};
use super::{Announced, AnnouncedKeys, KeyPlan, RotationMode, Schedule};
use crate::config::{RotationSection, REPLAY_FILTER_PACKETS_STATIC};
use crate::shard::stats::ShardStats;
use crate::shard::{KeyUpdater, NewKey};

/// How long one request to nym-api may take.
pub const NYM_API_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer accepted from nym-api.
const NYM_API_BODY_MAX: u64 = 64 << 10;
/// How soon nym-api is asked again after a failed request.
const POLL_RETRY: Duration = Duration::from_secs(60);
/// How often the thread looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// The packet rate a filter is sized for at least, per second (as nym-node).
pub const FILTER_RATE_MIN: f64 = 200.0;
/// Headroom over the rate measured (as nym-node).
pub const FILTER_RATE_HEADROOM: f64 = 1.12;
/// Most packets a filter is sized for from the rate (about 750 MB a generation at 1e-5):
/// a long schedule times a high rate must not ask for more memory than a machine has. Set
/// `engine.replay_filter_packets_max` to bound it lower.
pub const FILTER_PACKETS_FROM_RATE_MAX: u64 = 250_000_000;

/// The keys could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A key file or the manifest.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No schedule: nym-api did not answer and none was saved.
    #[error("cannot get the sphinx key rotation schedule from {url}: {reason}; and no schedule was saved before ({saved}). Fix: check rotation.nym_api in config.toml and that this machine reaches it, or set rotation.mode = \"local\" (the node's own schedule) or \"off\" (one static key)")]
    NoSchedule {
        /// The URL asked.
        url: String,
        /// Why it failed.
        reason: String,
        /// Where a saved schedule would be.
        saved: String,
    },
}

/// nym-api's route for the schedule under base URL `base`.
pub fn schedule_url(base: &str) -> String {
    format!("{}/v1/epoch/key-rotation-info", base.trim_end_matches('/'))
}

/// Ask nym-api at `base` for the schedule (counted on /metrics as `key_rotation`).
pub fn fetch_schedule(base: &str, timeout: Duration) -> Result<Schedule, String> {
    use crate::topology::fetch::{Purpose, COUNTERS};
    let url = schedule_url(base);
    let body =
        crate::topology::http_get(&url, timeout, NYM_API_BODY_MAX as usize).map_err(|e| {
            COUNTERS.failed(Purpose::KeyRotation, &e);
            e.to_string()
        })?;
    let schedule = Schedule::from_nym_api(&body).map_err(|e| {
        COUNTERS.bad_body(Purpose::KeyRotation);
        e.to_string()
    })?;
    COUNTERS.ok(Purpose::KeyRotation);
    Ok(schedule)
}

/// The keys the engine starts with.
pub struct StartKeys {
    /// False: one static key.
    pub rotating: bool,
    /// Which rotations are live.
    pub plan: KeyPlan,
    /// Their secrets, primary first.
    pub secrets: Vec<(u32, StaticSecret)>,
    /// The schedule followed (None: static key).
    pub schedule: Option<Schedule>,
}

/// The manifest for `plan` with `secrets`.
fn manifest(mode: RotationMode, plan: &KeyPlan, secrets: &[(u32, StaticSecret)]) -> Manifest {
    Manifest {
        mode,
        keys: secrets
            .iter()
            .filter_map(|(id, secret)| {
                Some(ManifestKey {
                    rotation_id: *id,
                    public_key: public_base58(secret),
                    state: plan.state_of(*id)?,
                })
            })
            .collect(),
    }
}

/// The current schedule for `section`: the clock's, or nym-api's (else the one saved).
fn current_schedule(
    section: &RotationSection,
    store: &KeyStore,
    now: SystemTime,
) -> Result<Option<Schedule>, RotationError> {
    match section.mode {
        RotationMode::Off => Ok(None),
        RotationMode::Local => Ok(Some(Schedule::local(
            section.epoch,
            section.validity_epochs,
            now,
        ))),
        RotationMode::Network => {
            let base = section.nym_api.clone().unwrap_or_default();
            match fetch_schedule(&base, NYM_API_TIMEOUT) {
                Ok(schedule) => {
                    store.save_schedule(&schedule)?;
                    Ok(Some(schedule))
                }
                Err(reason) => match store.load_schedule() {
                    Some(saved) => {
                        tracing::warn!(url = %schedule_url(&base), error = %reason, age = %super::store::describe_age(&saved, now), "nym-api did not give the key rotation schedule; following the one saved last until it answers");
                        Ok(Some(saved))
                    }
                    None => Err(RotationError::NoSchedule {
                        url: schedule_url(&base),
                        reason,
                        saved: store
                            .dir()
                            .join(super::store::SCHEDULE)
                            .display()
                            .to_string(),
                    }),
                },
            }
        }
    }
}

/// The epoch to act on at `now` under `schedule`.
fn epoch_now(mode: RotationMode, schedule: &Schedule, now: SystemTime) -> u32 {
    match mode {
        RotationMode::Local => schedule.current_epoch,
        // Act at the boundary nym-api announced, but not further on a stalled schedule.
        _ => schedule.epoch_at(now, 1),
    }
}

/// The keys to start with at `now`: the static key, or the keys the schedule wants live
/// (loaded from their files, generated where missing). Key files of rotations no longer live
/// are deleted.
pub fn prepare(
    section: &RotationSection,
    store: &KeyStore,
    static_secret: &StaticSecret,
    now: SystemTime,
) -> Result<StartKeys, RotationError> {
    let Some(schedule) = current_schedule(section, store, now)? else {
        let plan = KeyPlan {
            primary: 0,
            other: None,
        };
        let secrets = vec![(0, static_secret.clone())];
        store.write_manifest(&manifest(RotationMode::Off, &plan, &secrets))?;
        return Ok(StartKeys {
            rotating: false,
            plan,
            secrets,
            schedule: None,
        });
    };
    let plan = schedule.plan(epoch_now(section.mode, &schedule, now));
    let mut secrets = Vec::new();
    for id in plan.ids() {
        let (secret, made) = store.load_or_generate(id)?;
        if made {
            tracing::info!(rotation_id = id, public_key = %public_base58(&secret), "generated a sphinx key");
        }
        secrets.push((id, secret));
    }
    for stale in store.stored_ids() {
        if !plan.ids().any(|id| id == stale) {
            store.remove(stale);
        }
    }
    store.write_manifest(&manifest(section.mode, &plan, &secrets))?;
    Ok(StartKeys {
        rotating: true,
        plan,
        secrets,
        schedule: Some(schedule),
    })
}

/// Packets a new key's whole-node filter is sized for: `packets_max` when set; else the
/// static default, or for a rotating key its filter lifetime x max(`rate`, 200/s) x 1.12.
pub fn filter_packets(packets_max: Option<u64>, schedule: Option<&Schedule>, rate: f64) -> u64 {
    if let Some(packets) = packets_max {
        return packets;
    }
    match schedule {
        None => REPLAY_FILTER_PACKETS_STATIC,
        Some(schedule) => {
            let seconds = schedule.filter_lifetime().as_secs_f64();
            let wanted = (seconds * rate.max(FILTER_RATE_MIN) * FILTER_RATE_HEADROOM).round();
            (wanted as u64).min(FILTER_PACKETS_FROM_RATE_MAX)
        }
    }
}

/// Where key changes are told: the shared announced keys, then `on_change`.
pub struct Announcing {
    /// Set at each change.
    pub keys: AnnouncedKeys,
    /// Called after (the announcement to nym-api).
    pub on_change: Option<Box<dyn FnMut() + Send>>,
}

/// The running controller.
pub struct Controller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Follower {
    section: RotationSection,
    packets_max: Option<u64>,
    store: KeyStore,
    schedule: Schedule,
    live: KeyPlan,
    updater: KeyUpdater,
    stats: Arc<Vec<ShardStats>>,
    announced: AnnouncedKeys,
    on_change: Option<Box<dyn FnMut() + Send>>,
    next_poll: Instant,
    /// Packets received and when, at the last key change: the rate since sizes new filters.
    rate_mark: (Instant, u64),
}

impl Controller {
    /// Follow the schedule from `start` (a static key: nothing to follow, no thread). At
    /// each key change `announcing.keys` is updated, then its `on_change` runs (on this
    /// thread).
    pub fn start(
        section: RotationSection,
        packets_max: Option<u64>,
        store: KeyStore,
        start: &StartKeys,
        updater: KeyUpdater,
        stats: Arc<Vec<ShardStats>>,
        announcing: Announcing,
    ) -> Controller {
        let Announcing {
            keys: announced,
            on_change,
        } = announcing;
        let stop = Arc::new(AtomicBool::new(false));
        let Some(schedule) = start.schedule else {
            return Controller { stop, thread: None };
        };
        let received = received_total(&stats);
        let mut follower = Follower {
            next_poll: Instant::now() + section.poll_interval,
            section,
            packets_max,
            store,
            schedule,
            live: start.plan,
            updater,
            stats,
            announced,
            on_change,
            rate_mark: (Instant::now(), received),
        };
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("key-rotation".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let wait = follower.tick(SystemTime::now());
                        let until = Instant::now() + wait;
                        while !stop.load(Ordering::Acquire) && Instant::now() < until {
                            std::thread::sleep(STOP_POLL.min(until - Instant::now()));
                        }
                    }
                })
                .ok()
        };
        if thread.is_none() {
            tracing::error!("cannot start the key rotation thread: keys will not rotate");
        }
        Controller { stop, thread }
    }

    /// Stop the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // A nym-api request under way (up to NYM_API_TIMEOUT) is not waited for.
            crate::background::join_within(thread, crate::background::STOP_WAIT);
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

fn received_total(stats: &[ShardStats]) -> u64 {
    stats
        .iter()
        .map(|s| s.snapshot().counts.packets.received)
        .sum()
}

impl Follower {
    /// One look at the schedule at `now`; how long to wait before the next.
    fn tick(&mut self, now: SystemTime) -> Duration {
        let mut poll_in = Duration::MAX;
        match self.section.mode {
            RotationMode::Local => {
                self.schedule =
                    Schedule::local(self.section.epoch, self.section.validity_epochs, now);
            }
            RotationMode::Network => {
                if Instant::now() >= self.next_poll {
                    self.poll();
                }
                poll_in = self.next_poll.saturating_duration_since(Instant::now());
            }
            RotationMode::Off => return Duration::from_secs(3600),
        }
        let epoch = epoch_now(self.section.mode, &self.schedule, now);
        let plan = self.schedule.plan(epoch);
        if plan != self.live {
            if plan.primary < self.live.primary {
                tracing::warn!(
                    live = self.live.primary,
                    schedule = plan.primary,
                    "the key schedule went back to an earlier rotation; keeping the live keys"
                );
            } else {
                self.apply(plan);
            }
        }
        self.updater.free_purged();
        let boundary = self
            .schedule
            .epoch_start(epoch.saturating_add(1))
            .duration_since(now)
            .unwrap_or_default();
        // Just past the boundary, so that the clock reads the new epoch.
        (boundary + Duration::from_millis(5)).min(poll_in)
    }

    fn poll(&mut self) {
        let base = self.section.nym_api.clone().unwrap_or_default();
        match fetch_schedule(&base, NYM_API_TIMEOUT) {
            Ok(schedule) => {
                if schedule != self.schedule {
                    tracing::info!(
                        epoch = schedule.current_epoch,
                        rotation = schedule.rotation_of(schedule.current_epoch),
                        "key rotation schedule from nym-api"
                    );
                    if let Err(e) = self.store.save_schedule(&schedule) {
                        tracing::warn!(error = %e, "cannot save the key rotation schedule");
                    }
                }
                self.schedule = schedule;
                self.next_poll = Instant::now() + self.section.poll_interval;
            }
            Err(error) => {
                tracing::warn!(url = %schedule_url(&base), %error, "cannot get the key rotation schedule from nym-api; following the last one");
                self.next_poll = Instant::now() + POLL_RETRY.min(self.section.poll_interval);
            }
        }
    }

    fn measured_rate(&mut self) -> f64 {
        let received = received_total(&self.stats);
        let (at, before) = self.rate_mark;
        let seconds = at.elapsed().as_secs_f64();
        self.rate_mark = (Instant::now(), received);
        if seconds < 1.0 {
            return 0.0;
        }
        received.saturating_sub(before) as f64 / seconds
    }

    /// Make `plan`'s keys live.
    fn apply(&mut self, plan: KeyPlan) {
        let purge: Vec<u32> = self
            .live
            .ids()
            .filter(|id| !plan.ids().any(|p| p == *id))
            .collect();
        let rate = self.measured_rate();
        let packets = filter_packets(self.packets_max, Some(&self.schedule), rate);
        let mut install = Vec::new();
        for id in plan.ids().filter(|id| !self.live.ids().any(|l| l == *id)) {
            match self.store.load_or_generate(id) {
                Ok((secret, _)) => install.push(NewKey {
                    rotation_id: id,
                    secret,
                    filter_packets: packets,
                }),
                Err(e) => {
                    tracing::error!(rotation_id = id, error = %e, "cannot make the next sphinx key; keeping the live keys and trying again at the next epoch");
                    return;
                }
            }
        }
        if let Err(e) = self.updater.update(&purge, &install, plan.primary) {
            tracing::error!(error = %e, "cannot hand the sphinx key change to the shards");
            return;
        }
        for id in &purge {
            self.store.remove(*id);
        }
        let mut secrets = Vec::new();
        for id in plan.ids() {
            if let Ok(Some(secret)) = self.store.load(id) {
                secrets.push((id, secret));
            }
        }
        if let Err(e) = self
            .store
            .write_manifest(&manifest(self.section.mode, &plan, &secrets))
        {
            tracing::warn!(error = %e, "cannot rewrite the sphinx key manifest");
        }
        tracing::info!(
            primary = plan.primary,
            other = ?plan.other,
            purged = ?purge,
            installed = install.len(),
            filter_packets = packets,
            "sphinx keys rotated"
        );
        self.live = plan;
        if let Some(announced) = Announced::from_plan(&plan, &secrets, true) {
            self.announced.set(announced);
        }
        if let Some(on_change) = self.on_change.as_mut() {
            on_change();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_sized_from_the_rate_unless_configured() {
        let schedule = Schedule::local(Duration::from_secs(3600), 24, SystemTime::now());
        // 25 h x 200/s x 1.12 when quiet, as nym-node.
        assert_eq!(filter_packets(None, Some(&schedule), 5.0), 20_160_000);
        assert_eq!(filter_packets(None, Some(&schedule), 1000.0), 100_800_000);
        assert_eq!(filter_packets(Some(2000), Some(&schedule), 1000.0), 2000);
        assert_eq!(
            filter_packets(None, None, 1000.0),
            REPLAY_FILTER_PACKETS_STATIC
        );
    }

    #[test]
    fn schedule_urls_join_the_base() {
        assert_eq!(
            schedule_url("https://validator.nymtech.net/api/"),
            "https://validator.nymtech.net/api/v1/epoch/key-rotation-info"
        );
        assert_eq!(
            schedule_url("http://127.0.0.1:9/api"),
            "http://127.0.0.1:9/api/v1/epoch/key-rotation-info"
        );
    }
}
