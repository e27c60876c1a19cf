//! Hashing what the store numbers: task ids and claims (an id and an attempt number), made
//! by the store, not by users. A multiply-and-rotate step instead of SipHash: a few map
//! operations per task made SipHash a measurable part of a drain.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The hasher of [`IdSet`] and [`IdMap`]: for integers the store made (ids, attempts).
/// Anything else hashes too, a byte at a time.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// A set of task ids or claims.
pub type IdSet<T> = HashSet<T, BuildHasherDefault<IdHasher>>;

/// A map keyed by task ids or claims.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Claim, TaskId};

    #[test]
    fn claims_of_one_task_and_ids_in_a_row_hash_apart() {
        let hash = |c: Claim| {
            let mut h = IdHasher::default();
            std::hash::Hash::hash(&c, &mut h);
            h.finish()
        };
        let claim = |id, attempt| Claim {
            id: TaskId::new(id),
            attempt,
        };
        let hashes: IdSet<u64> = (1..=100)
            .flat_map(|id| (1..=3).map(move |a| claim(id, a)))
            .map(hash)
            .collect();
        assert_eq!(hashes.len(), 300);
    }
}
