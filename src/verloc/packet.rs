//! The VerLoc wire format (pure): the 104-byte echo packet and the 168-byte reply.
//!
//! ```text
//! echo  (104): sequence u64 BE (8) | sender Ed25519 public key (32) | signature (64)
//!              the signature is the sender's, over sequence || key (the first 40 bytes)
//! reply (168): echo (104) | responder's signature (64) over those 104 bytes
//! ```
//!
//! Frames have no header and no length: both sides know the sizes. These are the bytes Nym's
//! VerLoc (`common/mixnode-common/src/verloc/packet.rs`, v0.11.0) signs and sends.
//!
//! Checking comes before trusting: [`check_echo`] verifies an echo before the listener signs
//! anything, and [`check_reply`] accepts a reply only if its echo is byte for byte the one we
//! sent and the responder's signature verifies with the key we expected. A failure is a small
//! `Copy` reason, which is also the metric label.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Bytes of the sequence number.
pub const SEQUENCE_LENGTH: usize = 8;
/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_LENGTH: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LENGTH: usize = 64;
/// Offset of the sender's key in an echo.
pub const SENDER_OFFSET: usize = SEQUENCE_LENGTH;
/// Offset of the sender's signature in an echo.
pub const ECHO_SIGNATURE_OFFSET: usize = SENDER_OFFSET + PUBLIC_KEY_LENGTH;
/// Bytes of an echo packet.
pub const ECHO_LENGTH: usize = ECHO_SIGNATURE_OFFSET + SIGNATURE_LENGTH;
/// Offset of the responder's signature in a reply.
pub const REPLY_SIGNATURE_OFFSET: usize = ECHO_LENGTH;
/// Bytes of a reply packet.
pub const REPLY_LENGTH: usize = REPLY_SIGNATURE_OFFSET + SIGNATURE_LENGTH;

const _: () = assert!(ECHO_LENGTH == 104);
const _: () = assert!(REPLY_LENGTH == 168);

/// An echo packet as it goes on the wire.
pub type EchoBytes = [u8; ECHO_LENGTH];
/// A reply packet as it goes on the wire.
pub type ReplyBytes = [u8; REPLY_LENGTH];

/// Why the listener refused an echo (the connection is then closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EchoReject {
    /// The sender's key is not a valid Ed25519 point.
    BadSenderKey,
    /// The sender's signature over sequence || key does not verify.
    BadSignature,
}

impl EchoReject {
    /// Every reason, for counters.
    pub const ALL: [EchoReject; 2] = [EchoReject::BadSenderKey, EchoReject::BadSignature];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            EchoReject::BadSenderKey => "bad_sender_key",
            EchoReject::BadSignature => "bad_signature",
        }
    }
}

/// Why a reply is not a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyReject {
    /// The echo part differs from the echo we sent.
    EchoMismatch,
    /// The responder's signature does not verify with the key the topology gave for it.
    BadSignature,
}

impl ReplyReject {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            ReplyReject::EchoMismatch => "echo_mismatch",
            ReplyReject::BadSignature => "bad_reply_signature",
        }
    }
}

/// The 40 bytes an echo's sender signs: sequence (big-endian) || sender key.
fn echo_signed_part(sequence: u64, sender: &VerifyingKey) -> [u8; ECHO_SIGNATURE_OFFSET] {
    let mut part = [0u8; ECHO_SIGNATURE_OFFSET];
    part[..SEQUENCE_LENGTH].copy_from_slice(&sequence.to_be_bytes());
    part[SENDER_OFFSET..].copy_from_slice(sender.as_bytes());
    part
}

/// Build the echo packet with `sequence`, signed by `identity`.
pub fn build_echo(sequence: u64, identity: &SigningKey) -> EchoBytes {
    let signed = echo_signed_part(sequence, &identity.verifying_key());
    let signature = identity.sign(&signed);
    let mut echo = [0u8; ECHO_LENGTH];
    echo[..ECHO_SIGNATURE_OFFSET].copy_from_slice(&signed);
    echo[ECHO_SIGNATURE_OFFSET..].copy_from_slice(&signature.to_bytes());
    echo
}

/// The sequence number of an echo (unchecked).
pub fn echo_sequence(echo: &EchoBytes) -> u64 {
    let mut sequence = [0u8; SEQUENCE_LENGTH];
    sequence.copy_from_slice(&echo[..SEQUENCE_LENGTH]);
    u64::from_be_bytes(sequence)
}

