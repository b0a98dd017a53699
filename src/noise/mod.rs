//! Noise on mixnet links, as today's nym-nodes speak it (nym-noise): the message framing
//! (pure, [`framing`]) and the pre-shared key. The handshake and transport (snow) and their
//! place in the shard driver come with the Noise links themselves; this module is the part
//! that parses bytes from the network, so that it can be fuzzed on its own.
//!
//! Facts (read from the published nym-noise 2.0 crate): pattern
//! `Noise_XKpsk3_25519_AESGCM_SHA256`, no prologue; PSK version 1 = SHA-256(`"NYMTECH_NOISE_
//! dQw4w9WgXcQ"` || the responder's Noise public key); every message has an 8-byte header
//! (version, pattern, type, payload length u16 BE, 3 reserved bytes).

pub mod framing;
pub mod link;

use sha2::{Digest, Sha256};

/// What the version-1 PSK hashes before the responder's key.
pub const PSK_V1_PREFIX: &[u8] = b"NYMTECH_NOISE_dQw4w9WgXcQ";

/// The version-1 pre-shared key for a link to the responder whose Noise public key is
/// `responder`.
pub fn psk_v1(responder: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(PSK_V1_PREFIX);
    hasher.update(responder);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_psk_is_the_hash_of_the_prefix_and_the_responders_key() {
        let key = [7u8; 32];
        let mut joined = PSK_V1_PREFIX.to_vec();
        joined.extend_from_slice(&key);
        let expected: [u8; 32] = Sha256::digest(&joined).into();
        assert_eq!(psk_v1(&key), expected);
        assert_ne!(psk_v1(&[8u8; 32]), expected);
    }
}
