//! A thread-per-core Sphinx mixnode compatible with the Nym mixnet.
//!
//! # Layout
//!
//! The data path reads in folder order:
//! `listener -> framing -> sphinx -> delay -> forward`.
//!
//! - [`cli`]: the operator commands; the only place errors become messages and exit codes.
//! - [`config`]: `config.toml`, `description.toml`, home folders, and upgrades of old files.
//! - [`keys`]: the identity (Ed25519) and Sphinx (X25519) key files.
//! - [`node`]: starts and stops the services in order.
//! - [`http`]: the HTTP API control thread.
//! - [`accounting`]: the drop reasons and per-shard packet counters (pure).
//! - [`logging`]: log output.
//!
//! Pure modules take `now` and byte slices as arguments and never touch sockets or clocks; only
//! the shard runtime and the control thread do I/O.

pub mod accounting;
pub mod cli;
pub mod config;
pub mod http;
pub mod keys;
pub mod logging;
pub mod node;
