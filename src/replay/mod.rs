//! The replay filter: remembers the replay tags of Sphinx packets already mixed under the
//! current key, so that a replayed packet is dropped, and never wears out.
//!
//! [`ReplayFilter`] keeps two generations of [`BloomFilter`], each sized for
//! `expected_items` tags. Tags go into the current generation; a tag is a replay if either
//! generation holds it. When the current generation holds `expected_items` tags, the older one
//! is cleared and becomes current. So the filter always remembers at least the last
//! `expected_items` tags (and up to twice that), and its false-positive rate stays below twice
//! the configured one forever, instead of rising towards 1 as a single filter's does past its
//! size. The price is twice the memory, allocated and touched at start, and one clear of a
//! generation (a memset of its bit array) every `expected_items` packets.
//!
//! Each generation is sized once, from the number of tags it should hold and the false-positive
//! rate wanted (Nym uses 1e-5), with the standard formulas `m = -n ln p / (ln 2)^2` bits and
//! `k = (m / n) ln 2` probes, and allocates its bit array at construction. Bit indices come
//! straight from the tag bytes by (enhanced) double hashing: a replay tag is the output of a
//! cryptographic hash (HKDF over the shared secret), so its bytes are already uniform and
//! independent, and hashing them again would cost time and add nothing. An attacker cannot
//! steer tags either: a tag is bound to a scalar multiplication with the node's secret key.
//!
//! What it deliberately does not do: decide when to rotate keys (a filter belongs to one key
//! and is cleared or replaced with it), remove single tags (Bloom filters cannot), or grow.

pub mod snapshot;

/// Length of a Sphinx replay tag.
pub const REPLAY_TAG_LEN: usize = sphinx_packet::constants::REPLAY_TAG_SIZE;

const _: () = assert!(REPLAY_TAG_LEN == 32);

/// The false-positive rate Nym's nodes use.
pub const FALSE_POSITIVE_RATE_DEFAULT: f64 = 1e-5;

/// Upper bound on the bit array: 2^35 bits, 4 GiB. A filter for 10^8 tags at 1e-5 needs
/// about 2.4 * 10^9 bits, so this only stops a configuration mistake.
pub const BITS_MAX: u64 = 1 << 35;

/// Upper bound on probes per tag; k stays far below it for any sane rate (17 at 1e-5).
pub const HASH_COUNT_MAX: u32 = 64;

/// Why a filter could not be sized.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum ReplayFilterError {
    /// `expected_items` was zero.
    #[error("replay filter expected_items must be at least 1")]
    NoItems,
    /// The false-positive rate was not strictly between 0 and 1.
    #[error("replay filter false-positive rate {0} must be strictly between 0 and 1")]
    BadFalsePositiveRate(f64),
    /// The filter would exceed [`BITS_MAX`] bits.
    #[error("replay filter would need {bits} bits, more than the maximum {BITS_MAX}")]
    TooLarge {
        /// The bits the parameters asked for.
        bits: u64,
    },
}

/// The bit count (m, whole 64-bit words) and probe count (k) of a Bloom filter for
/// `expected_items` tags at `false_positive_rate`.
pub fn sizes_for(
    expected_items: u64,
    false_positive_rate: f64,
) -> Result<(u64, u32), ReplayFilterError> {
    if expected_items == 0 {
        return Err(ReplayFilterError::NoItems);
    }
    if !(false_positive_rate > 0.0 && false_positive_rate < 1.0) {
        return Err(ReplayFilterError::BadFalsePositiveRate(false_positive_rate));
    }
    let ln2 = std::f64::consts::LN_2;
    let items = expected_items as f64;
    let bits_wanted = (-items * false_positive_rate.ln() / (ln2 * ln2)).ceil();
    // Whole 64-bit words; compare as f64 first so a huge request cannot wrap.
    if bits_wanted > BITS_MAX as f64 {
        return Err(ReplayFilterError::TooLarge {
            bits: bits_wanted as u64,
        });
    }
    let bit_count = (bits_wanted as u64).max(64).div_ceil(64) * 64;
    let hash_count = ((bit_count as f64 / items) * ln2).round() as u32;
    Ok((bit_count, hash_count.clamp(1, HASH_COUNT_MAX)))
}

/// One Bloom filter of 32-byte replay tags, allocated once: a generation of [`ReplayFilter`].
#[derive(Clone, Debug)]
pub struct BloomFilter {
    words: Box<[u64]>,
    bit_count: u64,
    hash_count: u32,
    capacity: u64,
    items_inserted: u64,
    bits_set: u64,
}

