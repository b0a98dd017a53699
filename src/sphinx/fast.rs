//! The hop step written against the primitives, byte-identical to `sphinx-packet` 0.8's
//! `SphinxPacket::process`, without heap allocation and with both X25519 multiplications done
//! through Edwards points.
//!
//! Why: per packet the crate's cost is two X25519 ladders on the same group element alpha
//! (the shared secret, then the blinded alpha for the next hop). curve25519-dalek runs the
//! Montgomery ladder in plain 64-bit arithmetic but its Edwards scalar multiplication uses
//! AVX-512 IFMA or AVX2 where the CPU has them (the IFMA backend is built in on x86_64 by
//! `.cargo/config.toml`; the choice is made at run time). X25519's output is the u-coordinate of `[clamp(k)]P` for any point P
//! with alpha's u-coordinate (the sign of P's Edwards x does not change u), so alpha is
//! decompressed to Edwards once and both products are taken there with
//! `EdwardsPoint::mul_clamped`, which is constant-time. A clamped scalar is a multiple of 8,
//! so a small-order component of alpha vanishes on both paths alike. A u-coordinate on the
//! quadratic twist (which a hostile sender can put in a header) has no Edwards point; for it
//! both products fall back to the ladder, `MontgomeryPoint::mul_clamped`, exactly as the crate
//! computes them. Both paths read u the same way (`FieldElement::from_bytes`: bit 255 ignored,
//! values at or above p reduced), which the differential test pins down.
//!
//! The order of work lets a caller check the replay tag and the header MAC before paying for
//! the second multiplication: [`Expanded::new`] (first multiplication and key expansion),
//! [`Expanded::replay_tag`], [`Expanded::verify_header_mac`], then
//! [`Expanded::unwrap_in_place`] (routing information, payload, blinding).
//!
//! What it deliberately does not do: replay filtering, address parsing and delay caps (see
//! [`super::HopProcessor`]), building packets, SURB handling.

use aes::cipher::{KeyIvInit, StreamCipher};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sphinx_packet::constants::{
    BLINDING_FACTOR_SIZE, DELAY_LENGTH, DESTINATION_ADDRESS_LENGTH,
    EXPANDED_SHARED_SECRET_HKDF_INFO, EXPANDED_SHARED_SECRET_HKDF_SALT,
    EXPANDED_SHARED_SECRET_LENGTH, HEADER_INTEGRITY_MAC_SIZE, IDENTIFIER_LENGTH,
    INTEGRITY_MAC_KEY_SIZE, NODE_ADDRESS_LENGTH, NODE_META_INFO_SIZE, PAYLOAD_KEY_SEED_SIZE,
    PAYLOAD_KEY_SIZE, REPLAY_TAG_SIZE, STREAM_CIPHER_OUTPUT_LENGTH, VERSION_LENGTH,
};
use sphinx_packet::crypto::{STREAM_CIPHER_INIT_VECTOR, STREAM_CIPHER_KEY_SIZE};
use sphinx_packet::header::routing::{ENCRYPTED_ROUTING_INFO_SIZE, FINAL_HOP, FORWARD_HOP};
use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::payload::key::derive_payload_key;
use sphinx_packet::payload::{NymLioness, PAYLOAD_OVERHEAD_SIZE};
use sphinx_packet::version::Version;
use zeroize::Zeroize;

/// Bytes of the group element alpha at the start of a header.
pub const ALPHA_LEN: usize = 32;
/// Where the header MAC starts.
const MAC_START: usize = ALPHA_LEN;
/// Where the encrypted routing information starts.
const ROUTING_START: usize = MAC_START + HEADER_INTEGRITY_MAC_SIZE;
/// Lioness needs a block longer than its digest (32 bytes) and refuses anything shorter.
const LIONESS_BLOCK_LEN_MIN: usize = 33;
/// The shortest packet [`check_len`] accepts: the crate's own parse minimum, and a payload
/// Lioness can unwrap.
pub const PACKET_LEN_MIN: usize = HEADER_SIZE + LIONESS_BLOCK_LEN_MIN;

