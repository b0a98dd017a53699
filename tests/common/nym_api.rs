//! A stub nym-api on loopback: the key rotation schedule, the semi-skimmed node list (paged,
//! at most `page_size_max` nodes a page whatever is asked, as nym-api caps it), and
//! `refresh-described` (bodies recorded). Each route can be made to answer junk, slowly, or
//! with an error status. Shared with the compatibility crate, which checks the documents
//! against nym-api's own types (so it uses only std, serde_json, bs58 and ed25519-dalek).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Epoch length and rotation length of the stub's schedule.
pub const EPOCH_SECS: u64 = 3600;
pub const VALIDITY_EPOCHS: u64 = 24;

/// One node as the stub lists it.
#[derive(Clone, Debug)]
pub struct StubNode {
    pub node_id: u32,
    pub identity: [u8; 32],
    pub sphinx: [u8; 32],
    pub ips: Vec<String>,
    pub mix_port: u16,
    pub noise: Option<[u8; 32]>,
}

impl StubNode {
    /// A node with keys from `seed` at `ip`.
    pub fn new(seed: u8, ip: &str) -> StubNode {
        StubNode {
            node_id: seed as u32,
            identity: ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes(),
            sphinx: x25519_public(seed),
            ips: vec![ip.to_string()],
            mix_port: 1789,
            noise: None,
        }
    }
}

fn x25519_public(seed: u8) -> [u8; 32] {
    // Any 32 bytes are an X25519 public key; a recognisable pattern per seed.
    let mut key = [seed; 32];
    key[0] = 0x40;
    key
}

fn b58(bytes: &[u8]) -> String {
    bs58::encode(bytes).into_string()
}

/// How a route answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Normal,
    /// A 200 whose body is not the document.
    Malformed,
    /// The normal answer after this long.
    Slow(Duration),
    /// This status, no body.
    Status(u16),
}

/// Unix time now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The current epoch and rotation of the stub's schedule.
pub fn epoch_and_rotation() -> (u64, u64) {
    let epoch = unix_now() / EPOCH_SECS;
    (epoch, epoch / VALIDITY_EPOCHS)
}

/// The stub's `KeyRotationInfoResponse`.
pub fn schedule_json() -> String {
    let (epoch, rotation) = epoch_and_rotation();
    let start = rfc3339(epoch * EPOCH_SECS);
    format!(
        r#"{{"key_rotation_state":{{"validity_epochs":{VALIDITY_EPOCHS},"initial_epoch_id":0}},"current_absolute_epoch_id":{epoch},"current_epoch_start":"{start}","epoch_duration":{{"secs":{EPOCH_SECS},"nanos":0}},"progress":{{"current_key_rotation_id":{rotation},"current_rotation_starting_epoch":{},"current_rotation_ending_epoch":{}}}}}"#,
        rotation * VALIDITY_EPOCHS,
        (rotation + 1) * VALIDITY_EPOCHS - 1,
    )
}

/// RFC 3339 (UTC, whole seconds) of a Unix time.
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// One page of `/v2/unstable/nym-nodes/semi-skimmed`
/// (`PaginatedCachedNodesResponseV2<SemiSkimmedNodeV1>`).
pub fn page_json(nodes: &[StubNode], page: usize, size: usize, total: usize) -> String {
    let (epoch, rotation) = epoch_and_rotation();
    let data: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "basic": {
                    "node_id": n.node_id,
                    "ed25519_identity_pubkey": b58(&n.identity),
                    "ip_addresses": n.ips,
                    "mix_port": n.mix_port,
                    "x25519_sphinx_pubkey": b58(&n.sphinx),
                    "role": {"Mixnode": {"layer": 1 + n.node_id % 3}},
                    "supported_roles": {"mixnode": true, "entry": false, "exit_nr": false, "exit_ipr": false},
                    "entry": null,
                    "performance": "0.98",
                },
                "x25519_noise_versioned_key": n.noise.map(|k| serde_json::json!({
                    "supported_version": 1,
                    "x25519_pubkey": b58(&k),
                })),
            })
        })
        .collect();
    serde_json::json!({
        "metadata": {
            "status": null,
            "absolute_epoch_id": epoch,
            "rotation_id": rotation,
            "refreshed_at": rfc3339(unix_now()),
        },
        "nodes": {
            "pagination": {"total": total, "page": page, "size": size},
            "data": data,
        },
    })
    .to_string()
}

#[derive(Debug)]
struct State {
    nodes: Vec<StubNode>,
    page_size_max: usize,
    nodes_answer: Answer,
    schedule_answer: Answer,
    requests: Vec<String>,
    refresh_bodies: Vec<String>,
}

/// The running stub; stopped when dropped.
pub struct StubNymApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl StubNymApi {
    /// Serve `nodes`, at most `page_size_max` a page.
    pub fn start(nodes: Vec<StubNode>, page_size_max: usize) -> StubNymApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stub nym-api");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            nodes,
            page_size_max: page_size_max.max(1),
            nodes_answer: Answer::Normal,
            schedule_answer: Answer::Normal,
            requests: Vec::new(),
            refresh_bodies: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = Arc::clone(&state);
                            std::thread::spawn(move || serve(stream, &state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        StubNymApi { addr, state, stop }
    }

    /// The base URL to give the node (`rotation.nym_api`).
    pub fn base(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn set_nodes(&self, nodes: Vec<StubNode>) {
        self.state.lock().unwrap().nodes = nodes;
    }

    pub fn set_nodes_answer(&self, answer: Answer) {
        self.state.lock().unwrap().nodes_answer = answer;
    }

    pub fn set_schedule_answer(&self, answer: Answer) {
        self.state.lock().unwrap().schedule_answer = answer;
    }

    /// Request lines seen ("GET /api/...").
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Bodies POSTed to refresh-described.
    pub fn refresh_bodies(&self) -> Vec<String> {
        self.state.lock().unwrap().refresh_bodies.clone()
    }
}

impl Drop for StubNymApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
        if buffer.len() > 64 << 10 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length.min(1 << 20) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buffer[head_end..]).to_string();
    let line = head.lines().next().unwrap_or("").to_string();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| -> Option<usize> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let (answer, document) = {
        let mut s = state.lock().unwrap();
        s.requests.push(format!("{method} {target}"));
        match (method, path) {
            ("GET", "/api/v1/epoch/key-rotation-info") => {
                (s.schedule_answer, Some(schedule_json()))
            }
            ("GET", "/api/v2/unstable/nym-nodes/semi-skimmed") => {
                let page = param("page").unwrap_or(0);
                let size = param("per_page").unwrap_or(100).min(s.page_size_max);
                let total = s.nodes.len();
                let from = (page * size).min(total);
                let to = (from + size).min(total);
                let document = page_json(&s.nodes[from..to], page, size, total);
                (s.nodes_answer, Some(document))
            }
            ("POST", "/api/v1/nym-nodes/refresh-described") => {
                s.refresh_bodies.push(body);
                (Answer::Normal, Some("{}".to_string()))
            }
            _ => (Answer::Status(404), None),
        }
    };
    let (status, body) = match (answer, document) {
        (Answer::Status(code), _) => (code, String::new()),
        (_, None) => (404, String::new()),
        (Answer::Malformed, Some(_)) => (200, "<html>not what was asked</html>".to_string()),
        (Answer::Slow(wait), Some(document)) => {
            std::thread::sleep(wait);
            (200, document)
        }
        (Answer::Normal, Some(document)) => (200, document),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
