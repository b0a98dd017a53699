//! A thread-per-core Sphinx mixnode compatible with the Nym mixnet.
//!
//! # Layout
//!
//! The data path reads in folder order:
//! `listener -> framing -> sphinx -> delay -> forward`.
//!
//! - [`accounting`]: the drop reasons and per-shard packet counters (pure).
//! - [`framing`]: the mix-port frame codec and a streaming frame decoder (pure).
//! - [`replay`]: the Bloom filter of replay tags seen under the current key (pure).
//! - [`sphinx`]: the hop step, from packet bytes to next hop, delay and packet (pure).
//! - [`delay`]: the timer wheel that holds packets until their send time (pure).
//! - [`forward`]: per-next-hop queues, connection states, backoff and shard ownership (pure).
//!
//! Pure modules take `now` and byte slices as arguments and never touch sockets or clocks; only
//! the shard runtime and the control thread do I/O.

pub mod accounting;
pub mod delay;
pub mod forward;
pub mod framing;
pub mod replay;
pub mod sphinx;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod testing;
