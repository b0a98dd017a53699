//! The replay filters on disk: a snapshot of every shard's filter, so that a packet seen before
//! a restart is still a replay after it.
//!
//! Layout (all integers little-endian), checked before anything is trusted:
//!
//! ```text
//! magic "NYMRPLF1"            8 bytes
//! sphinx public key          32 bytes   the key the filters belong to
//! shards                      u32
//! hash count                  u32
//! capacity per generation     u64
//! bit count per generation    u64
//! then per shard:             generations turned u64,
//!                             per generation (current, previous): items u64, bits set u64,
//!                             bit count / 64 words u64
//! SHA-256 of all the above   32 bytes
//! ```
//!
//! [`decode`] parses a file's bytes into [`FilterImage`]s, refusing a wrong magic, a truncated
//! or overlong file, a bad checksum or counts that do not fit the sizes; it never panics on any
//! input (fuzzed: `fuzz/fuzz_targets/replay_snapshot.rs`). [`SnapshotCursor`] copies a live
//! filter into an image a bounded number of words at a time, so that a shard can take a
//! snapshot between packets without stalling.
//!
//! What it deliberately does not do: touch files (the node's saver writes them, atomically) or
//! decide whether an image fits the running configuration ([`super::ReplayFilter::restore`]).

use sha2::{Digest, Sha256};

use super::{BloomFilter, ReplayFilter};

/// First bytes of a snapshot file.
pub const MAGIC: [u8; 8] = *b"NYMRPLF1";
const HEADER_LEN: usize = 8 + 32 + 4 + 4 + 8 + 8;
const CHECKSUM_LEN: usize = 32;
/// Most shards a file may describe (a bound on what a corrupt header can make us allocate).
pub const SHARDS_MAX: u32 = 1024;

/// One generation of a filter, as saved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerationImage {
    /// Tags inserted.
    pub items: u64,
    /// Bits set.
    pub bits_set: u64,
    /// The bit array.
    pub words: Vec<u64>,
}

/// One shard's filter, as saved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterImage {
    /// Generations turned so far.
    pub generations_turned: u64,
    /// The current generation, then the previous one.
    pub generations: [GenerationImage; 2],
}

/// The sizes every image in a file shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The Sphinx public key the filters belong to.
    pub sphinx_public_key: [u8; 32],
    /// Shards (images) in the file.
    pub shards: u32,
    /// Probes per tag.
    pub hash_count: u32,
    /// Tags per generation.
    pub capacity: u64,
    /// Bits per generation.
    pub bit_count: u64,
}

/// Why a snapshot's bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Not a snapshot of this format.
    #[error("it is not a replay filter snapshot (unknown magic bytes)")]
    Magic,
    /// Shorter or longer than its header says.
    #[error("it is {actual} bytes long where its header implies {expected}: truncated or corrupt")]
    Length {
        /// Bytes the header implies.
        expected: u64,
        /// Bytes there are.
        actual: u64,
    },
    /// Sizes that no filter has.
    #[error("its sizes are impossible ({0})")]
    Sizes(&'static str),
    /// The checksum does not match.
    #[error("its checksum does not match its contents: corrupt")]
    Checksum,
}

fn generation_image(filter: &BloomFilter) -> GenerationImage {
    GenerationImage {
        items: filter.items_inserted,
        bits_set: filter.bits_set,
        words: filter.words.to_vec(),
    }
}

impl FilterImage {
    /// A complete copy of `filter` at once (for shutdown, when no packet is waiting).
    pub fn of(filter: &ReplayFilter) -> FilterImage {
        FilterImage {
            generations_turned: filter.rotations,
            generations: [
                generation_image(&filter.current),
                generation_image(&filter.previous),
            ],
        }
    }
}

/// Copies a live [`ReplayFilter`] into a [`FilterImage`] a bounded number of words per call.
/// Bits only get set between calls, so a copy taken over several calls holds every tag
/// inserted before it started (later ones may or may not be in it); if the filter turns a
/// generation over meanwhile, the copy starts again.
pub struct SnapshotCursor {
    image: FilterImage,
    /// Words copied so far, over both generations.
    position: usize,
}

impl SnapshotCursor {
    /// A cursor for `filter`'s sizes; allocates the image (twice the bit array).
    pub fn new(filter: &ReplayFilter) -> SnapshotCursor {
        let words = filter.current.words.len();
        let blank = || GenerationImage {
            items: 0,
            bits_set: 0,
            words: vec![0u64; words],
        };
        SnapshotCursor {
            image: FilterImage {
                generations_turned: filter.rotations,
                generations: [blank(), blank()],
            },
            position: 0,
        }
    }

