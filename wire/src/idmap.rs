//! Hash maps keyed by small integer ids that this node or QUIC hands out in sequence —
//! stream and call ids, call tokens, execution numbers — hashed by one multiplication
//! instead of SipHash.
//!
//! A keyed hash exists to stop a peer from choosing keys that collide; none of these keys is
//! chosen by a peer (a QUIC peer can only open the next stream id its credit allows), so it
//! bought nothing, and on a warm call SipHash was about a tenth of the driver's work: some
//! 45 map operations per call at ~150 instructions each. The same goes for names this node
//! chose itself ([`NameMap`]: its peers, their permissions, the exports of its modules): a
//! peer may look one up, but never adds one. Maps keyed by content hashes or anything else
//! a peer picks keep the standard hasher.
//!
//! Invariants: only ids allocated in sequence (by this process or within QUIC's stream
//! limits) are keys of an [`IdMap`] / [`IdSet`]; only names from this node's own
//! configuration or loaded code are keys of a [`NameMap`].

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by sequentially allocated ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// A set of sequentially allocated ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;
/// A map keyed by names this node chose (see the module doc).
pub type NameMap<V> = HashMap<String, V, BuildHasherDefault<IdHasher>>;

/// Multiplicative (Fibonacci) hashing. A product's high bits mix every key bit below them,
/// its low bits only the key's low bits (and stream ids step by 4), so `finish` rotates
/// the well-mixed middle bits down to where the table picks its bucket.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.write_u64(u64::from_le_bytes(w));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            // The same word as the tail zero-padded to 8 bytes, read little-endian.
            let w = tail
                .iter()
                .rev()
                .fold(0u64, |w, &b| (w << 8) | u64::from(b));
            self.write_u64(w);
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(GOLDEN);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (0u64..4096).map(|i| build.hash_one(i * 4)).collect();
        // Stream ids step by 4: they must use most of a 4096-bucket table (the product's own
        // low bits would leave three quarters of it empty; a random hash fills ~63%)...
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        assert!(buckets.len() > 3400, "{} buckets used", buckets.len());
        // ...and the top 7 bits (hashbrown's tag) must take every value.
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128);
    }

    #[test]
    fn maps_and_sets_behave_as_maps_and_sets() {
        let mut m: IdMap<(usize, u64), u64> = IdMap::default();
        for i in 0..1000u64 {
            m.insert((7, i), i * 2);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get(&(7, 999)), Some(&1998));
        assert_eq!(m.get(&(8, 999)), None);
        let s: IdSet<u64> = (0..100).collect();
        assert!(s.contains(&42) && !s.contains(&100));
        let n: NameMap<usize> = ["worker", "worker2", "w", ""]
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), i))
            .collect();
        assert_eq!(n.get("worker2"), Some(&1));
        assert_eq!(n.get(""), Some(&3));
        assert_eq!(n.get("worker3"), None);
    }
}