// The expanded secret's layout, in the crate's order.
const STREAM_KEY_AT: usize = 0;
const MAC_KEY_AT: usize = STREAM_KEY_AT + STREAM_CIPHER_KEY_SIZE;
const PAYLOAD_KEY_AT: usize = MAC_KEY_AT + INTEGRITY_MAC_KEY_SIZE;
const BLINDING_AT: usize = PAYLOAD_KEY_AT + PAYLOAD_KEY_SIZE;
const REPLAY_TAG_AT: usize = BLINDING_AT + BLINDING_FACTOR_SIZE;

// The decrypted routing information's layout.
const FLAG_AT: usize = 0;
const VERSION_AT: usize = FLAG_AT + 1;
const ADDRESS_AT: usize = VERSION_AT + VERSION_LENGTH;
const DELAY_AT: usize = ADDRESS_AT + NODE_ADDRESS_LENGTH;
const NEXT_MAC_AT: usize = DELAY_AT + DELAY_LENGTH;
const NEXT_ROUTING_AT: usize = NEXT_MAC_AT + HEADER_INTEGRITY_MAC_SIZE;
const IDENTIFIER_AT: usize = ADDRESS_AT + DESTINATION_ADDRESS_LENGTH;

const _: () = assert!(HEADER_SIZE == ROUTING_START + ENCRYPTED_ROUTING_INFO_SIZE);
const _: () = assert!(REPLAY_TAG_AT + REPLAY_TAG_SIZE == EXPANDED_SHARED_SECRET_LENGTH);
const _: () = assert!(REPLAY_TAG_SIZE == 32);
const _: () = assert!(BLINDING_FACTOR_SIZE == 32);
const _: () = assert!(NEXT_MAC_AT == NODE_META_INFO_SIZE);
const _: () = assert!(NEXT_ROUTING_AT + ENCRYPTED_ROUTING_INFO_SIZE == STREAM_CIPHER_OUTPUT_LENGTH);
const _: () = assert!(IDENTIFIER_AT + IDENTIFIER_LENGTH <= STREAM_CIPHER_OUTPUT_LENGTH);
const _: () = assert!(PACKET_LEN_MIN >= HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE);

type Aes128Ctr = ctr::Ctr64BE<aes::Aes128>;

/// Why a packet could not be processed. The crate rejects exactly these packets too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than a header and a payload Lioness can unwrap.
    TooShort,
    /// The header MAC does not verify under the derived key.
    Mac,
    /// The decrypted routing flag is neither forward nor final.
    RoutingFlag,
}

/// What the routing information told this hop to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Forward the rewritten packet.
    Forward {
        /// The next hop's 32 address bytes, as the sender wrote them.
        next_hop_address: [u8; NODE_ADDRESS_LENGTH],
        /// The sender's delay in nanoseconds.
        delay_nanos: u64,
    },
    /// This hop is the last; the unwrapped payload is for `destination`.
    Final {
        /// The destination's 32 address bytes.
        destination: [u8; DESTINATION_ADDRESS_LENGTH],
        /// The SURB identifier.
        identifier: [u8; IDENTIFIER_LENGTH],
    },
}

/// Checks that `packet` is long enough to be processed at all. Cheap: call it before
/// [`Expanded::new`] so that junk costs no multiplication.
pub fn check_len(packet: &[u8]) -> Result<(), Reject> {
    if packet.len() < PACKET_LEN_MIN {
        return Err(Reject::TooShort);
    }
    Ok(())
}

/// Processes a whole packet in place with the node's secret key bytes: the crate's
/// `process()` without a replay filter. On success `packet` holds the next hop's packet (for a
/// final hop, the header bytes are left as they were and the payload is unwrapped); on
/// failure its content is unspecified.
pub fn process_in_place(node_secret: &[u8; 32], packet: &mut [u8]) -> Result<Hop, Reject> {
    check_len(packet)?;
    let expanded = Expanded::new(node_secret, alpha_of(packet));
    if !expanded.verify_header_mac(&packet[..HEADER_SIZE]) {
        return Err(Reject::Mac);
    }
    expanded.unwrap_in_place(packet)
}

