//! The nym-node HTTP API under `/api/v1/`: the routes nym-api polls to describe a node (and
//! the ones nym-node serves beside them), in the shapes the published `nym-node-requests`
//! crate deserialises. Pure: every answer is built from [`SelfDescription`] and the figures
//! the driver read for the request.
//!
//! The one answer that needs care is `host-information`: `{"data": {...}, "signature": ...}`
//! where the signature is Ed25519 by the identity key over the compact JSON text of `data`.
//! nym-api checks it by parsing `data` and serialising it again, so the text signed here has
//! exactly that crate's field order (`ip_address`, `hostname`, `keys` with
//! `ed25519_identity`, `x25519_sphinx`, `primary_x25519_sphinx_key`,
//! `pre_announced_x25519_sphinx_key`, `x25519_versioned_noise`), nulls written out. The
//! signed text is made once per key change, not per request.
//!
//! Where nym-node-requests and nym-node's own output differ, the crate wins: VerLoc durations
//! are written as `{"secs","nanos"}`, the only form its `VerlocMeasurement` reads back
//! (nym-node writes humantime strings, which that type cannot parse).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use serde_json::{json, Value};

use super::collect::StatsPoint;
use super::server::Response;
use crate::accounting::DropReason;
use crate::rotation::{Announced, AnnouncedKeys};
use crate::shard::stats::ShardSnapshot;
use crate::verloc::results::RunReport;

/// The name this binary gives in build-information. nym-api's config score is zero for any
/// name but `nym-node`; the node reports its own name all the same.
pub const BINARY_NAME: &str = "nym-mixnode";

/// What the node says of itself, fixed at start apart from the Sphinx keys.
pub struct SelfDescription {
    signing_key: SigningKey,
    /// Addresses announced (`mixnode.announce_address`).
    pub ip_addresses: Vec<IpAddr>,
    /// `host.hostname`, if set.
    pub hostname: Option<String>,
    /// `host.location`, if set.
    pub location: Option<String>,
    /// `host.accepted_operator_terms_and_conditions`.
    pub accepted_terms: bool,
    /// The mix port announced.
    pub mix_port: u16,
    /// The VerLoc port announced.
    pub verloc_port: u16,
    /// The live Sphinx keys, as the rotation thread sets them.
    pub keys: AnnouncedKeys,
    /// The Noise public key, once the node has one.
    pub noise_key: Option<[u8; 32]>,
    /// `engine.packet_memory_bytes_max`: what the network load is measured against.
    pub packet_memory_bytes_max: u64,
    /// The signed host-information and the key change it was made for.
    signed: Mutex<Option<(u64, String)>>,
}

impl SelfDescription {
    /// A description signed with `signing_key`; the other fields are set by the caller.
    pub fn new(signing_key: SigningKey, keys: AnnouncedKeys) -> SelfDescription {
        SelfDescription {
            signing_key,
            ip_addresses: Vec::new(),
            hostname: None,
            location: None,
            accepted_terms: false,
            mix_port: 1789,
            verloc_port: 1790,
            keys,
            noise_key: None,
            packet_memory_bytes_max: 0,
            signed: Mutex::new(None),
        }
    }

    /// The `host-information` body for the keys now (signed again only after a change).
    pub fn signed_host_information(&self) -> String {
        let (announced, change) = self.keys.get();
        let mut signed = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made_for, body)) = signed.as_ref() {
            if *made_for == change {
                return body.clone();
            }
        }
        let body = signed_host_information(
            &self.signing_key,
            &self.ip_addresses,
            self.hostname.as_deref(),
            &announced,
            self.noise_key,
        );
        *signed = Some((change, body.clone()));
        body
    }
}

#[derive(Serialize)]
struct HostInformation<'a> {
    ip_address: &'a [IpAddr],
    hostname: Option<&'a str>,
    keys: HostKeys,
}