/// Touch every page of `words` now. A zeroed allocation this large is mapped lazily, and
/// with transparent huge pages each first touch zeroes 2 MiB: left to the first packets, the
/// scattered bit positions of one insert cost tens of milliseconds (measured: the first packets
/// after start came back about 35 ms late). The writes are volatile so that they are not
/// dropped as stores of zero into zeroed memory.
fn prefault(words: &mut [u64]) {
    const WORDS_PER_PAGE: usize = 4096 / std::mem::size_of::<u64>();
    for word in words.iter_mut().step_by(WORDS_PER_PAGE) {
        // SAFETY: `word` is a valid, aligned, exclusive reference into the slice.
        unsafe { std::ptr::write_volatile(word, 0) };
    }
}

impl BloomFilter {
    /// A filter sized for `expected_items` tags at `false_positive_rate`.
    pub fn new(expected_items: u64, false_positive_rate: f64) -> Result<Self, ReplayFilterError> {
        let (bit_count, hash_count) = sizes_for(expected_items, false_positive_rate)?;
        let word_count = (bit_count / 64) as usize;
        let mut words = vec![0u64; word_count].into_boxed_slice();
        prefault(&mut words);
        Ok(BloomFilter {
            words,
            bit_count,
            hash_count,
            capacity: expected_items,
            items_inserted: 0,
            bits_set: 0,
        })
    }

    /// A filter sized for `expected_items` tags at [`FALSE_POSITIVE_RATE_DEFAULT`].
    pub fn with_default_rate(expected_items: u64) -> Result<Self, ReplayFilterError> {
        Self::new(expected_items, FALSE_POSITIVE_RATE_DEFAULT)
    }

    /// Whether `tag` may have been inserted. Never false for an inserted tag; true for a
    /// fresh tag with about the configured false-positive rate while within capacity.
    pub fn contains(&self, tag: &[u8; REPLAY_TAG_LEN]) -> bool {
        let mut probes = Probes::new(tag, self.bit_count);
        (0..self.hash_count).all(|_| {
            let bit = probes.next_bit();
            self.words[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0
        })
    }

    /// Records `tag`. Inserting a tag twice counts it twice in [`Self::items_inserted`].
    pub fn insert(&mut self, tag: &[u8; REPLAY_TAG_LEN]) {
        let mut probes = Probes::new(tag, self.bit_count);
        for _ in 0..self.hash_count {
            let bit = probes.next_bit();
            let word = &mut self.words[(bit / 64) as usize];
            let mask = 1u64 << (bit % 64);
            if *word & mask == 0 {
                *word |= mask;
                self.bits_set += 1;
            }
        }
        self.items_inserted += 1;
    }

    /// Forgets every tag, keeping the allocation (for key rotation).
    pub fn clear(&mut self) {
        self.words.fill(0);
        self.items_inserted = 0;
        self.bits_set = 0;
    }

    /// Tags inserted since construction or the last [`Self::clear`].
    pub fn items_inserted(&self) -> u64 {
        self.items_inserted
    }

    /// Fraction of bits set, 0.0 to 1.0.
    pub fn fill_ratio(&self) -> f64 {
        self.bits_set as f64 / self.bit_count as f64
    }

    /// The number of tags the filter was sized for.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether more tags were inserted than the filter was sized for.
    pub fn is_over_capacity(&self) -> bool {
        self.items_inserted > self.capacity
    }

    /// The false-positive rate now, from the bits actually set: `fill_ratio ^ k`.
    pub fn estimated_false_positive_rate(&self) -> f64 {
        self.fill_ratio().powi(self.hash_count as i32)
    }

    /// Size of the bit array (m).
    pub fn bit_count(&self) -> u64 {
        self.bit_count
    }

    /// Probes per tag (k).
    pub fn hash_count(&self) -> u32 {
        self.hash_count
    }
}

/// The node's replay filter: two generations of [`BloomFilter`] (see the module docs).
#[derive(Debug)]
pub struct ReplayFilter {
    current: BloomFilter,
    previous: BloomFilter,
    rotations: u64,
}

impl ReplayFilter {
    /// A filter whose generations are each sized for `expected_items` tags at
    /// `false_positive_rate`: it always remembers at least the last `expected_items` tags.
    pub fn new(expected_items: u64, false_positive_rate: f64) -> Result<Self, ReplayFilterError> {
        Ok(ReplayFilter {
            current: BloomFilter::new(expected_items, false_positive_rate)?,
            previous: BloomFilter::new(expected_items, false_positive_rate)?,
            rotations: 0,
        })
    }

