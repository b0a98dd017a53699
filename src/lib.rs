//! A thread-per-core Sphinx mixnode compatible with the Nym mixnet.
//!
//! # Layout
//!
//! The data path reads in folder order:
//! `listener -> framing -> sphinx -> delay -> forward`.
//!
//! - [`accounting`]: the drop reasons and per-shard packet counters (pure).
//!
//! Pure modules take `now` and byte slices as arguments and never touch sockets or clocks; only
//! the shard runtime and the control thread do I/O.

pub mod accounting;