/// The group element at the start of a packet. The caller has checked the length.
pub fn alpha_of(packet: &[u8]) -> [u8; ALPHA_LEN] {
    let mut alpha = [0u8; ALPHA_LEN];
    alpha.copy_from_slice(&packet[..ALPHA_LEN]);
    alpha
}

/// A group element in the form its multiplications are cheapest in.
#[derive(Clone, Copy)]
enum Alpha {
    /// On the curve: the Edwards point with alpha's u-coordinate (either sign).
    Edwards(EdwardsPoint),
    /// On the twist (or u = -1): only the ladder can multiply it.
    Twist(MontgomeryPoint),
}

impl Alpha {
    fn new(alpha: [u8; ALPHA_LEN]) -> Self {
        let u = MontgomeryPoint(alpha);
        match u.to_edwards(0) {
            Some(point) => Alpha::Edwards(point),
            None => Alpha::Twist(u),
        }
    }

    /// X25519(scalar, alpha): the u-coordinate of `[clamp(scalar)]alpha`.
    fn mul_clamped(&self, scalar: [u8; 32]) -> [u8; 32] {
        match self {
            Alpha::Edwards(point) => point.mul_clamped(scalar).to_montgomery().to_bytes(),
            Alpha::Twist(u) => u.mul_clamped(scalar).to_bytes(),
        }
    }
}

/// X25519 as the crate computes it (`StaticSecret::diffie_hellman`), through Edwards points
/// where alpha has one. For tests and benchmarks; the hop step multiplies one decompressed
/// alpha twice.
pub fn x25519(scalar: [u8; 32], alpha: [u8; ALPHA_LEN]) -> [u8; 32] {
    Alpha::new(alpha).mul_clamped(scalar)
}

/// A packet's alpha with the keys derived from it: the state between the first and the second
/// scalar multiplication.
pub struct Expanded {
    alpha: Alpha,
    /// The HKDF expansion of the shared secret, laid out as the crate's
    /// `ExpandedSharedSecret`.
    keys: [u8; EXPANDED_SHARED_SECRET_LENGTH],
}

impl Drop for Expanded {
    fn drop(&mut self) {
        self.keys.zeroize();
    }
}

impl Expanded {
    /// Derives the shared secret of `alpha` and the node key (the first multiplication) and
    /// expands it.
    pub fn new(node_secret: &[u8; 32], alpha: [u8; ALPHA_LEN]) -> Self {
        let alpha = Alpha::new(alpha);
        let mut shared_secret = alpha.mul_clamped(*node_secret);
        let hkdf = Hkdf::<Sha256>::new(Some(EXPANDED_SHARED_SECRET_HKDF_SALT), &shared_secret);
        shared_secret.zeroize();
        let mut keys = [0u8; EXPANDED_SHARED_SECRET_LENGTH];
        let expanded = hkdf.expand(EXPANDED_SHARED_SECRET_HKDF_INFO, &mut keys);
        // The length is a constant well within HKDF-SHA256's 255 blocks.
        assert!(expanded.is_ok(), "HKDF output length");
        Expanded { alpha, keys }
    }

    /// The replay tag, as the crate's `ExpandedSharedSecret::replay_tag`.
    pub fn replay_tag(&self) -> &[u8; REPLAY_TAG_SIZE] {
        self.keys[REPLAY_TAG_AT..][..REPLAY_TAG_SIZE]
            .try_into()
            .expect("constant length")
    }

    fn stream_cipher_key(&self) -> &[u8; STREAM_CIPHER_KEY_SIZE] {
        self.keys[STREAM_KEY_AT..][..STREAM_CIPHER_KEY_SIZE]
            .try_into()
            .expect("constant length")
    }

    fn blinding_factor(&self) -> [u8; BLINDING_FACTOR_SIZE] {
        self.keys[BLINDING_AT..][..BLINDING_FACTOR_SIZE]
            .try_into()
            .expect("constant length")
    }