#[derive(Serialize)]
struct HostKeys {
    ed25519_identity: String,
    x25519_sphinx: String,
    primary_x25519_sphinx_key: SphinxKey,
    pre_announced_x25519_sphinx_key: Option<SphinxKey>,
    x25519_versioned_noise: Option<NoiseKey>,
}

#[derive(Serialize)]
struct SphinxKey {
    rotation_id: u32,
    public_key: String,
}

#[derive(Serialize)]
struct NoiseKey {
    supported_version: u8,
    x25519_pubkey: String,
}

fn base58(bytes: &[u8]) -> String {
    bs58::encode(bytes).into_string()
}

/// The text of `data` as signed: compact JSON in nym-node-requests' field order.
pub fn host_information_data(
    identity: &[u8; 32],
    ip_addresses: &[IpAddr],
    hostname: Option<&str>,
    announced: &Announced,
    noise_key: Option<[u8; 32]>,
) -> String {
    let sphinx = |(rotation_id, key): (u32, [u8; 32])| SphinxKey {
        rotation_id,
        public_key: base58(&key),
    };
    let data = HostInformation {
        ip_address: ip_addresses,
        hostname,
        keys: HostKeys {
            ed25519_identity: base58(identity),
            x25519_sphinx: base58(&announced.primary.1),
            primary_x25519_sphinx_key: sphinx(announced.primary),
            pre_announced_x25519_sphinx_key: announced.pre_announced.map(sphinx),
            x25519_versioned_noise: noise_key.map(|k| NoiseKey {
                supported_version: 1,
                x25519_pubkey: base58(&k),
            }),
        },
    };
    // Strings, numbers, addresses and options: serialising cannot fail.
    serde_json::to_string(&data).unwrap_or_default()
}

/// `{"data": ..., "signature": "<base58>"}` with `data` signed by `signing_key`.
pub fn signed_host_information(
    signing_key: &SigningKey,
    ip_addresses: &[IpAddr],
    hostname: Option<&str>,
    announced: &Announced,
    noise_key: Option<[u8; 32]>,
) -> String {
    let data = host_information_data(
        signing_key.verifying_key().as_bytes(),
        ip_addresses,
        hostname,
        announced,
        noise_key,
    );
    let signature = signing_key.sign(data.as_bytes());
    format!(
        "{{\"data\":{data},\"signature\":\"{}\"}}",
        base58(&signature.to_bytes())
    )
}

/// `build-information` (`BinaryBuildInformationOwned`), from what the build script found.
pub fn build_information() -> Value {
    json!({
        "binary_name": BINARY_NAME,
        "build_timestamp": env!("NYM_MIXNODE_BUILD_TIMESTAMP"),
        "build_version": crate::config::VERSION,
        "commit_sha": env!("NYM_MIXNODE_COMMIT_SHA"),
        "commit_timestamp": env!("NYM_MIXNODE_COMMIT_TIMESTAMP"),
        "commit_branch": env!("NYM_MIXNODE_COMMIT_BRANCH"),
        "rustc_version": env!("NYM_MIXNODE_RUSTC_VERSION"),
        "rustc_channel": env!("NYM_MIXNODE_RUSTC_CHANNEL"),
        "cargo_profile": env!("NYM_MIXNODE_CARGO_PROFILE"),
        "cargo_triple": env!("NYM_MIXNODE_CARGO_TRIPLE"),
    })
}

/// A node's load in nym-node's tiers (`Load`), from a fraction of capacity.
pub fn load_tier(fraction: Option<f64>) -> &'static str {
    match fraction {
        None => "unknown",
        Some(f) if !f.is_finite() || f <= 0.0 => "unknown",
        Some(f) if f <= 0.1 => "negligible",
        Some(f) if f <= 0.3 => "low",
        Some(f) if f <= 0.6 => "medium",
        Some(f) if f <= 0.8 => "high",
        Some(f) if f <= 0.95 => "very_high",
        Some(_) => "at_capacity",
    }
}

