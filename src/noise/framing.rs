//! The Noise message framing of nym-noise (pure): an 8-byte header, then the payload.
//!
//! ```text
//! 0       1       2       3       5          8
//! +-------+-------+-------+-------+----------+
//! |version|pattern| type  |  len  | reserved |   then `len` bytes
//! +-------+-------+-------+-------+----------+
//! ```
//!
//! `version` is 1, `pattern` 1 (XKpsk3), `type` 0 (handshake) or 1 (data), `len` big-endian.
//! The reserved bytes are written as zeros and, as nym-noise does, not checked on reading.
//! Checked first (smoltcp style): a header is refused before any payload is buffered when
//! its version, pattern or type is unknown, or when a handshake message claims more than
//! [`HANDSHAKE_LEN_MAX`] bytes. A data message carries at most [`DATA_PLAINTEXT_MAX`]
//! plaintext bytes (the payload is that plus the 16-byte AES-GCM tag, within `u16`).

/// Header bytes.
pub const HEADER_LEN: usize = 8;
/// The only version spoken.
pub const VERSION_1: u8 = 1;
/// `Noise_XKpsk3_25519_AESGCM_SHA256`.
pub const PATTERN_XKPSK3: u8 = 1;
/// The AEAD tag on every transport message.
pub const TAG_LEN: usize = 16;
/// Longest payload of one message.
pub const PAYLOAD_LEN_MAX: usize = u16::MAX as usize;
/// Most plaintext one data message carries.
pub const DATA_PLAINTEXT_MAX: usize = PAYLOAD_LEN_MAX - TAG_LEN;
/// Longest handshake message accepted (nym-noise reads handshakes into a 1 KiB buffer; an
/// XK message is at most 96 bytes plus its payload).
pub const HANDSHAKE_LEN_MAX: usize = 1024;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A handshake message.
    Handshake = 0,
    /// A transport (data) message.
    Data = 1,
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What follows.
    pub kind: MessageKind,
    /// Payload bytes that follow.
    pub len: u16,
}

/// Why bytes are not a Noise message; each is counted apart by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A version other than 1.
    #[error("unknown noise version {0}")]
    Version(u8),
    /// A pattern other than XKpsk3.
    #[error("unknown or unsupported noise pattern {0}")]
    Pattern(u8),
    /// A message type other than handshake or data.
    #[error("unknown noise message type {0}")]
    Kind(u8),
    /// A handshake message longer than [`HANDSHAKE_LEN_MAX`].
    #[error("a handshake message of {0} bytes (at most {HANDSHAKE_LEN_MAX})")]
    HandshakeTooLong(u16),
    /// A data message too short to hold its tag.
    #[error("a data message of {0} bytes, shorter than its tag")]
    DataTooShort(u16),
    /// A message longer than this deframer takes (a data message where only handshake
    /// messages may come).
    #[error("a message of {0} bytes where at most a handshake message may come")]
    TooLong(u16),
}

impl Header {
    /// The 8 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let len = self.len.to_be_bytes();
        [
            VERSION_1,
            PATTERN_XKPSK3,
            self.kind as u8,
            len[0],
            len[1],
            0,
            0,
            0,
        ]
    }

    /// Read a header from the start of `bytes`: None until 8 bytes are there.
    pub fn decode(bytes: &[u8]) -> Result<Option<Header>, FrameError> {
        let Some(head) = bytes.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if head[0] != VERSION_1 {
            return Err(FrameError::Version(head[0]));
        }
        if head[1] != PATTERN_XKPSK3 {
            return Err(FrameError::Pattern(head[1]));
        }
        let kind = match head[2] {
            0 => MessageKind::Handshake,
            1 => MessageKind::Data,
            other => return Err(FrameError::Kind(other)),
        };
        let len = u16::from_be_bytes([head[3], head[4]]);
        match kind {
            MessageKind::Handshake if usize::from(len) > HANDSHAKE_LEN_MAX => {
                Err(FrameError::HandshakeTooLong(len))
            }
            MessageKind::Data if usize::from(len) < TAG_LEN => Err(FrameError::DataTooShort(len)),
            _ => Ok(Some(Header { kind, len })),
        }
    }
}

/// Cuts a byte stream into Noise messages in one buffer. It starts small and grows, only when
/// a checked header asks for it, to the longest message the peer has sent (at most a header
/// and the largest payload, [`PAYLOAD_LEN_MAX`]): nothing a peer sends can make it grow past
/// that, and a peer that sends small messages costs small buffers.
pub struct Deframer {
    buffer: Vec<u8>,
    /// The most `buffer` may grow to.
    limit: usize,
    filled: usize,
    /// Bytes of the message handed out last, dropped at the next call.
    consumed: usize,
}

impl Default for Deframer {
    fn default() -> Self {
        Deframer::new()
    }
}

/// Bytes a deframer starts with: a few packets' worth.
const INITIAL_BUFFER: usize = 4096;

impl Deframer {
    /// An empty deframer for any message.
    pub fn new() -> Deframer {
        Deframer::with_limit(HEADER_LEN + PAYLOAD_LEN_MAX)
    }

    /// An empty deframer for handshake messages only (an initiator's: a responder never sends
    /// data); a longer message is an error.
    pub fn for_handshake() -> Deframer {
        Deframer::with_limit(HEADER_LEN + HANDSHAKE_LEN_MAX)
    }

    fn with_limit(limit: usize) -> Deframer {
        Deframer {
            buffer: vec![0u8; INITIAL_BUFFER.min(limit)],
            limit,
            filled: 0,
            consumed: 0,
        }
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buffer.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
    }

