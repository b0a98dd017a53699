//! A thread-per-core Sphinx mixnode compatible with the Nym mixnet.
//!
//! # Layout
//!
//! The data path reads in folder order:
//! `shard (driver reads) -> shard::core -> framing -> sphinx -> delay -> forward -> shard (driver writes)`.
//!
//! - [`framing`]: the mix-port frame codec and a streaming frame decoder (pure).
//! - [`replay`]: the replay filter (two generations of Bloom filter, so it never wears out)
//!   and its snapshot file format (pure).
//! - [`sphinx`]: the hop step, from packet bytes to next hop, delay and packet, with up to two
//!   live keys chosen by the frame's rotation byte (pure).
//! - [`rotation`]: the Sphinx key schedule (which keys are live when, pure), the key files,
//!   and the thread that follows nym-api's or the local schedule.
//! - [`delay`]: the timer wheel that holds packets until their send time (pure).
//! - [`forward`]: the next-hop table (bounded queues, connection states, backoff, idle and
//!   failing eviction) and which shard owns a next hop (pure).
//! - [`accounting`]: the drop reasons and packet counters (pure).
//! - [`shard`]: one glommio executor per core: `shard::core::ShardCore` holds the engine's
//!   whole policy with no I/O (the seeded simulation in `shard/sim.rs` drives it);
//!   `shard::inbound` is the inbound connections' admission and deadlines (pure); `worker.rs`
//!   is the driver (accept, readers, pump, link tasks, doorbells); `watchdog.rs` rings every
//!   shard and reports one that stalls.
//! - [`verloc`]: latency measurements between nodes: echo codec, figures and results (pure),
//!   the VerLoc listener and measurer (threads).
//! - [`topology`]: the JSON list of nodes that VerLoc measures and the localnet script writes;
//!   `topology::known`, the known nodes' addresses that gate forwarding and keep inbound room,
//!   and nym-api's node list page parser (pure); `topology::refresh`, which reads them from a
//!   file, a URL or nym-api (a thread); `topology::fetch`, every outbound HTTP(S) call (ureq,
//!   rustls) and its counters.
//! - [`monitor`]: the node's loop packets through itself and the network, the record of
//!   their fates (pure) and the thread that sends them; `/report` and `/history`.
//! - [`noise`]: Noise on mixnet links: the message framing of nym-noise (pure, fuzzed), the
//!   pre-shared key, the XKpsk3 handshake and transport through snow (`noise::link`, pure)
//!   and the counts of failures by reason; `shard/noise_io.rs` is the driver's side (a
//!   link's cipher state lives in the one task that reads or writes it).
//! - [`background`]: stopping the threads that talk to the network without waiting on it.
//! - [`node`]: starts and stops the services in order; saving and loading the replay filters;
//!   the open-files limit and the summary log line; `node::announce`, the announcement to
//!   nym-api's refresh-described.
//! - [`http`]: the HTTP API control thread; `http::nym_node`, the `/api/v1/` routes in
//!   nym-node's shapes and the signed host-information (pure).
//! - [`config`]: `config.toml`, `description.toml`, home folders, and upgrades of old files.
//! - [`keys`]: the identity (Ed25519), Sphinx (X25519) and Noise (X25519) key files.
//! - [`probe`]: sends test packets through a node and says whether it is mixing.
//! - [`bench`]: the whole-node benchmark behind `bench-mix`.
//! - [`cli`]: the operator commands; the only place errors become messages and exit codes.
//! - [`logging`]: log output.
//!
//! Pure modules take `now` and byte slices as arguments and never touch sockets or clocks; only
//! the shard runtime and the control thread do I/O.

pub mod accounting;
pub mod background;
pub mod bench;
pub mod cli;
pub mod config;
pub mod delay;
pub mod forward;
pub mod framing;
pub mod http;
pub mod keys;
pub mod logging;
pub mod monitor;
pub mod node;
pub mod noise;
pub mod probe;
pub mod replay;
pub mod rotation;
pub mod shard;
pub mod sphinx;
pub mod topology;
pub mod verloc;

#[cfg(test)]
mod testing;