/// Check an echo: its sender key is a valid point and its signature verifies with that key.
pub fn check_echo(echo: &EchoBytes) -> Result<(), EchoReject> {
    let mut key = [0u8; PUBLIC_KEY_LENGTH];
    key.copy_from_slice(&echo[SENDER_OFFSET..ECHO_SIGNATURE_OFFSET]);
    let sender = VerifyingKey::from_bytes(&key).map_err(|_| EchoReject::BadSenderKey)?;
    let mut signature = [0u8; SIGNATURE_LENGTH];
    signature.copy_from_slice(&echo[ECHO_SIGNATURE_OFFSET..]);
    sender
        .verify_strict(
            &echo[..ECHO_SIGNATURE_OFFSET],
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| EchoReject::BadSignature)
}

/// Answer an echo: check it, then append our signature over its 104 bytes.
pub fn answer_echo(echo: &EchoBytes, identity: &SigningKey) -> Result<ReplyBytes, EchoReject> {
    check_echo(echo)?;
    Ok(sign_reply(echo, identity))
}

/// The reply to `echo` signed by `identity`, without checking the echo (tests build forged
/// replies with it).
pub fn sign_reply(echo: &EchoBytes, identity: &SigningKey) -> ReplyBytes {
    let signature = identity.sign(echo);
    let mut reply = [0u8; REPLY_LENGTH];
    reply[..ECHO_LENGTH].copy_from_slice(echo);
    reply[REPLY_SIGNATURE_OFFSET..].copy_from_slice(&signature.to_bytes());
    reply
}

/// Check a reply to `sent` from the node whose identity key is `responder`: the echo part must
/// be exactly `sent` (which we signed ourselves) and the responder's signature must verify.
pub fn check_reply(
    reply: &ReplyBytes,
    sent: &EchoBytes,
    responder: &VerifyingKey,
) -> Result<(), ReplyReject> {
    if reply[..ECHO_LENGTH] != sent[..] {
        return Err(ReplyReject::EchoMismatch);
    }
    let mut signature = [0u8; SIGNATURE_LENGTH];
    signature.copy_from_slice(&reply[REPLY_SIGNATURE_OFFSET..]);
    responder
        .verify_strict(&reply[..ECHO_LENGTH], &Signature::from_bytes(&signature))
        .map_err(|_| ReplyReject::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn echo_layout() {
        let me = key(1);
        let echo = build_echo(0x0102_0304_0506_0708, &me);
        assert_eq!(&echo[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&echo[8..40], me.verifying_key().as_bytes());
        assert_eq!(echo_sequence(&echo), 0x0102_0304_0506_0708);
        assert_eq!(check_echo(&echo), Ok(()));
    }

    #[test]
    fn answered_echo_checks() {
        let (me, them) = (key(1), key(2));
        let echo = build_echo(7, &me);
        let reply = answer_echo(&echo, &them).unwrap();
        assert_eq!(&reply[..ECHO_LENGTH], &echo[..]);
        assert_eq!(check_reply(&reply, &echo, &them.verifying_key()), Ok(()));
    }

    #[test]
    fn echo_with_any_flipped_byte_is_refused() {
        let me = key(3);
        let echo = build_echo(42, &me);
        for i in 0..ECHO_LENGTH {
            let mut bad = echo;
            bad[i] ^= 0x01;
            assert!(check_echo(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn forged_reply_signature_is_refused() {
        let (me, them, forger) = (key(1), key(2), key(9));
        let echo = build_echo(7, &me);
        let forged = sign_reply(&echo, &forger);
        assert_eq!(
            check_reply(&forged, &echo, &them.verifying_key()),
            Err(ReplyReject::BadSignature)
        );
        let mut flipped = sign_reply(&echo, &them);
        flipped[REPLY_LENGTH - 1] ^= 0x80;
        assert_eq!(
            check_reply(&flipped, &echo, &them.verifying_key()),
            Err(ReplyReject::BadSignature)
        );
    }

    #[test]
    fn reply_to_another_echo_is_refused() {
        let (me, them) = (key(1), key(2));
        let sent = build_echo(7, &me);
        // Correctly signed by the responder, but for a different sequence number.
        let other = sign_reply(&build_echo(8, &me), &them);
        assert_eq!(
            check_reply(&other, &sent, &them.verifying_key()),
            Err(ReplyReject::EchoMismatch)
        );
    }
}