    /// A filter sized for `expected_items` tags per generation at
    /// [`FALSE_POSITIVE_RATE_DEFAULT`].
    pub fn with_default_rate(expected_items: u64) -> Result<Self, ReplayFilterError> {
        Self::new(expected_items, FALSE_POSITIVE_RATE_DEFAULT)
    }

    /// Whether `tag` may have been inserted among the tags remembered. Never false for a tag
    /// among the last [`Self::capacity`] inserted.
    pub fn contains(&self, tag: &[u8; REPLAY_TAG_LEN]) -> bool {
        self.current.contains(tag) || self.previous.contains(tag)
    }

    /// Records `tag`, first turning generations over if the current one is full.
    pub fn insert(&mut self, tag: &[u8; REPLAY_TAG_LEN]) {
        if self.current.items_inserted() >= self.current.capacity() {
            self.previous.clear();
            std::mem::swap(&mut self.current, &mut self.previous);
            self.rotations += 1;
        }
        self.current.insert(tag);
    }

    /// Forgets every tag, keeping the allocations (for key rotation).
    pub fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    /// Tags remembered now: those of both generations.
    pub fn items_inserted(&self) -> u64 {
        self.current.items_inserted() + self.previous.items_inserted()
    }

    /// Tags each generation is sized for: the filter always remembers at least this many of
    /// the most recent ones.
    pub fn capacity(&self) -> u64 {
        self.current.capacity()
    }

    /// Times the older generation was cleared to make room.
    pub fn generations_turned(&self) -> u64 {
        self.rotations
    }

    /// Fraction of the current generation's bits set, 0.0 to 1.0.
    pub fn fill_ratio(&self) -> f64 {
        self.current.fill_ratio()
    }

    /// The false-positive rate now, from the bits actually set in both generations (an upper
    /// bound: the sum of the two).
    pub fn estimated_false_positive_rate(&self) -> f64 {
        self.current.estimated_false_positive_rate() + self.previous.estimated_false_positive_rate()
    }

    /// Bytes of bit arrays, both generations.
    pub fn memory_bytes(&self) -> u64 {
        2 * self.current.bit_count() / 8
    }

    /// Bits and probes per generation.
    pub fn sizes(&self) -> (u64, u32) {
        (self.current.bit_count(), self.current.hash_count())
    }

