//! One Noise link's cryptography (pure: bytes in, bytes out; no socket, no clock): the
//! `Noise_XKpsk3_25519_AESGCM_SHA256` handshake and the transport that follows, through the
//! `snow` crate, with the message framing of [`super::framing`].
//!
//! XK takes three messages, and every payload is empty (as nym-noise sends them):
//!
//! ```text
//! initiator -> responder   e, es            48 bytes
//! responder -> initiator   e, ee            48 bytes
//! initiator -> responder   s, se, psk       64 bytes
//! ```
//!
//! Each side's work, in X25519 scalar multiplications: the initiator makes an ephemeral key
//! and `es` (2), reads `ee` (1), writes `se` (1); the responder reads `es` (1), makes an
//! ephemeral key and `ee` (2), reads `se` (1). A first message of the right length but made
//! of junk costs the responder one multiplication before its tag fails; nothing shorter,
//! longer (past [`super::framing::HANDSHAKE_LEN_MAX`]) or with another header costs any.
//!
//! A link carries data one way only (mixnet links never answer on the same connection), so a
//! [`Transport`] is used by one task: the reader of an inbound connection or the writer of an
//! outbound one.

use snow::{HandshakeState, TransportState};

use super::framing::{
    Header, MessageKind, DATA_PLAINTEXT_MAX, HANDSHAKE_LEN_MAX, HEADER_LEN, TAG_LEN,
};

/// The pattern, as snow names it.
pub const PATTERN: &str = "Noise_XKpsk3_25519_AESGCM_SHA256";
/// Where the PSK is mixed in (after the third message).
const PSK_POSITION: u8 = 3;
/// A handshake message's least length: an ephemeral key and an empty payload's tag.
const HANDSHAKE_LEN_MIN: usize = 32 + TAG_LEN;

/// Why a handshake failed; each is counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A data message arrived before the handshake finished.
    #[error("a data message during the handshake")]
    NotHandshake,
    /// A message too short to be an XK handshake message.
    #[error("a handshake message of {0} bytes, too short")]
    TooShort(usize),
    /// The message did not check (wrong key, wrong PSK, junk).
    #[error("the handshake message did not check")]
    Crypto,
}

/// A handshake under way.
pub struct Handshake {
    state: HandshakeState,
}

fn builder<'a>() -> snow::Builder<'a> {
    // The pattern is a constant that snow knows: parsing cannot fail.
    snow::Builder::new(PATTERN.parse().expect("a pattern snow supports"))
}

impl Handshake {
    /// The initiator of a link to the responder whose Noise public key is `remote`.
    pub fn initiator(local_private: &[u8; 32], remote: &[u8; 32]) -> Handshake {
        Handshake::initiator_with_psk(local_private, remote, &super::psk_v1(remote))
    }

    /// An initiator with a PSK of its own choosing (tests of a peer with the wrong PSK).
    pub fn initiator_with_psk(
        local_private: &[u8; 32],
        remote: &[u8; 32],
        psk: &[u8; 32],
    ) -> Handshake {
        let state = builder()
            .local_private_key(local_private)
            .remote_public_key(remote)
            .psk(PSK_POSITION, psk)
            .build_initiator()
            .expect("every key and the psk are given");
        Handshake { state }
    }

    /// The responder of a link; `local_public` is this node's announced Noise key (the PSK
    /// hashes it).
    pub fn responder(local_private: &[u8; 32], local_public: &[u8; 32]) -> Handshake {
        let psk = super::psk_v1(local_public);
        let state = builder()
            .local_private_key(local_private)
            .psk(PSK_POSITION, &psk)
            .build_responder()
            .expect("every key and the psk are given");
        Handshake { state }
    }

    /// Whether this side writes the next message.
    pub fn is_my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    /// Whether all three messages have passed.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// Append this side's next message, header included, to `out`.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> Result<(), HandshakeError> {
        let mut message = [0u8; 128];
        let len = self
            .state
            .write_message(&[], &mut message)
            .map_err(|_| HandshakeError::Crypto)?;
        let header = Header {
            kind: MessageKind::Handshake,
            len: len as u16,
        };
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&message[..len]);
        Ok(())
    }

    /// Read the peer's next message (as the deframer cut it).
    pub fn read(&mut self, header: Header, payload: &[u8]) -> Result<(), HandshakeError> {
        if header.kind != MessageKind::Handshake {
            return Err(HandshakeError::NotHandshake);
        }
        if payload.len() < HANDSHAKE_LEN_MIN {
            return Err(HandshakeError::TooShort(payload.len()));
        }
        let mut scratch = [0u8; HANDSHAKE_LEN_MAX];
        self.state
            .read_message(payload, &mut scratch)
            .map(|_| ())
            .map_err(|_| HandshakeError::Crypto)
    }

    /// The transport, once [`Self::is_finished`].
    pub fn into_transport(self) -> Result<Transport, HandshakeError> {
        self.state
            .into_transport_mode()
            .map(|state| Transport { state })
            .map_err(|_| HandshakeError::Crypto)
    }
}

