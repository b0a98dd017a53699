//! Arbitrary bytes as what a peer sends on a Noise link: to a responder during its handshake
//! (mode 0), and as data after a real handshake (mode 1), cut by the `Deframer` as the shard
//! driver cuts them. Never a panic; a stream is refused at its first bad message and nothing
//! after it is read; plaintext never exceeds what the message could carry.
//!
//! Input layout: `[mode % 2][stream]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nym_mixnode::noise::framing::{Deframer, DATA_PLAINTEXT_MAX, TAG_LEN};
use nym_mixnode::noise::link::{public_key, Handshake, Transport};

const RESPONDER: [u8; 32] = [2; 32];
const INITIATOR: [u8; 32] = [1; 32];

fn transports() -> (Transport, Transport) {
    let responder_public = public_key(&RESPONDER);
    let mut i = Handshake::initiator(&INITIATOR, &responder_public);
    let mut r = Handshake::responder(&RESPONDER, &responder_public);
    let mut wire = Vec::new();
    while !(i.is_finished() && r.is_finished()) {
        let (from, to) = if i.is_my_turn() { (&mut i, &mut r) } else { (&mut r, &mut i) };
        wire.clear();
        from.write_next(&mut wire).unwrap();
        let mut d = Deframer::new();
        d.push(&wire);
        let (header, payload) = d.next_message().unwrap().unwrap();
        to.read(header, payload).unwrap();
    }
    (i.into_transport().unwrap(), r.into_transport().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut deframer = Deframer::new();
    let mut at = 0;
    if mode % 2 == 0 {
        let responder_public = public_key(&RESPONDER);
        let mut responder = Handshake::responder(&RESPONDER, &responder_public);
        'feed: while at < stream.len() {
            at += deframer.push(&stream[at..]);
            loop {
                match deframer.next_message() {
                    Ok(Some((header, payload))) => {
                        if responder.is_finished() || responder.is_my_turn() {
                            // Junk cannot get a responder this far; were it to, stop.
                            break 'feed;
                        }
                        if responder.read(header, payload).is_err() {
                            break 'feed;
                        }
                        // The responder answers; the junk initiator never reads it.
                        let mut answer = Vec::new();
                        if responder.write_next(&mut answer).is_err() {
                            break 'feed;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    } else {
        let (_tx, mut rx) = transports();
        let mut plain = vec![0u8; DATA_PLAINTEXT_MAX];
        'data: while at < stream.len() {
            at += deframer.push(&stream[at..]);
            loop {
                match deframer.next_message() {
                    Ok(Some((header, payload))) => {
                        let len = payload.len();
                        match rx.open(header, payload, &mut plain) {
                            Ok(n) => assert!(n + TAG_LEN <= len && n <= DATA_PLAINTEXT_MAX),
                            Err(_) => break 'data,
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'data,
                }
            }
        }
    }
});
