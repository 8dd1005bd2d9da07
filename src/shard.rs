//! How a batch is cut into shards.
//!
//! A shard is a run of consecutive positions of the batch; each gets its own gradient buffer,
//! workspace and stats slot. Boundaries depend on the batch length and `shard_rows` only,
//! never on the thread count: that, with the fixed reduction tree, is what makes the result
//! bit-identical on any number of threads.

use std::num::NonZeroUsize;
use std::ops::Range;

pub fn n_shards(batch_len: usize, shard_rows: NonZeroUsize) -> usize {
    batch_len.div_ceil(shard_rows.get())
}

pub fn shard_range(shard_idx: usize, batch_len: usize, shard_rows: NonZeroUsize) -> Range<usize> {
    let start = shard_idx * shard_rows.get();
    start..(start + shard_rows.get()).min(batch_len)
}

/// The default shard size for a batch size: B / 16 rows, but at least 64 and at most 256.
/// Many shards give parallel slack for large machines (16 shards from B = 1024 on), but each
/// shard writes and the reduction reads one gradient buffer (n_params x 4 bytes), and small
/// blocks run the matrix products below their best rate. Measured with `minibatch bench` on
/// the MLP workload (2 cores): 32-row shards ran at 60-75% of the speed of 64-row ones, and
/// 64 to 256 rows were within the noise of each other from B = 512 up.
pub fn auto_shard_rows(batch_size: NonZeroUsize) -> NonZeroUsize {
    let rows = batch_size.get().div_ceil(16).clamp(64, 256);
    NonZeroUsize::new(rows).expect("clamped to at least 64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_position_once() {
        for batch_len in 1..200 {
            for rows in [1, 3, 16, 64, 500] {
                let rows = NonZeroUsize::new(rows).unwrap();
                let mut next = 0;
                for i in 0..n_shards(batch_len, rows) {
                    let r = shard_range(i, batch_len, rows);
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty());
                    next = r.end;
                }
                assert_eq!(next, batch_len);
            }
        }
    }
}