    /// Copy up to `words_max` more words from `filter`; the image once complete.
    pub fn advance(&mut self, filter: &ReplayFilter, words_max: usize) -> Option<FilterImage> {
        if filter.rotations != self.image.generations_turned {
            self.image.generations_turned = filter.rotations;
            self.position = 0;
        }
        let per_generation = filter.current.words.len();
        let sources = [&filter.current, &filter.previous];
        let mut budget = words_max.max(1);
        while budget > 0 && self.position < 2 * per_generation {
            let generation = self.position / per_generation;
            let start = self.position % per_generation;
            let end = (start + budget).min(per_generation);
            self.image.generations[generation].words[start..end]
                .copy_from_slice(&sources[generation].words[start..end]);
            budget -= end - start;
            self.position += end - start;
        }
        if self.position < 2 * per_generation {
            return None;
        }
        // The counts as they are now: at least those of the bits copied.
        for (image, source) in self.image.generations.iter_mut().zip(sources) {
            image.items = source.items_inserted;
            image.bits_set = image.words.iter().map(|w| u64::from(w.count_ones())).sum();
        }
        Some(std::mem::take(&mut self.image))
    }
}

/// The bytes of a snapshot of `images` (one per shard, all of `header`'s sizes).
///
/// # Panics
/// If an image does not have `header`'s sizes: a bug of the caller's.
pub fn encode(header: &SnapshotHeader, images: &[FilterImage]) -> Vec<u8> {
    assert_eq!(images.len(), header.shards as usize, "one image per shard");
    let words = (header.bit_count / 64) as usize;
    let mut out = Vec::with_capacity(HEADER_LEN + images.len() * (8 + 2 * (16 + words * 8)) + 32);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&header.sphinx_public_key);
    out.extend_from_slice(&header.shards.to_le_bytes());
    out.extend_from_slice(&header.hash_count.to_le_bytes());
    out.extend_from_slice(&header.capacity.to_le_bytes());
    out.extend_from_slice(&header.bit_count.to_le_bytes());
    for image in images {
        out.extend_from_slice(&image.generations_turned.to_le_bytes());
        for generation in &image.generations {
            assert_eq!(generation.words.len(), words, "image of another size");
            out.extend_from_slice(&generation.items.to_le_bytes());
            out.extend_from_slice(&generation.bits_set.to_le_bytes());
            for word in &generation.words {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
    }
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses a snapshot file's bytes, checking everything before using any of it.
pub fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, Vec<FilterImage>), SnapshotError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(SnapshotError::Length {
            expected: (HEADER_LEN + CHECKSUM_LEN) as u64,
            actual: bytes.len() as u64,
        });
    }
    let mut sphinx_public_key = [0u8; 32];
    sphinx_public_key.copy_from_slice(&bytes[8..40]);
    let header = SnapshotHeader {
        sphinx_public_key,
        shards: u32_at(bytes, 40),
        hash_count: u32_at(bytes, 44),
        capacity: u64_at(bytes, 48),
        bit_count: u64_at(bytes, 56),
    };
    if header.shards == 0 || header.shards > SHARDS_MAX {
        return Err(SnapshotError::Sizes("shard count"));
    }
    if header.bit_count == 0
        || !header.bit_count.is_multiple_of(64)
        || header.bit_count > super::BITS_MAX
    {
        return Err(SnapshotError::Sizes("bit count"));
    }
    if header.hash_count == 0 || header.hash_count > super::HASH_COUNT_MAX {
        return Err(SnapshotError::Sizes("hash count"));
    }
    if header.capacity == 0 {
        return Err(SnapshotError::Sizes("capacity"));
    }
    let words = header.bit_count / 64;
    // Bounded above by SHARDS_MAX * 2 * (BITS_MAX / 8): no overflow in u64.
    let per_shard = 8 + 2 * (16 + words * 8);
    let expected = HEADER_LEN as u64 + u64::from(header.shards) * per_shard + CHECKSUM_LEN as u64;
    if bytes.len() as u64 != expected {
        return Err(SnapshotError::Length {
            expected,
            actual: bytes.len() as u64,
        });
    }
    let body = &bytes[..bytes.len() - CHECKSUM_LEN];
    if Sha256::digest(body).as_slice() != &bytes[bytes.len() - CHECKSUM_LEN..] {
        return Err(SnapshotError::Checksum);
    }
    let words = words as usize;
    let mut at = HEADER_LEN;
    let mut images = Vec::with_capacity(header.shards as usize);
    for _ in 0..header.shards {
        let generations_turned = u64_at(bytes, at);
        at += 8;
        let mut generation = || {
            let items = u64_at(bytes, at);
            let bits_set = u64_at(bytes, at + 8);
            at += 16;
            let words: Vec<u64> = (0..words).map(|i| u64_at(bytes, at + 8 * i)).collect();
            at += 8 * words.len();
            GenerationImage {
                items,
                bits_set,
                words,
            }
        };
        let current = generation();
        let previous = generation();
        for g in [&current, &previous] {
            let ones: u64 = g.words.iter().map(|w| u64::from(w.count_ones())).sum();
            if ones != g.bits_set {
                return Err(SnapshotError::Sizes("bits set"));
            }
        }
        images.push(FilterImage {
            generations_turned,
            generations: [current, previous],
        });
    }
    Ok((header, images))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    fn filled(rng: &mut SplitMix64, capacity: u64, tags: usize) -> (ReplayFilter, Vec<[u8; 32]>) {
        let mut filter = ReplayFilter::new(capacity, 1e-5).expect("valid");
        let tags: Vec<[u8; 32]> = (0..tags).map(|_| rng.tag()).collect();
        for tag in &tags {
            filter.insert(tag);
        }
        (filter, tags)
    }

    fn header_for(filter: &ReplayFilter, shards: u32) -> SnapshotHeader {
        SnapshotHeader {
            sphinx_public_key: [7u8; 32],
            shards,
            hash_count: filter.current.hash_count(),
            capacity: filter.capacity(),
            bit_count: filter.current.bit_count(),
        }
    }

    #[test]
    fn a_saved_filter_restores_with_every_tag_and_its_counts() {
        let mut rng = SplitMix64::new(crate::testing::seed());
        let (a, tags_a) = filled(&mut rng, 500, 1_300);
        let (b, tags_b) = filled(&mut rng, 500, 200);
        let header = header_for(&a, 2);
        let bytes = encode(&header, &[FilterImage::of(&a), FilterImage::of(&b)]);
        let (decoded, images) = decode(&bytes).expect("decodes");
        assert_eq!(decoded, header);
        let restored_a = ReplayFilter::restore(500, 1e-5, images[0].clone()).expect("same sizes");
        let restored_b = ReplayFilter::restore(500, 1e-5, images[1].clone()).expect("same sizes");
        // The last 500 of a's tags are remembered in any case; all of b's.
        assert!(tags_a[800..].iter().all(|t| restored_a.contains(t)));
        assert!(tags_b.iter().all(|t| restored_b.contains(t)));
        assert_eq!(restored_a.items_inserted(), a.items_inserted());
        assert_eq!(restored_a.generations_turned(), a.generations_turned());
        // Other sizes do not restore.
        assert!(ReplayFilter::restore(600, 1e-5, images[0].clone()).is_none());
    }

    #[test]
    fn a_cursor_copies_in_steps_and_starts_again_after_a_turnover() {
        let mut rng = SplitMix64::new(crate::testing::seed() ^ 1);
        let (mut filter, _) = filled(&mut rng, 400, 300);
        let mut cursor = SnapshotCursor::new(&filter);
        assert!(cursor.advance(&filter, 10).is_none());
        // Tags inserted while the copy runs, crossing a turnover: the copy starts again.
        let late: Vec<[u8; 32]> = (0..200).map(|_| rng.tag()).collect();
        for tag in &late {
            filter.insert(tag);
        }
        let image = loop {
            if let Some(image) = cursor.advance(&filter, 7) {
                break image;
            }
        };
        assert_eq!(image, FilterImage::of(&filter));
    }

    #[test]
    fn bad_bytes_are_refused_with_a_reason_never_a_panic() {
        let mut rng = SplitMix64::new(crate::testing::seed() ^ 2);
        let (filter, _) = filled(&mut rng, 100, 50);
        let header = header_for(&filter, 1);
        let bytes = encode(&header, &[FilterImage::of(&filter)]);
        assert_eq!(decode(b"").err(), Some(SnapshotError::Magic));
        assert_eq!(decode(b"NOTASNAPSHOT").err(), Some(SnapshotError::Magic));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::Length { .. })
        ));
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 40] ^= 1;
        assert_eq!(decode(&flipped).err(), Some(SnapshotError::Checksum));
        let mut shards = bytes.clone();
        shards[40..44].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode(&shards).err(),
            Some(SnapshotError::Sizes("shard count"))
        );
        for len in 0..bytes.len().min(200) {
            assert!(decode(&bytes[..len]).is_err());
        }
        for _ in 0..2_000 {
            let mut copy = bytes.clone();
            let at = rng.below(copy.len() as u64) as usize;
            copy[at] ^= 1 << rng.below(8);
            assert!(decode(&copy).is_err(), "a flipped bit at {at} was accepted");
        }
    }
}
