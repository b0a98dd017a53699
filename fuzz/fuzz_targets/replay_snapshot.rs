//! Arbitrary bytes as a saved replay filter file: `decode` must refuse or accept without
//! panicking, and what it accepts must encode back to the same bytes and restore into filters
//! of its sizes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nym_mixnode::replay::snapshot::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, images)) = decode(data) {
        assert_eq!(images.len(), header.shards as usize);
        assert_eq!(encode(&header, &images), data, "decode then encode is the identity");
    }
});
