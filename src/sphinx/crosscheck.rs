//! Runs one packet through both the `sphinx-packet` crate's `process()` and [`super::fast`],
//! and says whether they agree: the same next-hop packet bytes, address, delay and replay tag
//! (or destination, identifier and payload for a final hop), or both rejecting for the same
//! class of reason (length, MAC, routing flag; on a packet too short for Lioness the crate may
//! name another reason, having checked the MAC first).
//!
//! For the differential test, the fuzz target and the module tests; the node never calls it.
//! It allocates freely and costs three crate multiplications per packet.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sphinx_packet::constants::{
    EXPANDED_SHARED_SECRET_HKDF_INFO, EXPANDED_SHARED_SECRET_HKDF_SALT,
    EXPANDED_SHARED_SECRET_LENGTH, HEADER_INTEGRITY_MAC_SIZE, STREAM_CIPHER_OUTPUT_LENGTH,
};
use sphinx_packet::crypto::STREAM_CIPHER_KEY_SIZE;
use sphinx_packet::header::routing::ENCRYPTED_ROUTING_INFO_SIZE;
use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::{PublicKey, StaticSecret};

use super::fast::{self, Expanded, Hop};

/// What both implementations did with a packet they agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// Both forwarded, with identical output.
    Forward,
    /// Both found a final hop, with identical output.
    Final,
    /// Both rejected.
    Rejected,
}

/// Processes `packet` with both implementations under `secret`; `Err` describes the first
/// difference found. With the agreement comes the fast path's output bytes (on a forward hop,
/// the next hop's packet; on a final hop, the header as it came and the unwrapped payload).
pub fn compare(secret: &StaticSecret, packet: &[u8]) -> Result<(Agreement, Vec<u8>), String> {
    let crate_tag = SphinxPacket::from_bytes(packet).ok().map(|parsed| {
        *parsed
            .header
            .compute_expanded_shared_secret(secret)
            .replay_tag()
    });
    let crate_result = SphinxPacket::from_bytes(packet).and_then(|parsed| parsed.process(secret));

    let mut out = packet.to_vec();
    let fast_result = fast::check_len(packet).and_then(|()| {
        let expanded = Expanded::new(&secret.to_bytes(), fast::alpha_of(packet));
        if let Some(tag) = crate_tag {
            if tag != *expanded.replay_tag() {
                return Ok(Err("replay tags differ".to_string()));
            }
        }
        if !expanded.verify_header_mac(&packet[..HEADER_SIZE]) {
            return Err(fast::Reject::Mac);
        }
        expanded.unwrap_in_place(&mut out).map(Ok)
    });

    match (crate_result, fast_result) {
        (_, Ok(Err(message))) => Err(message),
        (Err(error), Err(reject)) => {
            let crate_class = crate_reject_class(error.kind());
            let fast_class = fast_reject_class(reject);
            // The fast path checks the length before anything else; the crate checks what its
            // parser needs, then the MAC and routing, then Lioness's length. On a packet too
            // short for Lioness (which the framing never delivers) the crate may therefore name
            // any reason; everywhere else the reasons must match.
            if crate_class == fast_class || fast_class == RejectClass::Length {
                Ok((Agreement::Rejected, out))
            } else {
                Err(format!(
                    "both rejected, for different reasons: the crate {crate_class:?} ({error}), fast {fast_class:?} ({reject:?})"
                ))
            }
        }
        (Ok(_), Err(reject)) => Err(format!("the crate accepted, fast rejected: {reject:?}")),
        (Err(error), Ok(Ok(hop))) => Err(format!(
            "the crate rejected ({error}), fast accepted: {hop:?}"
        )),
        (Ok(processed), Ok(Ok(hop))) => match (processed.data, hop) {
            (
                ProcessedPacketData::ForwardHop {
                    next_hop_packet,
                    next_hop_address,
                    delay,
                },
                Hop::Forward {
                    next_hop_address: fast_address,
                    delay_nanos,
                },
            ) => {
                if next_hop_address.as_bytes() != &fast_address {
                    return Err("next-hop addresses differ".to_string());
                }
                if delay.to_nanos() != delay_nanos {
                    return Err("delays differ".to_string());
                }
                let header = next_hop_packet.header.to_bytes();
                if header[..fast::ALPHA_LEN] != out[..fast::ALPHA_LEN] {
                    return Err("blinded group elements differ".to_string());
                }
                if header[..] != out[..HEADER_SIZE] {
                    return Err("next-hop headers differ".to_string());
                }
                if next_hop_packet.payload.as_bytes() != &out[HEADER_SIZE..] {
                    return Err("next-hop payloads differ".to_string());
                }
                Ok((Agreement::Forward, out))
            }
            (
                ProcessedPacketData::FinalHop {
                    destination,
                    identifier,
                    payload,
                },
                Hop::Final {
                    destination: fast_destination,
                    identifier: fast_identifier,
                },
            ) => {
                if destination.as_bytes_ref() != &fast_destination {
                    return Err("destinations differ".to_string());
                }
                if identifier != fast_identifier {
                    return Err("identifiers differ".to_string());
                }
                if payload.as_bytes() != &out[HEADER_SIZE..] {
                    return Err("final payloads differ".to_string());
                }
                Ok((Agreement::Final, out))
            }
            (_, hop) => Err(format!("hop kinds differ: fast says {hop:?}")),
        },
    }
}

