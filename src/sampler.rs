//! Which rows each step sees.
//!
//! Two modes, both seeded: `Shuffle` walks a fresh permutation of 0..N each epoch in slices of
//! B (every row exactly once per epoch; the short last slice is kept unless `drop_last`), and
//! `Uniform` draws B distinct rows uniformly at random for every step (the textbook sampling
//! of an unbiased mini-batch gradient). Each epoch's RNG is derived from (seed, epoch) alone,
//! so an epoch's batches can be regenerated without any saved RNG state.

use std::num::NonZeroUsize;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::data::{mix, stream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    Shuffle { drop_last: bool },
    Uniform,
}

/// One pass over the data: ceil(N / B) batches, or floor(N / B) when dropping the short one.
/// Needs 1 <= B <= N, which `Config` guarantees.
pub fn default_steps_per_epoch(
    n: usize,
    batch_size: NonZeroUsize,
    sampling: Sampling,
) -> NonZeroUsize {
    let b = batch_size.get();
    let steps = match sampling {
        Sampling::Shuffle { drop_last: true } => n / b,
        _ => n.div_ceil(b),
    };
    NonZeroUsize::new(steps).unwrap_or(NonZeroUsize::MIN)
}

pub struct Sampler {
    batch_size: usize,
    sampling: Sampling,
    steps_per_epoch: usize,
    seed: u64,
    /// A permutation of 0..N: the epoch's order (shuffle) or the partial Fisher-Yates state
    /// whose first B entries are the current draw (uniform).
    perm: Vec<usize>,
    rng: StdRng,
    step_in_epoch: usize,
}

impl Sampler {
    pub fn new(
        n: usize,
        batch_size: NonZeroUsize,
        sampling: Sampling,
        steps_per_epoch: NonZeroUsize,
        seed: u64,
    ) -> Self {
        assert!(
            batch_size.get() <= n,
            "batch size {batch_size} exceeds N = {n}"
        );
        Sampler {
            batch_size: batch_size.get(),
            sampling,
            steps_per_epoch: steps_per_epoch.get(),
            seed,
            perm: (0..n).collect(),
            rng: StdRng::seed_from_u64(seed),
            step_in_epoch: 0,
        }
    }

    /// Resets to the first batch of `epoch` (0-based).
    pub fn start_epoch(&mut self, epoch: usize) {
        self.rng = StdRng::seed_from_u64(mix(self.seed, stream::EPOCH + epoch as u64));
        self.perm.iter_mut().enumerate().for_each(|(i, p)| *p = i);
        if let Sampling::Shuffle { .. } = self.sampling {
            self.perm.shuffle(&mut self.rng);
        }
        self.step_in_epoch = 0;
    }

    /// The next batch's row indices and, when already known, the rows of the epoch's later
    /// batches in order (the shuffled order is fixed for the epoch, so the trainer can
    /// prefetch them while it computes; uniform draws are not known in advance). `None` at
    /// the epoch's end.
    pub fn next_batch_and_upcoming(&mut self) -> Option<(&[usize], &[usize])> {
        let current = self.advance()?;
        let n = self.perm.len();
        let upcoming = match self.sampling {
            Sampling::Shuffle { .. } => {
                current.end..(self.steps_per_epoch * self.batch_size).min(n)
            }
            Sampling::Uniform => 0..0,
        };
        Some((&self.perm[current], &self.perm[upcoming]))
    }

    /// The next batch's row indices, or `None` when the epoch is over.
    pub fn next_batch(&mut self) -> Option<&[usize]> {
        let current = self.advance()?;
        Some(&self.perm[current])
    }

    /// Moves to the next batch and returns where its indices lie in `perm`.
    fn advance(&mut self) -> Option<std::ops::Range<usize>> {
        if self.step_in_epoch == self.steps_per_epoch {
            return None;
        }
        let step = self.step_in_epoch;
        self.step_in_epoch += 1;
        let n = self.perm.len();
        match self.sampling {
            Sampling::Shuffle { .. } => {
                let start = step * self.batch_size;
                Some(start..(start + self.batch_size).min(n))
            }
            Sampling::Uniform => {
                // Partial Fisher-Yates: after B swaps the first B entries are a uniformly
                // random B-subset of 0..N, in random order.
                for i in 0..self.batch_size {
                    let j = self.rng.random_range(i..n);
                    self.perm.swap(i, j);
                }
                Some(0..self.batch_size)
            }
        }
    }
}
