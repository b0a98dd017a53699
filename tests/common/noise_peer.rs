//! Noise peers for the tests, blocking, on loopback: an initiator that sends frames, and a
//! final hop that answers handshakes and opens what it receives. They use the node's own
//! `noise::link` (the interop tests against nym-noise live in `compat/`). Peers are keyed by
//! IP, so each peer binds its own loopback address (127.0.0.2, ...).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nym_mixnode::framing::FrameDecoder;
use nym_mixnode::noise::framing::{Deframer, DATA_PLAINTEXT_MAX};
use nym_mixnode::noise::link::{public_key, Handshake, Transport};
use nym_mixnode::topology::{TopologyEntry, TopologyFile};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::{PublicKey, StaticSecret};

/// A Noise key pair.
#[derive(Clone, Copy)]
pub struct NoiseKeys {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

pub fn noise_keys(seed: u8) -> NoiseKeys {
    let private = [seed; 32];
    NoiseKeys {
        private,
        public: public_key(&private),
    }
}

/// A connection to `to` from `source` (any port).
pub fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind the peer's loopback address");
    socket
        .connect_timeout(&to.into(), Duration::from_secs(2))
        .expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Run `handshake` over `stream` to its end (the node's own blocking helper).
pub fn handshake(stream: &mut TcpStream, handshake: Handshake) -> Result<Transport, String> {
    handshake_keeping(stream, handshake).map(|(transport, _)| transport)
}

/// Run `handshake` over `stream` to its end; what the peer sent after its last handshake
/// message is in the deframer returned.
pub fn handshake_keeping(
    stream: &mut TcpStream,
    handshake: Handshake,
) -> Result<(Transport, Deframer), String> {
    nym_mixnode::noise::blocking::handshake(stream, handshake).map_err(|e| e.to_string())
}

/// Seal `plaintext` and write it.
pub fn send_sealed(
    stream: &mut TcpStream,
    transport: &mut Transport,
    plaintext: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::new();
    transport.seal(plaintext, &mut out).unwrap();
    stream.write_all(&out)
}

/// Whether the node closed `stream` within `within` (a read sees the end or a reset).
pub fn closed_by_node(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// How a [`NoiseReceiver`] treats connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answer the handshake, then open frames.
    Noise,
    /// Accept and never answer (a responder that stalls mid-handshake).
    Stall,
}

/// A final hop listening on `ip` that speaks Noise as the responder.
pub struct NoiseReceiver {
    pub addr: SocketAddr,
    pub public_key: PublicKey,
    pub noise: NoiseKeys,
    pub arrivals: Arc<Mutex<Vec<Vec<u8>>>>,
    pub handshakes: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NoiseReceiver {
    pub fn start(ip: &str, noise: NoiseKeys, answer: Answer) -> NoiseReceiver {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = StaticSecret::random();
        let public_key = PublicKey::from(&secret);
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (arrivals, handshakes, connections, stop) = (
                arrivals.clone(),
                handshakes.clone(),
                connections.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut readers = Vec::new();
                let mut stalled = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    if answer == Answer::Stall {
                        stalled.push(stream);
                        continue;
                    }
                    let (arrivals, handshakes, stop, secret) = (
                        arrivals.clone(),
                        handshakes.clone(),
                        stop.clone(),
                        secret.clone(),
                    );
                    readers.push(std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let responder = Handshake::responder(&noise.private, &noise.public);
                        let Ok((transport, deframer)) = handshake_keeping(&mut stream, responder)
                        else {
                            return;
                        };
                        handshakes.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                        open_frames(stream, deframer, transport, &secret, &arrivals, &stop);
                    }));
                }
                for r in readers {
                    let _ = r.join();
                }
            })
        };
        NoiseReceiver {
            addr,
            public_key,
            noise,
            arrivals,
            handshakes,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn hop(&self) -> nym_mixnode::sphinx::RouteHop {
        nym_mixnode::sphinx::RouteHop {
            address: self.addr,
            public_key: self.public_key,
            delay: Duration::ZERO,
        }
    }

    pub fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let start = std::time::Instant::now();
        while self.count() < n && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.count()
    }
}

impl Drop for NoiseReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_frames(
    mut stream: TcpStream,
    mut deframer: Deframer,
    mut transport: Transport,
    secret: &StaticSecret,
    arrivals: &Mutex<Vec<Vec<u8>>>,
    stop: &AtomicBool,
) {
    let mut decoder = FrameDecoder::new();
    let mut plain = vec![0u8; DATA_PLAINTEXT_MAX];
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        // What came with the last handshake message first.
        if !first {
            match stream.read(deframer.spare_mut()) {
                Ok(0) => return,
                Ok(n) => deframer.advance(n),
                Err(_) => continue,
            }
        }
        first = false;
        while let Ok(Some((header, payload))) = deframer.next_message() {
            let Ok(n) = transport.open(header, payload, &mut plain) else {
                return;
            };
            let mut at = 0;
            while at < n {
                let spare = decoder.spare_mut();
                let take = spare.len().min(n - at);
                spare[..take].copy_from_slice(&plain[at..at + take]);
                decoder.advance(take);
                at += take;
                while let Ok(Some(frame)) = decoder.next_frame() {
                    let message = SphinxPacket::from_bytes(frame.packet)
                        .ok()
                        .and_then(|p| p.process(secret).ok())
                        .and_then(|p| match p.data {
                            ProcessedPacketData::FinalHop { payload, .. } => {
                                payload.recover_plaintext().ok()
                            }
                            ProcessedPacketData::ForwardHop { .. } => None,
                        });
                    if let Some(message) = message {
                        arrivals.lock().unwrap().push(message);
                    }
                }
            }
        }
    }
}

/// One topology entry: a node at `host` (`mix_port`), with a Noise key or none.
pub fn entry(seed: u8, host: &str, mix_port: u16, noise: Option<[u8; 32]>) -> TopologyEntry {
    let identity = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    TopologyEntry {
        identity_key: bs58::encode(identity.as_bytes()).into_string(),
        sphinx_key: bs58::encode([seed.wrapping_add(100); 32]).into_string(),
        host: host.to_string(),
        mix_port,
        verloc_port: 1790,
        noise_key: noise.map(|k| bs58::encode(k).into_string()),
        ..Default::default()
    }
}

/// Write a topology file of `entries`.
pub fn write_topology(path: &std::path::Path, entries: Vec<TopologyEntry>) {
    let text = TopologyFile { nodes: entries }.to_json_pretty();
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("topology written");
    std::fs::rename(&temporary, path).expect("topology in place");
}
