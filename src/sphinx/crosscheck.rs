//! Runs one packet through both the `sphinx-packet` crate's `process()` and [`super::fast`],
//! and says whether they agree: the same next-hop packet bytes, address, delay and replay tag
//! (or destination, identifier and payload for a final hop), or both rejecting.
//!
//! For the differential test, the fuzz target and the module tests; the node never calls it.
//! It allocates freely and costs three crate multiplications per packet.

use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::StaticSecret;

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
        (Err(_), Err(_)) => Ok((Agreement::Rejected, out)),
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
