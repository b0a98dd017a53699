//! Sphinx key rotation: which keys should be live when, as a pure function of a schedule and
//! the time ([`Schedule::plan`]), the key files ([`store`]), and the thread that follows the
//! schedule ([`controller`]).
//!
//! A schedule counts epochs (about an hour each on today's Nym network); a rotation lasts
//! `validity_epochs` of them and its id is `(epoch - initial_epoch) / validity_epochs`. In a
//! rotation's last epoch the next rotation's key is pre-announced (generated, with its replay
//! filter, so that nym-api can publish it before it is used); at the boundary it becomes the
//! primary and the old primary stays as the secondary for one epoch of overlap; at the start
//! of the rotation's second epoch the old key is purged with its filter. So at most two keys
//! are live, always of adjacent rotations, which is what lets a frame's rotation byte (odd or
//! even) name one.
//!
//! The schedule comes from nym-api's `GET /v1/epoch/key-rotation-info` (`mode = "network"`),
//! or from the node's own clock (`mode = "local"`: epoch number `unix time / rotation.epoch`,
//! so the schedule survives restarts without any state), or there is none (`mode = "off"`:
//! one static key, as in the 0.11 network).
//!
//! What it deliberately does not do: derive keys (each is fresh randomness), or trust a
//! stalled schedule further than one epoch ahead of what nym-api said.

