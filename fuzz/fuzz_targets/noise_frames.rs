//! Arbitrary bytes, fed in arbitrary chunks, through the Noise `Deframer`; the messages it
//! yields must equal a one-shot parse of the whole stream with `Header::decode`, up to the
//! first error, and no chunking may change that; its buffer never passes the largest message.
//!
//! Input layout: `[control length % 16][control bytes][stream]`; control bytes choose the
//! chunk lengths in turn (none: one chunk).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nym_mixnode::noise::framing::{
    Deframer, FrameError, Header, MessageKind, HEADER_LEN, PAYLOAD_LEN_MAX,
};

/// Messages of the whole stream, parsed at once, and the error that ended it, if any.
fn one_shot(stream: &[u8]) -> (Vec<(MessageKind, Vec<u8>)>, Option<FrameError>) {
    let mut messages = Vec::new();
    let mut rest = stream;
    loop {
        match Header::decode(rest) {
            Err(error) => return (messages, Some(error)),
            Ok(None) => return (messages, None),
            Ok(Some(header)) => {
                let end = HEADER_LEN + usize::from(header.len);
                if rest.len() < end {
                    return (messages, None);
                }
                messages.push((header.kind, rest[HEADER_LEN..end].to_vec()));
                rest = &rest[end..];
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control_len, rest)) = data.split_first() else {
        return;
    };
    let control_len = usize::from(control_len % 16).min(rest.len());
    let (control, stream) = rest.split_at(control_len);
    let (expected, expected_error) = one_shot(stream);

    let mut deframer = Deframer::new();
    let mut got = Vec::new();
    let mut error = None;
    let mut at = 0;
    let mut turn = 0;
    'feed: while at < stream.len() {
        let chunk = match control.get(turn % control.len().max(1)) {
            Some(&c) => usize::from(c).max(1) * 37,
            None => stream.len(),
        };
        turn += 1;
        let end = (at + chunk).min(stream.len());
        let taken = deframer.push(&stream[at..end]);
        at += taken;
        loop {
            match deframer.next_message() {
                Ok(Some((header, payload))) => {
                    assert_eq!(usize::from(header.len), payload.len());
                    got.push((header.kind, payload.to_vec()));
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        assert!(deframer.capacity() <= HEADER_LEN + PAYLOAD_LEN_MAX);
        assert!(
            taken > 0 || at == stream.len(),
            "the deframer stopped taking bytes"
        );
    }
    assert_eq!(got, expected);
    if error.is_some() || at == stream.len() {
        assert_eq!(error, expected_error);
    }
});
