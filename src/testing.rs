//! Helpers shared by the unit tests: a seeded generator and keys made from it.

/// Environment variable that overrides the default test seed.
pub const SEED_ENV: &str = "MIXNODE_TEST_SEED";

/// The seed for seeded tests: `MIXNODE_TEST_SEED` if set and numeric, else a fixed value.
/// Failing runs print it so that they can be replayed.
pub fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            panic!("{SEED_ENV}={text:?} is not a u64");
        }),
        Err(_) => 0x6d69_786e_6f64_6531,
    }
}

/// SplitMix64: tiny, fast and good enough for test inputs; not for keys in production.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (bound > 0); the slight modulo bias does not matter in tests.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// A random 32-byte array (a replay tag or a key).
    pub fn tag(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.fill(&mut out);
        out
    }
}