pub mod controller;
pub mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where the key schedule comes from: config `rotation.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationMode {
    /// One static key (`data/private_sphinx.pem`), never rotated: the 0.11 network.
    #[default]
    Off,
    /// The node's own schedule: `rotation.epoch` and `rotation.validity_epochs`.
    Local,
    /// nym-api's schedule, polled from `rotation.nym_api`.
    Network,
}

impl RotationMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationMode::Off => "off",
            RotationMode::Local => "local",
            RotationMode::Network => "network",
        }
    }
}

/// What a live key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// The current rotation's key, tried first for frames without a rotation byte.
    Primary,
    /// The previous rotation's key, kept for the first epoch of the new one.
    Secondary,
    /// The next rotation's key, announced in the current rotation's last epoch.
    PreAnnounced,
}

impl KeyState {
    /// The spelling of `node-details` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Primary => "primary",
            KeyState::Secondary => "secondary",
            KeyState::PreAnnounced => "pre_announced",
        }
    }
}

/// Which keys should be live in one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPlan {
    /// The primary key's rotation id.
    pub primary: u32,
    /// The other live key, if any.
    pub other: Option<(u32, KeyState)>,
}

impl KeyPlan {
    /// The rotation ids of the live keys, primary first.
    pub fn ids(&self) -> impl Iterator<Item = u32> {
        std::iter::once(self.primary).chain(self.other.map(|(id, _)| id))
    }

    /// The state of rotation `id` in this plan, if live.
    pub fn state_of(&self, id: u32) -> Option<KeyState> {
        if id == self.primary {
            return Some(KeyState::Primary);
        }
        self.other
            .filter(|(other, _)| *other == id)
            .map(|(_, state)| state)
    }
}

/// Epochs and rotations, as nym-api describes them (`KeyRotationInfoResponse`) or as the
/// local clock gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Epochs per rotation (at least 1).
    pub validity_epochs: u32,
    /// The epoch rotation 0 started in.
    pub initial_epoch: u32,
    /// The epoch described.
    pub current_epoch: u32,
    /// When it started.
    pub current_epoch_start: SystemTime,
    /// How long an epoch lasts (at least 1 s).
    pub epoch_duration: Duration,
}

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The text is not the JSON nym-api sends.
    #[error("not a key rotation schedule: {0}")]
    Json(String),
    /// The figures cannot describe a schedule.
    #[error("impossible key rotation schedule: {0}")]
    Figures(&'static str),
}

#[derive(Deserialize)]
struct ApiDuration {
    secs: u64,
    #[serde(default)]
    nanos: u32,
}

#[derive(Deserialize)]
struct ApiRotationState {
    validity_epochs: u32,
    initial_epoch_id: u32,
}

#[derive(Deserialize)]
struct ApiRotationInfo {
    key_rotation_state: ApiRotationState,
    current_absolute_epoch_id: u32,
    current_epoch_start: String,
    epoch_duration: ApiDuration,
}

/// Shortest epoch a schedule may have.
pub const EPOCH_MIN: Duration = Duration::from_secs(1);
/// Longest epoch a schedule from nym-api may have (today's are about an hour).
pub const EPOCH_MAX: Duration = Duration::from_secs(365 * 86_400);

/// `start + step * count`, or a time far in the future where that does not fit.
fn time_after(start: SystemTime, step: Duration, count: u32) -> SystemTime {
    step.checked_mul(count)
        .and_then(|d| start.checked_add(d))
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_secs(1 << 40))
}

impl Schedule {
    /// The local schedule at `now`: epoch `n` runs from `n * epoch` to `(n + 1) * epoch`
    /// seconds after the Unix epoch, rotations count from epoch 0.
    pub fn local(epoch: Duration, validity_epochs: u32, now: SystemTime) -> Schedule {
        let epoch = epoch.max(EPOCH_MIN);
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let number = (since.as_nanos() / epoch.as_nanos()).min(u128::from(u32::MAX)) as u32;
        Schedule {
            validity_epochs: validity_epochs.max(1),
            initial_epoch: 0,
            current_epoch: number,
            current_epoch_start: time_after(UNIX_EPOCH, epoch, number),
            epoch_duration: epoch,
        }
    }

    /// Parse nym-api's `GET /v1/epoch/key-rotation-info` answer.
    pub fn from_nym_api(body: &[u8]) -> Result<Schedule, ScheduleError> {
        let info: ApiRotationInfo =
            serde_json::from_slice(body).map_err(|e| ScheduleError::Json(e.to_string()))?;
        let start = time::OffsetDateTime::parse(
            &info.current_epoch_start,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| ScheduleError::Json(format!("current_epoch_start: {e}")))?;
        let unix_nanos = start.unix_timestamp_nanos();
        if unix_nanos < 0 {
            return Err(ScheduleError::Figures("current_epoch_start is before 1970"));
        }
        let current_epoch_start =
            UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix_nanos).unwrap_or(u64::MAX));
        if info.epoch_duration.nanos >= 1_000_000_000 {
            return Err(ScheduleError::Figures(
                "epoch_duration.nanos is 10^9 or more",
            ));
        }
        let epoch_duration = Duration::new(info.epoch_duration.secs, info.epoch_duration.nanos);
        if epoch_duration < EPOCH_MIN {
            return Err(ScheduleError::Figures("epoch_duration is under a second"));
        }
        if epoch_duration > EPOCH_MAX {
            return Err(ScheduleError::Figures("epoch_duration is over a year"));
        }
        if info.key_rotation_state.validity_epochs == 0 {
            return Err(ScheduleError::Figures("validity_epochs is 0"));
        }
        Ok(Schedule {
            validity_epochs: info.key_rotation_state.validity_epochs,
            initial_epoch: info.key_rotation_state.initial_epoch_id,
            current_epoch: info.current_absolute_epoch_id,
            current_epoch_start,
            epoch_duration,
        })
    }

    /// The rotation epoch `epoch` belongs to.
    pub fn rotation_of(&self, epoch: u32) -> u32 {
        epoch.saturating_sub(self.initial_epoch) / self.validity_epochs.max(1)
    }

    /// When epoch `epoch` starts (or started).
    pub fn epoch_start(&self, epoch: u32) -> SystemTime {
        let d = self.epoch_duration;
        if epoch >= self.current_epoch {
            time_after(self.current_epoch_start, d, epoch - self.current_epoch)
        } else {
            d.checked_mul(self.current_epoch - epoch)
                .and_then(|back| self.current_epoch_start.checked_sub(back))
                .unwrap_or(UNIX_EPOCH)
        }
    }

    /// The epoch at `now`, counted on from the one described but at most `ahead_max` epochs
    /// past it (nym-api may be late to advance; a schedule it stopped advancing is not
    /// followed further). Never before the described epoch.
    pub fn epoch_at(&self, now: SystemTime, ahead_max: u32) -> u32 {
        let since = now
            .duration_since(self.current_epoch_start)
            .unwrap_or_default();
        let passed = (since.as_nanos() / self.epoch_duration.as_nanos().max(1))
            .min(u128::from(ahead_max)) as u32;
        self.current_epoch.saturating_add(passed)
    }

    /// The keys that should be live in `epoch`. With one epoch per rotation the next key is
    /// pre-announced all through the current one and the old key is purged at the boundary
    /// (there is no overlap epoch to spare).
    pub fn plan(&self, epoch: u32) -> KeyPlan {
        let since = epoch.saturating_sub(self.initial_epoch);
        let validity = self.validity_epochs.max(1);
        let rotation = since / validity;
        let position = since % validity;
        let other = if position == validity - 1 {
            Some((rotation.saturating_add(1), KeyState::PreAnnounced))
        } else if position == 0 && rotation > 0 {
            Some((rotation - 1, KeyState::Secondary))
        } else {
            None
        };
        KeyPlan {
            primary: rotation,
            other,
        }
    }

    /// How long a key's replay filter is sized to be used for, as nym-node sizes it: its
    /// rotation and the overlap epoch after it.
    pub fn filter_lifetime(&self) -> Duration {
        self.epoch_duration
            .checked_mul(self.validity_epochs.saturating_add(1))
            .unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(validity: u32) -> Schedule {
        Schedule {
            validity_epochs: validity,
            initial_epoch: 10,
            current_epoch: 10,
            current_epoch_start: UNIX_EPOCH + Duration::from_secs(1_000_000),
            epoch_duration: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_rotation_pre_announces_in_its_last_epoch_and_keeps_the_old_key_for_its_first() {
        let s = schedule(4);
        // Epochs 10..14 are rotation 0, 14..18 rotation 1.
        assert_eq!(
            s.plan(10),
            KeyPlan {
                primary: 0,
                other: None
            }
        );
        assert_eq!(
            s.plan(12),
            KeyPlan {
                primary: 0,
                other: None
            }
        );
        assert_eq!(
            s.plan(13),
            KeyPlan {
                primary: 0,
                other: Some((1, KeyState::PreAnnounced))
            }
        );
        assert_eq!(
            s.plan(14),
            KeyPlan {
                primary: 1,
                other: Some((0, KeyState::Secondary))
            }
        );
        assert_eq!(
            s.plan(15),
            KeyPlan {
                primary: 1,
                other: None
            }
        );
        assert_eq!(
            s.plan(17),
            KeyPlan {
                primary: 1,
                other: Some((2, KeyState::PreAnnounced))
            }
        );
        // Before the initial epoch: rotation 0.
        assert_eq!(s.plan(3).primary, 0);
        // Live keys always belong to adjacent rotations, so their parities differ.
        for validity in 1..6 {
            let s = schedule(validity);
            for epoch in 0..100 {
                let plan = s.plan(epoch);
                if let Some((other, _)) = plan.other {
                    assert_eq!(
                        other.abs_diff(plan.primary),
                        1,
                        "validity {validity} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_epoch_rotations_always_pre_announce() {
        let s = schedule(1);
        assert_eq!(
            s.plan(12),
            KeyPlan {
                primary: 2,
                other: Some((3, KeyState::PreAnnounced))
            }
        );
    }

    #[test]
    fn epochs_count_on_with_time_but_not_far_past_what_nym_api_said() {
        let s = schedule(24);
        let start = s.current_epoch_start;
        assert_eq!(s.epoch_at(start, 1), 10);
        assert_eq!(s.epoch_at(start + Duration::from_secs(3599), 1), 10);
        assert_eq!(s.epoch_at(start + Duration::from_secs(3600), 1), 11);
        assert_eq!(s.epoch_at(start + Duration::from_secs(5 * 3600), 1), 11);
        assert_eq!(s.epoch_at(start + Duration::from_secs(5 * 3600), 100), 15);
        assert_eq!(s.epoch_at(start - Duration::from_secs(10), 1), 10);
        assert_eq!(s.epoch_start(12), start + Duration::from_secs(7200));
        assert_eq!(s.epoch_start(9), start - Duration::from_secs(3600));
        assert_eq!(s.rotation_of(33), 0);
        assert_eq!(s.rotation_of(34), 1);
    }

    #[test]
    fn the_local_schedule_is_a_function_of_the_clock() {
        let now = UNIX_EPOCH + Duration::from_secs(7_205);
        let s = Schedule::local(Duration::from_secs(10), 3, now);
        assert_eq!(s.current_epoch, 720);
        assert_eq!(
            s.current_epoch_start,
            UNIX_EPOCH + Duration::from_secs(7_200)
        );
        assert_eq!(s.plan(s.current_epoch).primary, 240);
        assert_eq!(
            Schedule::local(Duration::from_secs(10), 3, now + Duration::from_secs(4)),
            s
        );
    }

    #[test]
    fn nym_api_answers_parse_and_bad_ones_are_refused() {
        let body = br#"{"key_rotation_state":{"validity_epochs":24,"initial_epoch_id":27000},
            "current_absolute_epoch_id":27961,"current_epoch_start":"2026-11-30T14:05:00Z",
            "epoch_duration":{"secs":3600,"nanos":0},
            "progress":{"current_key_rotation_id":40,"current_rotation_starting_epoch":27960,
            "current_rotation_ending_epoch":27983}}"#;
        let s = Schedule::from_nym_api(body).expect("parses");
        assert_eq!(s.validity_epochs, 24);
        assert_eq!(s.rotation_of(s.current_epoch), 40);
        assert_eq!(
            s.current_epoch_start
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_796_047_500
        );
        assert_eq!(s.epoch_duration, Duration::from_secs(3600));
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"key_rotation_state":{"validity_epochs":0,"initial_epoch_id":0},"current_absolute_epoch_id":1,"current_epoch_start":"2026-11-30T14:05:00Z","epoch_duration":{"secs":3600,"nanos":0}}"#,
            br#"{"key_rotation_state":{"validity_epochs":2,"initial_epoch_id":0},"current_absolute_epoch_id":1,"current_epoch_start":"yesterday","epoch_duration":{"secs":3600,"nanos":0}}"#,
            br#"{"key_rotation_state":{"validity_epochs":2,"initial_epoch_id":0},"current_absolute_epoch_id":1,"current_epoch_start":"2026-11-30T14:05:00Z","epoch_duration":{"secs":0,"nanos":5}}"#,
        ] {
            assert!(Schedule::from_nym_api(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

/// `rotation_id` of a static key in host-information: nym-node's "legacy" id.
pub const LEGACY_ROTATION_ID: u32 = u32::MAX;

/// The Sphinx keys the node announces (host-information): the primary and, in a rotation's
/// last epoch, the next one. The old key kept for one epoch after a rotation is not
/// announced: clients no longer build packets for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    /// The primary key: (rotation id, public key).
    pub primary: (u32, [u8; 32]),
    /// The pre-announced key, if any.
    pub pre_announced: Option<(u32, [u8; 32])>,
}

impl Announced {
    /// What `plan` announces, with `secrets` (rotation id, secret) holding its keys; a static
    /// key (`rotating` false) is announced with [`LEGACY_ROTATION_ID`].
    pub fn from_plan(
        plan: &KeyPlan,
        secrets: &[(u32, x25519_dalek::StaticSecret)],
        rotating: bool,
    ) -> Option<Announced> {
        let public = |id: u32| {
            secrets
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, s)| x25519_dalek::PublicKey::from(s).to_bytes())
        };
        let primary = public(plan.primary)?;
        if !rotating {
            return Some(Announced {
                primary: (LEGACY_ROTATION_ID, primary),
                pre_announced: None,
            });
        }
        let pre_announced = match plan.other {
            Some((id, KeyState::PreAnnounced)) => public(id).map(|k| (id, k)),
            _ => None,
        };
        Some(Announced {
            primary: (plan.primary, primary),
            pre_announced,
        })
    }
}

/// The announced keys, shared: the rotation thread writes them at each change, the HTTP API
/// reads them per request (neither is on the packet path), and `changes` counts the writes so
/// that a reader can tell it must sign host-information again.
#[derive(Clone, Debug)]
pub struct AnnouncedKeys {
    inner: std::sync::Arc<std::sync::Mutex<(Announced, u64)>>,
}

impl AnnouncedKeys {
    /// Start with `announced`.
    pub fn new(announced: Announced) -> AnnouncedKeys {
        AnnouncedKeys {
            inner: std::sync::Arc::new(std::sync::Mutex::new((announced, 0))),
        }
    }

    /// The keys now, and how many changes came before.
    pub fn get(&self) -> (Announced, u64) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announce `announced` from now on.
    pub fn set(&self, announced: Announced) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 != announced {
            *inner = (announced, inner.1 + 1);
        }
    }
}
