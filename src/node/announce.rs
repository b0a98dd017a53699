//! Announcing the node to nym-api: `POST /v1/nym-nodes/refresh-described` asks nym-api to
//! describe the node again now (poll its `/api/v1/` routes) instead of at its next round, so
//! that a started node, or one with a new Sphinx key, is seen within minutes. The body is
//! nym-api's `NodeRefreshBody`: the identity key, a Unix timestamp (nym-api refuses one older
//! than 30 s), and an Ed25519 signature over identity || timestamp (i64 big-endian) ||
//! `"describe-cache-refresh-request"`.
//!
//! Sent with `rotation.mode = "network"` at start and after each key change, from a thread of
//! its own, at most one at a time; a failure is logged, counted (`announce` on /metrics) and
//! tried again twice, 30 s apart, and is never fatal: nym-api describes every bonded node on
//! its own schedule anyway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};

use crate::topology::fetch::{http_post_json, Purpose, COUNTERS};

/// nym-api's route under its base URL.
pub const REFRESH_PATH: &str = "/v1/nym-nodes/refresh-described";
/// How long one announcement may take.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(20);
/// Tries of one announcement, [`ANNOUNCE_RETRY`] apart.
pub const ANNOUNCE_ATTEMPTS: u32 = 3;
/// The wait after a failed try.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(30);
/// What the signature covers after the identity and the timestamp.
const REFRESH_DOMAIN: &[u8] = b"describe-cache-refresh-request";

/// The request body for `key` at Unix time `timestamp`.
pub fn refresh_body(key: &SigningKey, timestamp: i64) -> String {
    let identity = key.verifying_key().to_bytes();
    let mut message = Vec::with_capacity(32 + 8 + REFRESH_DOMAIN.len());
    message.extend_from_slice(&identity);
    message.extend_from_slice(&timestamp.to_be_bytes());
    message.extend_from_slice(REFRESH_DOMAIN);
    let signature = key.sign(&message).to_bytes();
    serde_json::json!({
        "node_identity": bs58::encode(identity).into_string(),
        "request_timestamp": timestamp,
        "signature": signature.to_vec(),
    })
    .to_string()
}

/// The URL announced to under nym-api's `base`.
pub fn refresh_url(base: &str) -> String {
    format!("{}{REFRESH_PATH}", base.trim_end_matches('/'))
}

/// Sends announcements, one at a time.
#[derive(Clone)]
pub struct Announcer {
    base: String,
    key: Arc<SigningKey>,
    busy: Arc<AtomicBool>,
}

impl Announcer {
    /// Announce `key`'s node to nym-api at `base`.
    pub fn new(base: String, key: SigningKey) -> Announcer {
        Announcer {
            base,
            key: Arc::new(key),
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Announce now, on a thread, trying up to [`ANNOUNCE_ATTEMPTS`] times (skipped when one
    /// is still under way).
    pub fn announce(&self) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || {
                for attempt in 1..=ANNOUNCE_ATTEMPTS {
                    if this.announce_now() {
                        break;
                    }
                    if attempt < ANNOUNCE_ATTEMPTS {
                        std::thread::sleep(ANNOUNCE_RETRY);
                    }
                }
                this.busy.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.busy.store(false, Ordering::Release);
            tracing::warn!("cannot start a thread to announce the node to nym-api");
        }
    }

    /// Announce now, on this thread; whether nym-api took it.
    pub fn announce_now(&self) -> bool {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let url = refresh_url(&self.base);
        match http_post_json(&url, &refresh_body(&self.key, timestamp), ANNOUNCE_TIMEOUT) {
            Ok(_) => {
                COUNTERS.ok(Purpose::Announce);
                tracing::info!(%url, "announced the node to nym-api; it will describe it shortly");
                true
            }
            Err(error) => {
                COUNTERS.failed(Purpose::Announce, &error);
                tracing::warn!(%url, %error, "cannot announce the node to nym-api; it will describe the node on its own schedule");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn the_body_is_signed_over_identity_timestamp_and_domain() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let body: serde_json::Value =
            serde_json::from_str(&refresh_body(&key, 1_764_547_200)).unwrap();
        assert_eq!(body["request_timestamp"], 1_764_547_200i64);
        let identity = bs58::decode(body["node_identity"].as_str().unwrap())
            .into_vec()
            .unwrap();
        assert_eq!(identity, key.verifying_key().to_bytes());
        let signature: Vec<u8> = body["signature"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        let signature = Signature::from_slice(&signature).unwrap();
        let mut message = identity.clone();
        message.extend_from_slice(&1_764_547_200i64.to_be_bytes());
        message.extend_from_slice(b"describe-cache-refresh-request");
        assert!(key.verifying_key().verify(&message, &signature).is_ok());
        message[35] ^= 1;
        assert!(key.verifying_key().verify(&message, &signature).is_err());
        assert_eq!(
            refresh_url("https://validator.nymtech.net/api/"),
            "https://validator.nymtech.net/api/v1/nym-nodes/refresh-described"
        );
    }
}