    /// The filter saved in `image`, if it has the sizes `expected_items` and
    /// `false_positive_rate` give (a filter of other sizes cannot answer for the same tags).
    pub fn restore(
        expected_items: u64,
        false_positive_rate: f64,
        image: snapshot::FilterImage,
    ) -> Option<ReplayFilter> {
        let mut filter = ReplayFilter::new(expected_items, false_positive_rate).ok()?;
        let words = filter.current.words.len();
        if image.generations.iter().any(|g| g.words.len() != words) {
            return None;
        }
        let [current, previous] = image.generations;
        for (target, source) in [
            (&mut filter.current, current),
            (&mut filter.previous, previous),
        ] {
            target.words.copy_from_slice(&source.words);
            target.items_inserted = source.items;
            target.bits_set = source.bits_set;
        }
        filter.rotations = image.generations_turned;
        Some(filter)
    }
}

/// Enhanced double hashing (Dillinger and Manolios): probe `i` is
/// `h1 + i*h2 + (i^3 - i)/6 mod m`, computed incrementally. `h1` and `h2` are two
/// independent 64-bit words of the tag; the cubic term keeps probe sequences of tags that
/// share `h2` apart.
struct Probes {
    position: u64,
    step: u64,
    increment: u64,
    bit_count: u64,
}

impl Probes {
    fn new(tag: &[u8; REPLAY_TAG_LEN], bit_count: u64) -> Self {
        let word = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&tag[i * 8..i * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        // Mixing in the other two words means no byte of the tag is wasted.
        let h1 = word(0) ^ word(2);
        let h2 = word(1) ^ word(3);
        Probes {
            position: h1 % bit_count,
            step: h2 % bit_count,
            increment: 0,
            bit_count,
        }
    }

    fn next_bit(&mut self) -> u64 {
        let bit = self.position;
        // Both terms stay below m < 2^36, so the sums cannot overflow.
        self.position = (self.position + self.step) % self.bit_count;
        self.increment += 1;
        self.step = (self.step + self.increment) % self.bit_count;
        bit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    #[test]
    fn sizing_follows_the_standard_formulas() {
        let filter = BloomFilter::new(200_000, 1e-5).expect("valid parameters");
        // m = -n ln p / ln2^2 = 4_792_529.6 bits, rounded up to whole words.
        assert_eq!(filter.bit_count(), 4_792_576);
        assert_eq!(filter.hash_count(), 17);
        assert_eq!(filter.capacity(), 200_000);
        assert_eq!(filter.words.len() * 64, filter.bit_count() as usize);
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert_eq!(
            BloomFilter::new(0, 1e-5).err(),
            Some(ReplayFilterError::NoItems)
        );
        for rate in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(matches!(
                ReplayFilter::new(10, rate),
                Err(ReplayFilterError::BadFalsePositiveRate(_))
            ));
        }
        assert!(matches!(
            ReplayFilter::new(u64::MAX, 1e-5),
            Err(ReplayFilterError::TooLarge { .. })
        ));
    }

    /// At capacity, no inserted tag is ever missed and fresh tags are reported at about the
    /// configured rate: 2,000,000 probes at 1e-5 expect 20 false positives; the bound of 60
    /// is far in the Poisson tail (p < 1e-10) yet would catch a rate three times too high.
    #[test]
    fn false_positive_rate_at_capacity_stays_near_1e5_and_no_false_negatives() {
        const ITEMS: u64 = 200_000;
        const PROBES: u64 = 2_000_000;
        let mut rng = SplitMix64::new(crate::testing::seed());
        let mut filter = BloomFilter::new(ITEMS, 1e-5).expect("valid parameters");
        let mut inserted = Vec::with_capacity(ITEMS as usize);
        for _ in 0..ITEMS {
            let tag = rng.tag();
            filter.insert(&tag);
            inserted.push(tag);
        }
        assert_eq!(filter.items_inserted(), ITEMS);
        assert!(!filter.is_over_capacity());
        for tag in &inserted {
            assert!(filter.contains(tag), "false negative");
        }
        let fill = filter.fill_ratio();
        assert!((0.45..0.55).contains(&fill), "fill ratio {fill}");
        let estimate = filter.estimated_false_positive_rate();
        assert!(estimate < 2e-5, "estimated rate {estimate}");

        let false_positives = (0..PROBES).filter(|_| filter.contains(&rng.tag())).count();
        eprintln!("{false_positives} false positives in {PROBES} probes (expected about 20)");
        assert!(false_positives <= 60, "{false_positives} false positives");

        filter.insert(&rng.tag());
        assert!(filter.is_over_capacity());
        filter.clear();
        assert_eq!(filter.items_inserted(), 0);
        assert_eq!(filter.fill_ratio(), 0.0);
        assert!(!filter.contains(&inserted[0]));
    }

    /// Sized for 2,000 tags, fed 100,000 distinct ones: the generations turn over, the last
    /// 2,000 are always remembered, and fresh tags are taken for replays at most at about twice
    /// the configured rate (a single filter this size would by then call nearly every tag a
    /// replay).
    #[test]
    fn generations_never_wear_out_and_always_remember_the_last_capacity_tags() {
        const CAPACITY: u64 = 2_000;
        const TAGS: usize = 100_000;
        let mut rng = SplitMix64::new(crate::testing::seed());
        let mut filter = ReplayFilter::new(CAPACITY, 1e-3).expect("valid parameters");
        let mut recent: std::collections::VecDeque<[u8; 32]> = std::collections::VecDeque::new();
        let mut false_positives = 0u64;
        for i in 0..TAGS {
            let tag = rng.tag();
            if filter.contains(&tag) {
                false_positives += 1;
            }
            filter.insert(&tag);
            recent.push_back(tag);
            if recent.len() > CAPACITY as usize {
                recent.pop_front();
            }
            if i % 997 == 0 {
                assert!(
                    recent.iter().all(|t| filter.contains(t)),
                    "a tag among the last {CAPACITY} was forgotten"
                );
                let remembered = filter.items_inserted();
                assert!(remembered >= (i as u64 + 1).min(CAPACITY) && remembered <= 2 * CAPACITY);
                assert!(filter.estimated_false_positive_rate() < 2.2e-3);
            }
        }
        eprintln!(
            "{false_positives} false positives in {TAGS} fresh tags (at most about 200 expected)"
        );
        // Expected at most 2e-3 x 100,000 = 200 (about 150 on average); 300 is far in the tail.
        assert!(false_positives <= 300, "{false_positives}");
        assert_eq!(filter.generations_turned(), TAGS as u64 / CAPACITY - 1);
        filter.clear();
        assert_eq!(filter.items_inserted(), 0);
        assert!(!filter.contains(&recent[0]));
    }
}