/// What the driver read for one `/api/v1/` request (only what that route needs).
#[derive(Clone, Debug, Default)]
pub struct V1Figures {
    /// The signed host-information (for `host-information`).
    pub host_information: Option<String>,
    /// One-minute load average over the cores (for `load`).
    pub machine_load: Option<f64>,
    /// The current and the previous VerLoc run (for `metrics/verloc`).
    pub verloc: Option<(RunReport, Option<RunReport>)>,
}

/// Everything an `/api/v1/` answer may use.
pub struct V1Input<'a> {
    /// Fixed facts.
    pub me: &'a SelfDescription,
    /// Since start.
    pub uptime: Duration,
    /// Each shard's figures.
    pub shards: &'a [ShardSnapshot],
    /// The `/stats` window: (previous, current).
    pub stats: (&'a StatsPoint, &'a StatsPoint),
    /// The description now.
    pub description: &'a crate::config::description::Description,
    /// This machine.
    pub hardware: &'a super::hardware::Hardware,
    /// Read for this request.
    pub figures: &'a V1Figures,
}

fn json_response(status: u16, value: &Value) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: value.to_string(),
    }
}

/// The 404 of an unknown `/api/v1/` route: nym-node-requests' `ErrorResponse`.
pub fn not_found(path: &str) -> Response {
    json_response(
        404,
        &json!({"message": format!("{path} is not a route of this node's API")}),
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339(t).to_string()
}

fn duration(d: Duration) -> Value {
    json!({"secs": d.as_secs(), "nanos": d.subsec_nanos()})
}

fn verloc_result(run: Option<&RunReport>, current: bool) -> Value {
    let Some(run) = run.filter(|r| r.run_started.is_some()) else {
        return json!("unavailable");
    };
    if current && run.run_finished.is_none() {
        return json!("measurementInProgress");
    }
    let results: Vec<Value> = run
        .results
        .iter()
        .map(|r| {
            json!({
                "node_identity": base58(r.identity.as_bytes()),
                "latest_measurement": r.latest_measurement.map(|m| json!({
                    "minimum": duration(m.minimum),
                    "mean": duration(m.mean),
                    "maximum": duration(m.maximum),
                    "standard_deviation": duration(m.standard_deviation),
                })),
            })
        })
        .collect();
    json!({"data": {
        "nodes_tested": run.total_tested,
        "run_started": run.run_started.map(rfc3339),
        "run_finished": run.run_finished.map(rfc3339),
        "results": results,
    }})
}

/// Answer `path` (already known to start with `/api/v1/`), or None for the routes the
/// caller serves itself (`health`, `metrics/prometheus`).
pub fn route(path: &str, cx: &V1Input) -> Option<Response> {
    let me = cx.me;
    let sum = |f: &dyn Fn(&ShardSnapshot) -> u64| cx.shards.iter().map(f).sum::<u64>();
    let dropped = |reasons: &[DropReason]| {
        sum(&|s| {
            reasons
                .iter()
                .map(|r| s.counts.packets.dropped[*r as usize])
                .sum()
        })
    };
    let value = match path.strip_prefix("/api/v1")? {
        "/host-information" => {
            return Some(Response {
                status: 200,
                content_type: "application/json",
                body: cx
                    .figures
                    .host_information
                    .clone()
                    .unwrap_or_else(|| me.signed_host_information()),
            })
        }
        "/build-information" => build_information(),
        "/roles" => json!({
            "mixnode_enabled": true,
            "gateway_enabled": false,
            "network_requester_enabled": false,
            "ip_packet_router_enabled": false,
        }),
        "/auxiliary-details" => json!({
            "location": me.location,
            "announce_ports": {"verloc_port": me.verloc_port, "mix_port": me.mix_port},
            "accepted_operator_terms_and_conditions": me.accepted_terms,
        }),
        // A mixnode has no client websocket; nym-api requires the route of every node.
        "/gateway/client-interfaces/mixnet-websockets" => json!({"ws_port": 0, "wss_port": null}),
        "/description" => json!({
            "moniker": cx.description.name,
            "website": cx.description.link,
            "security_contact": "",
            "details": cx.description.description,
        }),
        "/system-info" => {
            let h = cx.hardware;
            let total_memory = h
                .ram
                .trim_end_matches("KB")
                .parse::<u64>()
                .map(|kb| kb * 1024)
                .unwrap_or(0);
            let crypto = h.crypto_hardware.as_ref();
            json!({
                "system_name": std::env::consts::OS,
                "kernel_version": Value::Null,
                "os_version": Value::Null,
                "cpu_arch": std::env::consts::ARCH,
                "hardware": {
                    "cpu": [{
                        "name": crypto.map(|c| c.brand_string.clone()).unwrap_or_default(),
                        "frequency": 0,
                        "vendor_id": "",
                        "brand": crypto.map(|c| c.brand_string.clone()).unwrap_or_default(),
                    }],
                    "total_memory": total_memory,
                    "crypto": crypto.map(|c| json!({
                        "aesni": c.aesni,
                        "avx2": c.avx2,
                        "smt_logical_processor_count": c.smt_logical_processor_count,
                        "osxsave": c.osxsave,
                        "sgx": c.sgx,
                        "xsave": c.xsave,
                    })),
                },
            })
        }
        "/load" => {
            let machine = cx.figures.machine_load;
            let held = sum(&|s| s.bytes_held + s.inbox_bytes);
            let network = (me.packet_memory_bytes_max > 0)
                .then(|| held as f64 / me.packet_memory_bytes_max as f64)
                // An idle node is "negligible", not "unknown".
                .map(|f| f.max(f64::MIN_POSITIVE));
            let total = match (machine, network) {
                (Some(m), Some(n)) => Some(m.max(n)),
                (m, n) => m.or(n),
            };
            json!({
                "total": load_tier(total),
                "machine": load_tier(machine),
                "network": load_tier(network),
            })
        }
        "/mixnode" => json!({}),
        "/metrics/mixing" => {
            let (p, c) = cx.stats;
            json!({
                "update_time": rfc3339(c.time),
                "previous_update_time": rfc3339(p.time),
                "received_since_startup": c.received,
                "sent_since_startup": c.sent,
                "dropped_since_startup": c.dropped,
                "received_since_last_update": c.received.saturating_sub(p.received),
                "sent_since_last_update": c.sent.saturating_sub(p.sent),
                "dropped_since_last_update": c.dropped.saturating_sub(p.dropped),
            })
        }
        "/metrics/packets-stats" => {
            let malformed = dropped(&[
                DropReason::BadFrame,
                DropReason::BadPacket,
                DropReason::BadNextHopAddress,
                DropReason::UnsupportedPacketType,
                DropReason::ExpiredKey,
            ]);
            let after_unwrap = dropped(&[
                DropReason::WheelFull,
                DropReason::HandoffFull,
                DropReason::NextHopTableFull,
                DropReason::NextHopQueueFull,
                DropReason::NextHopUnreachable,
                DropReason::Shutdown,
                DropReason::MemoryFull,
                DropReason::NextHopUnknown,
            ]);
            let received = sum(&|s| s.counts.packets.received);
            let final_hop = dropped(&[DropReason::FinalHop]);
            let replayed = dropped(&[DropReason::Replay]);
            json!({
                "ingress_mixing": {
                    "forward_hop_packets_received": received.saturating_sub(final_hop),
                    "final_hop_packets_received": final_hop,
                    "malformed_packets_received": malformed,
                    "replayed_packets_received": replayed,
                    "test_packets_received": 0,
                    "excessive_delay_packets": sum(&|s| s.delays_clamped),
                    "forward_hop_packets_dropped": after_unwrap,
                    "final_hop_packets_dropped": final_hop,
                },
                "egress_mixing": {
                    "forward_hop_packets_sent": sum(&|s| s.counts.packets.forwarded),
                    "forward_hop_packets_dropped": after_unwrap,
                    "ack_packets_sent": 0,
                },
            })
        }
        "/metrics/verloc" => {
            let (current, previous) = match &cx.figures.verloc {
                Some((current, previous)) => (Some(current), previous.as_ref()),
                None => (None, None),
            };
            json!({
                "previous": verloc_result(previous, false),
                "current": verloc_result(current, true),
            })
        }
        "/health" | "/metrics/prometheus" => return None,
        _ => return Some(not_found(path)),
    };
    Some(json_response(200, &value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    fn announced(pre: bool) -> Announced {
        Announced {
            primary: (7, [3; 32]),
            pre_announced: pre.then_some((8, [4; 32])),
        }
    }

    #[test]
    fn host_information_is_signed_over_its_data_text_in_field_order() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let ips: Vec<IpAddr> = vec![
            "203.0.113.5".parse().unwrap(),
            "2001:db8::5".parse().unwrap(),
        ];
        let body = signed_host_information(&key, &ips, None, &announced(true), None);
        let value: Value = serde_json::from_str(&body).unwrap();
        let data = host_information_data(
            key.verifying_key().as_bytes(),
            &ips,
            None,
            &announced(true),
            None,
        );
        assert!(body.starts_with(&format!("{{\"data\":{data},")), "{body}");
        let order: Vec<&str> = [
            "\"ip_address\"",
            "\"hostname\":null",
            "\"ed25519_identity\"",
            "\"x25519_sphinx\"",
            "\"primary_x25519_sphinx_key\":{\"rotation_id\":7,",
            "\"pre_announced_x25519_sphinx_key\":{\"rotation_id\":8,",
            "\"x25519_versioned_noise\":null",
        ]
        .into_iter()
        .collect();
        let mut at = 0;
        for field in order {
            let found = data[at..]
                .find(field)
                .unwrap_or_else(|| panic!("{field} after {at} in {data}"));
            at += found + field.len();
        }
        let signature = bs58::decode(value["signature"].as_str().unwrap())
            .into_vec()
            .unwrap();
        let signature = Signature::from_slice(&signature).unwrap();
        assert!(key
            .verifying_key()
            .verify(data.as_bytes(), &signature)
            .is_ok());
        // Any other byte order of the same data does not verify.
        let reordered = serde_json::to_string(&value["data"]).unwrap();
        assert_ne!(reordered, data, "serde_json::Value sorts keys");
        assert!(key
            .verifying_key()
            .verify(reordered.as_bytes(), &signature)
            .is_err());
        assert_eq!(value["data"]["keys"]["x25519_sphinx"], base58(&[3; 32]));
        assert_eq!(value["data"]["ip_address"][1], "2001:db8::5");
    }

    #[test]
    fn host_information_is_signed_again_only_when_the_keys_change() {
        let keys = AnnouncedKeys::new(announced(false));
        let me = SelfDescription::new(SigningKey::from_bytes(&[1; 32]), keys.clone());
        let first = me.signed_host_information();
        assert_eq!(me.signed_host_information(), first);
        keys.set(announced(false));
        assert_eq!(me.signed_host_information(), first, "same keys, same text");
        keys.set(announced(true));
        let second = me.signed_host_information();
        assert_ne!(second, first);
        assert!(second.contains("\"pre_announced_x25519_sphinx_key\":{\"rotation_id\":8"));
    }

    #[test]
    fn load_tiers_follow_nym_node() {
        assert_eq!(load_tier(None), "unknown");
        assert_eq!(load_tier(Some(0.0)), "unknown");
        assert_eq!(load_tier(Some(f64::NAN)), "unknown");
        assert_eq!(load_tier(Some(0.05)), "negligible");
        assert_eq!(load_tier(Some(0.3)), "low");
        assert_eq!(load_tier(Some(0.5)), "medium");
        assert_eq!(load_tier(Some(0.7)), "high");
        assert_eq!(load_tier(Some(0.9)), "very_high");
        assert_eq!(load_tier(Some(3.0)), "at_capacity");
    }
}