/// Why a data message did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// A handshake message after the handshake.
    #[error("a handshake message after the handshake")]
    NotData,
    /// The tag did not check (tampered, replayed, or another key).
    #[error("a data message that does not decrypt")]
    Decrypt,
}

/// The transport of a finished handshake: one direction's cipher state in use.
pub struct Transport {
    state: TransportState,
}

impl Transport {
    /// Append `plaintext` to `out` as data messages, each of at most
    /// [`DATA_PLAINTEXT_MAX`] plaintext bytes: a batch takes as few messages as fit.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        for chunk in plaintext.chunks(DATA_PLAINTEXT_MAX) {
            let start = out.len();
            let len = chunk.len() + TAG_LEN;
            out.resize(start + HEADER_LEN + len, 0);
            let header = Header {
                kind: MessageKind::Data,
                len: len as u16,
            };
            out[start..start + HEADER_LEN].copy_from_slice(&header.encode());
            let written = self
                .state
                .write_message(chunk, &mut out[start + HEADER_LEN..])
                .map_err(|_| TransportError::Decrypt)?;
            debug_assert_eq!(written, len);
        }
        Ok(())
    }

    /// Open one data message into `plaintext` (at least the payload less its tag long); the
    /// plaintext bytes written.
    pub fn open(
        &mut self,
        header: Header,
        payload: &[u8],
        plaintext: &mut [u8],
    ) -> Result<usize, TransportError> {
        if header.kind != MessageKind::Data {
            return Err(TransportError::NotData);
        }
        self.state
            .read_message(payload, plaintext)
            .map_err(|_| TransportError::Decrypt)
    }
}

/// The reading end of a transport: opens each data message the deframer cuts into a
/// plaintext buffer that grows to the longest message opened (at most
/// [`DATA_PLAINTEXT_MAX`]), and hands the plaintext out in pieces of any size. The shard
/// driver's async reader and the benchmark's blocking one both read through it.
pub struct Opener {
    transport: Transport,
    deframer: super::framing::Deframer,
    plain: Vec<u8>,
    start: usize,
    end: usize,
}

