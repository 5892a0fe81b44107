//! Choosing a partition for a task.
//!
//! Keyed tasks go where the Java client would put them (murmur2 of the key bytes,
//! made positive, modulo the partition count), so Sluice and JVM producers agree on
//! which partition owns a key. Keyless tasks are spread round-robin, or by lag
//! ([`crate::lag`]).

use crate::lag::LagTable;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Kafka's murmur2 hash, bit-for-bit as the Java client computes it.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's partition for a key.
pub fn key_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Picks partitions: explicit, by key, or round-robin.
#[derive(Debug)]
pub struct Partitioner {
    partitions: i32,
    next: AtomicU32,
    lag: Option<Arc<LagTable>>,
}

impl Partitioner {
    /// A partitioner for a topic with `partitions` partitions.
    pub fn new(partitions: i32) -> Self {
        Partitioner {
            partitions: partitions.max(1),
            next: AtomicU32::new(rand::random::<u32>()),
            lag: None,
        }
    }

    /// A partitioner that places keyless tasks by the lag in `table`.
    pub fn lag_aware(partitions: i32, table: Arc<LagTable>) -> Self {
        Partitioner {
            lag: Some(table),
            ..Partitioner::new(partitions)
        }
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The partition for a task with this key (round-robin when keyless).
    pub fn choose(&self, key: Option<&[u8]>) -> i32 {
        match key {
            Some(k) => key_partition(k, self.partitions),
            None => {
                if let (Some(table), true) = (&self.lag, self.partitions > 1) {
                    let a = rand::random_range(0..self.partitions);
                    let b = (a + rand::random_range(1..self.partitions)) % self.partitions;
                    if let Some(p) = table.choose(a, b) {
                        return p;
                    }
                }
                (self.next.fetch_add(1, Ordering::Relaxed) % self.partitions as u32) as i32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Expected values from Apache Kafka's own murmur2 unit test (UtilsTest).
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input), want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn round_robin_visits_every_partition_evenly() {
        let p = Partitioner::new(4);
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[p.choose(None) as usize] += 1;
        }
        assert_eq!(seen, [100; 4]);
    }

    proptest! {
        #[test]
        fn keyed_partitions_are_stable_and_in_range(key in proptest::collection::vec(any::<u8>(), 0..64), n in 1i32..64) {
            let p = Partitioner::new(n);
            let a = p.choose(Some(&key));
            prop_assert!((0..n).contains(&a));
            prop_assert_eq!(a, p.choose(Some(&key)));
        }
    }
}