/// Why a packet was rejected, in classes both implementations can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectClass {
    /// Too short for a header and a payload Lioness can unwrap.
    Length,
    /// The header MAC did not verify.
    Mac,
    /// The routing information named neither a forward nor a final hop.
    Routing,
    /// A reason the other implementation has no counterpart for.
    Other,
}

/// The class of a rejection by the crate. A short packet is `InvalidPacket` from parsing, or
/// `InvalidPayload` from Lioness after the MAC; the fast path rejects both before any work.
pub fn crate_reject_class(kind: sphinx_packet::ErrorKind) -> RejectClass {
    use sphinx_packet::ErrorKind;
    match kind {
        ErrorKind::InvalidPacket | ErrorKind::InvalidPayload => RejectClass::Length,
        ErrorKind::InvalidHeader => RejectClass::Mac,
        ErrorKind::InvalidRouting => RejectClass::Routing,
        ErrorKind::InvalidSURB => RejectClass::Other,
    }
}

/// The class of a rejection by the fast path.
pub fn fast_reject_class(reject: fast::Reject) -> RejectClass {
    match reject {
        fast::Reject::TooShort => RejectClass::Length,
        fast::Reject::Mac => RejectClass::Mac,
        fast::Reject::RoutingFlag => RejectClass::Routing,
    }
}

/// Builds a packet as a hostile sender could: any group element `alpha` (twist points,
/// small-order points, non-canonical encodings), the routing information `routing_plain` in
/// the clear (flag, version, address, delay, next MAC, next routing), a header MAC that
/// verifies under `secret`, and `payload` as is. The shared secret comes from the crate's own
/// ladder (`StaticSecret::diffie_hellman`), so the crate accepts the header whatever `alpha`
/// is, and the two implementations can be compared past the MAC.
///
/// Keep `routing_plain[1]` zero: the crate debug-asserts that the first version byte is zero.
pub fn craft_packet(
    secret: &StaticSecret,
    alpha: [u8; 32],
    routing_plain: &[u8; ENCRYPTED_ROUTING_INFO_SIZE],
    payload: &[u8],
) -> Vec<u8> {
    let shared = secret.diffie_hellman(&PublicKey::from(alpha));
    let hkdf = hkdf::Hkdf::<Sha256>::new(Some(EXPANDED_SHARED_SECRET_HKDF_SALT), shared.as_bytes());
    let mut keys = [0u8; EXPANDED_SHARED_SECRET_LENGTH];
    // A constant length well within HKDF's limit.
    assert!(hkdf
        .expand(EXPANDED_SHARED_SECRET_HKDF_INFO, &mut keys)
        .is_ok());
    let mut routing = [0u8; STREAM_CIPHER_OUTPUT_LENGTH];
    routing[..ENCRYPTED_ROUTING_INFO_SIZE].copy_from_slice(routing_plain);
    let mut stream_key = [0u8; STREAM_CIPHER_KEY_SIZE];
    stream_key.copy_from_slice(&keys[..STREAM_CIPHER_KEY_SIZE]);
    let mut cipher = ctr::Ctr64BE::<aes::Aes128>::new((&stream_key).into(), (&[0u8; 16]).into());
    cipher.apply_keystream(&mut routing);
    let mac_key = &keys[STREAM_CIPHER_KEY_SIZE..][..HEADER_INTEGRITY_MAC_SIZE];
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(mac_key) else {
        unreachable!("HMAC takes keys of any length");
    };
    mac.update(&routing[..ENCRYPTED_ROUTING_INFO_SIZE]);
    let tag = mac.finalize().into_bytes();
    let mut packet = Vec::with_capacity(HEADER_SIZE + payload.len());
    packet.extend_from_slice(&alpha);
    packet.extend_from_slice(&tag[..HEADER_INTEGRITY_MAC_SIZE]);
    packet.extend_from_slice(&routing[..ENCRYPTED_ROUTING_INFO_SIZE]);
    packet.extend_from_slice(payload);
    packet
}