    /// Verifies the header MAC (HMAC-SHA256 over the encrypted routing information, truncated,
    /// compared in constant time). `header` is the packet's first `HEADER_SIZE` bytes.
    ///
    /// # Panics
    /// If `header` is not `HEADER_SIZE` bytes long: a caller bug.
    pub fn verify_header_mac(&self, header: &[u8]) -> bool {
        assert_eq!(header.len(), HEADER_SIZE, "header length");
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(
            &self.keys[MAC_KEY_AT..][..INTEGRITY_MAC_KEY_SIZE],
        ) else {
            return false;
        };
        mac.update(&header[ROUTING_START..]);
        mac.verify_truncated_left(&header[MAC_START..ROUTING_START])
            .is_ok()
    }

    /// Unwraps a packet whose header MAC verified: decrypts the routing information, unwraps
    /// the payload with Lioness and, for a forward hop, writes the next hop's header with the
    /// blinded alpha (the second multiplication). On failure `packet`'s content is
    /// unspecified.
    pub fn unwrap_in_place(&self, packet: &mut [u8]) -> Result<Hop, Reject> {
        check_len(packet)?;
        let mut routing = [0u8; STREAM_CIPHER_OUTPUT_LENGTH];
        routing[..ENCRYPTED_ROUTING_INFO_SIZE].copy_from_slice(&packet[ROUTING_START..HEADER_SIZE]);
        let mut cipher = Aes128Ctr::new(
            self.stream_cipher_key().into(),
            (&STREAM_CIPHER_INIT_VECTOR).into(),
        );
        cipher.apply_keystream(&mut routing);

        let flag = routing[FLAG_AT];
        if flag != FORWARD_HOP && flag != FINAL_HOP {
            return Err(Reject::RoutingFlag);
        }
        // The crate reads the version from the last two of its three bytes.
        let version = Version::new(u16::from_be_bytes([
            routing[VERSION_AT + 1],
            routing[VERSION_AT + 2],
        ]));
        self.unwrap_payload(version, &mut packet[HEADER_SIZE..])?;

        if flag == FINAL_HOP {
            return Ok(Hop::Final {
                destination: routing[ADDRESS_AT..][..DESTINATION_ADDRESS_LENGTH]
                    .try_into()
                    .expect("constant length"),
                identifier: routing[IDENTIFIER_AT..][..IDENTIFIER_LENGTH]
                    .try_into()
                    .expect("constant length"),
            });
        }
        let blinded = self.alpha.mul_clamped(self.blinding_factor());
        packet[..ALPHA_LEN].copy_from_slice(&blinded);
        packet[MAC_START..HEADER_SIZE].copy_from_slice(&routing[NEXT_MAC_AT..]);
        Ok(Hop::Forward {
            next_hop_address: routing[ADDRESS_AT..][..NODE_ADDRESS_LENGTH]
                .try_into()
                .expect("constant length"),
            delay_nanos: u64::from_be_bytes(
                routing[DELAY_AT..][..DELAY_LENGTH]
                    .try_into()
                    .expect("constant length"),
            ),
        })
    }

    /// Removes this hop's Lioness layer; the key depends on the version, as in the crate.
    fn unwrap_payload(&self, version: Version, payload: &mut [u8]) -> Result<(), Reject> {
        let mut derived = [0u8; PAYLOAD_KEY_SIZE];
        let key: &[u8; PAYLOAD_KEY_SIZE] = if version.expects_legacy_full_payload_keys() {
            self.keys[PAYLOAD_KEY_AT..][..PAYLOAD_KEY_SIZE]
                .try_into()
                .expect("constant length")
        } else {
            derived = derive_payload_key(
                self.keys[PAYLOAD_KEY_AT..][..PAYLOAD_KEY_SEED_SIZE]
                    .try_into()
                    .expect("constant length"),
            );
            &derived
        };
        let result = NymLioness::new(key.into())
            .decrypt_block(payload)
            .map_err(|_| Reject::TooShort);
        derived.zeroize();
        result
    }
}