impl Opener {
    /// After a handshake; `deframer` holds what came after its last message.
    pub fn new(transport: Transport, deframer: super::framing::Deframer) -> Opener {
        Opener {
            transport,
            deframer,
            plain: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// Copy opened plaintext into `buf`, opening the next buffered message when none is left;
    /// 0 when more ciphertext is needed (read it into [`Self::spare_mut`]). An error means the
    /// link is broken and must close.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, super::Failure> {
        if self.start == self.end {
            let next = self
                .deframer
                .next_message()
                .map_err(|e| super::Failure::of_frame(e, false))?;
            let Some((header, payload)) = next else {
                return Ok(0);
            };
            let needed = payload.len().saturating_sub(TAG_LEN);
            if self.plain.len() < needed {
                self.plain.resize(needed, 0);
            }
            self.end = self
                .transport
                .open(header, payload, &mut self.plain)
                .map_err(|e| match e {
                    TransportError::Decrypt => super::Failure::Decrypt,
                    TransportError::NotData => super::Failure::BadMessage,
                })?;
            self.start = 0;
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.plain[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }

    /// Where to read more ciphertext.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.deframer.spare_mut()
    }

    /// `count` bytes were read into [`Self::spare_mut`].
    pub fn advance(&mut self, count: usize) {
        self.deframer.advance(count);
    }

    /// Bytes its two buffers hold room for.
    pub fn buffer_bytes(&self) -> usize {
        self.deframer.capacity() + self.plain.len()
    }
}

/// An X25519 key pair for Noise from 32 random bytes (the private key is clamped by X25519
/// itself, as snow and nym-noise use it).
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private)).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::framing::{Deframer, FrameError, PATTERN_XKPSK3};
    use super::*;

    struct Keys {
        private: [u8; 32],
        public: [u8; 32],
    }

    fn keys(seed: u8) -> Keys {
        let private = [seed; 32];
        Keys {
            private,
            public: public_key(&private),
        }
    }

    /// Carry every message from one side to the other until both are done.
    fn handshake(
        mut initiator: Handshake,
        mut responder: Handshake,
    ) -> Result<(Transport, Transport), HandshakeError> {
        let mut wire = Vec::new();
        let mut messages = Vec::new();
        while !(initiator.is_finished() && responder.is_finished()) {
            let (from, to) = if initiator.is_my_turn() {
                (&mut initiator, &mut responder)
            } else {
                (&mut responder, &mut initiator)
            };
            wire.clear();
            from.write_next(&mut wire)?;
            messages.push(wire.len() - HEADER_LEN);
            let mut d = Deframer::new();
            d.push(&wire);
            let (header, payload) = d.next_message().unwrap().unwrap();
            to.read(header, payload)?;
        }
        assert_eq!(messages, [48, 48, 64]);
        Ok((initiator.into_transport()?, responder.into_transport()?))
    }

    #[test]
    fn a_handshake_then_data_both_sides_agree() {
        let (i, r) = (keys(1), keys(2));
        let (mut tx, mut rx) = handshake(
            Handshake::initiator(&i.private, &r.public),
            Handshake::responder(&r.private, &r.public),
        )
        .unwrap();
        let batch: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        tx.seal(&batch, &mut wire).unwrap();
        assert_eq!(
            wire.len(),
            batch.len() + 3 * (HEADER_LEN + TAG_LEN),
            "three messages"
        );
        let mut d = Deframer::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut plain = vec![0u8; DATA_PLAINTEXT_MAX];
        while at < wire.len() {
            at += d.push(&wire[at..]);
            while let Some((header, payload)) = d.next_message().unwrap() {
                let n = rx.open(header, payload, &mut plain).unwrap();
                got.extend_from_slice(&plain[..n]);
            }
        }
        assert_eq!(got, batch);
        // The same through an Opener, in small pieces, with small buffers for small messages.
        let mut small = Vec::new();
        for chunk in batch[..3000].chunks(1000) {
            tx.seal(chunk, &mut small).unwrap();
        }
        let mut opener = Opener::new(rx, Deframer::new());
        let mut out = Vec::new();
        let mut at = 0;
        let mut piece = [0u8; 333];
        loop {
            let n = opener.read(&mut piece).unwrap();
            if n > 0 {
                out.extend_from_slice(&piece[..n]);
                continue;
            }
            if at == small.len() {
                break;
            }
            let spare = opener.spare_mut();
            let take = spare.len().min(small.len() - at);
            spare[..take].copy_from_slice(&small[at..at + take]);
            opener.advance(take);
            at += take;
        }
        assert_eq!(out, batch[..3000]);
        assert!(
            opener.buffer_bytes() <= 4096 + 1000,
            "{}",
            opener.buffer_bytes()
        );
    }

    #[test]
    fn the_wrong_responder_key_or_psk_fails_the_handshake() {
        let (i, r, other) = (keys(1), keys(2), keys(3));
        // The initiator thinks the responder has another key: `es` differs, the first
        // message's tag fails at once.
        let wrong_key = handshake(
            Handshake::initiator(&i.private, &other.public),
            Handshake::responder(&r.private, &r.public),
        );
        assert_eq!(wrong_key.err(), Some(HandshakeError::Crypto));
        // Right key, wrong PSK: the responder announces (hashes) another key than it holds.
        let wrong_psk = handshake(
            Handshake::initiator(&i.private, &r.public),
            Handshake::responder(&r.private, &other.public),
        );
        assert_eq!(wrong_psk.err(), Some(HandshakeError::Crypto));
    }

    #[test]
    fn junk_short_or_data_messages_fail_the_handshake() {
        let r = keys(2);
        let mut responder = Handshake::responder(&r.private, &r.public);
        let junk = Header {
            kind: MessageKind::Handshake,
            len: 48,
        };
        assert_eq!(
            responder.read(junk, &[0x5a; 48]),
            Err(HandshakeError::Crypto)
        );
        let mut responder = Handshake::responder(&r.private, &r.public);
        assert_eq!(
            responder.read(junk, &[0x5a; 20]),
            Err(HandshakeError::TooShort(20))
        );
        let data = Header {
            kind: MessageKind::Data,
            len: 48,
        };
        assert_eq!(
            responder.read(data, &[0; 48]),
            Err(HandshakeError::NotHandshake)
        );
        // Another pattern never reaches the handshake: the header is refused.
        let mut ik = Header {
            kind: MessageKind::Handshake,
            len: 48,
        }
        .encode();
        ik[1] = PATTERN_XKPSK3 + 1;
        let mut d = Deframer::new();
        d.push(&ik);
        assert_eq!(d.next_message().err(), Some(FrameError::Pattern(2)));
    }

    #[test]
    fn a_tampered_replayed_or_handshake_message_does_not_open() {
        let (i, r) = (keys(1), keys(2));
        let (mut tx, mut rx) = handshake(
            Handshake::initiator(&i.private, &r.public),
            Handshake::responder(&r.private, &r.public),
        )
        .unwrap();
        let mut wire = Vec::new();
        tx.seal(b"one packet", &mut wire).unwrap();
        let header = Header::decode(&wire).unwrap().unwrap();
        let mut plain = [0u8; 64];
        let mut tampered = wire[HEADER_LEN..].to_vec();
        tampered[3] ^= 1;
        assert_eq!(
            rx.open(header, &tampered, &mut plain),
            Err(TransportError::Decrypt)
        );
        // The failed message did not move the nonce: the real one still opens, once.
        assert_eq!(rx.open(header, &wire[HEADER_LEN..], &mut plain), Ok(10));
        assert_eq!(
            rx.open(header, &wire[HEADER_LEN..], &mut plain),
            Err(TransportError::Decrypt),
            "a replayed message has a spent nonce"
        );
        let handshake_header = Header {
            kind: MessageKind::Handshake,
            len: header.len,
        };
        assert_eq!(
            rx.open(handshake_header, &wire[HEADER_LEN..], &mut plain),
            Err(TransportError::NotData)
        );
    }
}