    /// Where to read more bytes into (never empty while a message is incomplete, once
    /// [`Self::next_message`] has seen its header).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buffer[self.filled..]
    }

    /// `count` bytes were read into [`Self::spare_mut`].
    pub fn advance(&mut self, count: usize) {
        self.filled = (self.filled + count).min(self.buffer.len());
    }

    /// Copy in what fits of `bytes`; how much was taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare_mut();
        let n = spare.len().min(bytes.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.advance(n);
        n
    }

    /// Bytes the buffer holds room for now.
    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole message (its header and payload), if one is buffered. An error means
    /// the stream is not Noise as spoken here and must be closed.
    pub fn next_message(&mut self) -> Result<Option<(Header, &[u8])>, FrameError> {
        self.compact();
        let Some(header) = Header::decode(&self.buffer[..self.filled])? else {
            return Ok(None);
        };
        let end = HEADER_LEN + usize::from(header.len);
        if end > self.limit {
            return Err(FrameError::TooLong(header.len));
        }
        if self.filled < end {
            if self.buffer.len() < end {
                self.buffer.resize(end, 0);
            }
            return Ok(None);
        }
        self.consumed = end;
        Ok(Some((header, &self.buffer[HEADER_LEN..end])))
    }
}

/// How many data messages `plaintext_len` bytes take, each of at most
/// [`DATA_PLAINTEXT_MAX`] plaintext bytes (a writer's batch goes in as few as fit).
pub fn data_messages_for(plaintext_len: usize) -> usize {
    plaintext_len.div_ceil(DATA_PLAINTEXT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_unknown_ones_are_refused_before_their_payload() {
        for (kind, len) in [(MessageKind::Handshake, 48), (MessageKind::Data, 65_535)] {
            let header = Header { kind, len };
            let bytes = header.encode();
            assert_eq!(bytes[5..], [0, 0, 0]);
            assert_eq!(Header::decode(&bytes), Ok(Some(header)));
            assert_eq!(Header::decode(&bytes[..7]), Ok(None));
        }
        let good = Header {
            kind: MessageKind::Data,
            len: 100,
        }
        .encode();
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            Header::decode(&b)
        };
        assert_eq!(with(0, 2), Err(FrameError::Version(2)));
        assert_eq!(
            with(1, 2),
            Err(FrameError::Pattern(2)),
            "IKpsk2 is not spoken on mix links"
        );
        assert_eq!(with(2, 7), Err(FrameError::Kind(7)));
        assert_eq!(
            with(5, 9).map(|h| h.map(|h| h.len)),
            Ok(Some(100)),
            "reserved bytes are not checked"
        );
        let long_handshake = Header {
            kind: MessageKind::Handshake,
            len: 1025,
        }
        .encode();
        assert_eq!(
            Header::decode(&long_handshake),
            Err(FrameError::HandshakeTooLong(1025))
        );
        let short_data = Header {
            kind: MessageKind::Data,
            len: 15,
        }
        .encode();
        assert_eq!(
            Header::decode(&short_data),
            Err(FrameError::DataTooShort(15))
        );
    }

    #[test]
    fn a_stream_is_cut_into_messages_whatever_the_read_sizes() {
        let mut stream = Vec::new();
        let messages: Vec<(MessageKind, Vec<u8>)> = vec![
            (MessageKind::Handshake, vec![1; 48]),
            (MessageKind::Data, vec![2; 16]),
            (MessageKind::Data, vec![3; PAYLOAD_LEN_MAX]),
            (MessageKind::Data, vec![4; 2_000]),
        ];
        for (kind, payload) in &messages {
            let header = Header {
                kind: *kind,
                len: payload.len() as u16,
            };
            stream.extend_from_slice(&header.encode());
            stream.extend_from_slice(payload);
        }
        for chunk in [1usize, 7, 8, 9, 1000, 70_000] {
            let mut d = Deframer::new();
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let end = (at + chunk).min(stream.len());
                at += d.push(&stream[at..end]);
                while let Some((header, payload)) = d.next_message().unwrap() {
                    got.push((header.kind, payload.to_vec()));
                }
            }
            assert_eq!(got, messages, "chunks of {chunk}");
        }
    }

    #[test]
    fn junk_is_an_error_and_the_buffer_grows_only_to_the_messages_sent() {
        let mut d = Deframer::new();
        assert_eq!(d.capacity(), INITIAL_BUFFER);
        d.push(b"GET / HTTP/1.1\r\n");
        assert_eq!(d.next_message(), Err(FrameError::Version(b'G')));
        assert_eq!(d.capacity(), INITIAL_BUFFER, "junk never grows it");
        let mut d = Deframer::new();
        let big = Header {
            kind: MessageKind::Data,
            len: 10_000,
        };
        d.push(&big.encode());
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.capacity(), HEADER_LEN + 10_000);
        assert!(!d.spare_mut().is_empty());
        let mut h = Deframer::for_handshake();
        h.push(&big.encode());
        assert_eq!(h.next_message(), Err(FrameError::TooLong(10_000)));
        assert!(h.capacity() <= HEADER_LEN + HANDSHAKE_LEN_MAX);
        assert_eq!(data_messages_for(0), 0);
        assert_eq!(data_messages_for(DATA_PLAINTEXT_MAX), 1);
        assert_eq!(data_messages_for(DATA_PLAINTEXT_MAX + 1), 2);
    }
}
