//! Duplicate emails, noticed while reading in fixed memory: a Bloom filter of the
//! staged emails (16 MiB, whatever the file's size) names every email that may
//! occur twice. Only those are looked for in SQL afterwards (`staging::resolve_duplicates`),
//! so a file without duplicates costs no pass over the load at all. A filter
//! never misses a real duplicate; the few false alarms are checked in SQL and
//! found single. Past `MAX_CANDIDATES` the list is dropped and SQL checks every
//! email (docs/performance.md#duplicates-without-a-pass-over-the-load).

use std::collections::HashSet;
use std::hash::BuildHasher;

/// 2^18 blocks of one 64-byte cache line (512 bits) each: 16 MiB. An email sets
/// `HASHES` bits of one block, so adding it costs one cache miss, not `HASHES`;
/// at 10M distinct emails about 0.1% false alarms.
const BLOCKS: u64 = 1 << 18;
const WORDS_PER_BLOCK: u64 = 8;
const HASHES: u64 = 5;
/// Above this many candidate emails, memory would grow with the file.
const MAX_CANDIDATES: usize = 100_000;

/// Which staged emails SQL must check for duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidates {
    /// Every email (too many candidates to list, or nothing known).
    All,
    /// Only these; empty means the load has no duplicates.
    Only(Vec<String>),
}

pub struct DuplicateFilter {
    bits: Vec<u64>,
    candidates: HashSet<String>,
    overflow: bool,
}

/// A word index into the filter: at most `BLOCKS * WORDS_PER_BLOCK` (21 bits,
/// masked from the hash), so it fits `usize` on every target Rust supports
/// beyond 16 bits (a constant's range, not input's).
fn index(masked: u64) -> usize {
    usize::try_from(masked).expect("a 21-bit index fits usize")
}

impl Default for DuplicateFilter {
    fn default() -> Self {
        Self {
            // Zeroed memory: pages are only touched as bits are set.
            bits: vec![0; index(BLOCKS * WORDS_PER_BLOCK)],
            candidates: HashSet::new(),
            overflow: false,
        }
    }
}

impl DuplicateFilter {
    /// Adds one staged (canonical) email.
    pub fn insert(&mut self, email: &str) {
        // foldhash: several times faster than SipHash on short keys (one hash
        // per row, in the reader's profile); a fixed seed.
        let h = foldhash::fast::FixedState::with_seed(0).hash_one(email);
        // The low 18 bits pick the block, the next 5 × 9 bits the bits in it.
        let block = index((h & (BLOCKS - 1)) * WORDS_PER_BLOCK);
        let mut rest = h >> 18;
        let mut seen = true;
        for _ in 0..HASHES {
            let bit = rest & 511;
            rest >>= 9;
            let (word, mask) = (block + index(bit >> 6), 1u64 << (bit & 63));
            if self.bits[word] & mask == 0 {
                seen = false;
                self.bits[word] |= mask;
            }
        }
        if seen && !self.overflow && !self.candidates.contains(email) {
            if self.candidates.len() >= MAX_CANDIDATES {
                self.overflow = true;
                self.candidates = HashSet::new();
            } else {
                self.candidates.insert(email.to_owned());
            }
        }
    }

    pub fn finish(self) -> Candidates {
        if self.overflow {
            Candidates::All
        } else {
            Candidates::Only(self.candidates.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_repeated_email_is_a_candidate_and_distinct_ones_almost_never() {
        let mut f = DuplicateFilter::default();
        for i in 0..200_000 {
            f.insert(&format!("user{i}@example.com"));
        }
        for e in [
            "user7@example.com",
            "user199999@example.com",
            "user7@example.com",
        ] {
            f.insert(e);
        }
        let Candidates::Only(mut c) = f.finish() else {
            panic!("overflow")
        };
        c.sort();
        // At 200k emails the expected number of false alarms is far below one.
        assert_eq!(c, ["user199999@example.com", "user7@example.com"]);
    }

    #[test]
    fn too_many_candidates_fall_back_to_checking_every_email() {
        let mut f = DuplicateFilter::default();
        for _ in 0..2 {
            for i in 0..MAX_CANDIDATES + 1 {
                f.insert(&format!("u{i}@x.io"));
            }
        }
        assert_eq!(f.finish(), Candidates::All);
    }
}
