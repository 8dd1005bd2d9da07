//! Which rows each step sees: shuffled epochs visit every row once, drop_last and the short
//! last batch behave, uniform draws are distinct, and B = 1 and B = N train.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use minibatch::sampler::{Sampler, Sampling, default_steps_per_epoch};
use minibatch::{Mlp, Trainer};

use crate::common::{config, random_dataset};

fn nz(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap()
}

fn epoch_batches(n: usize, b: usize, sampling: Sampling, epoch: usize) -> Vec<Vec<usize>> {
    let steps = default_steps_per_epoch(n, nz(b), sampling);
    let mut sampler = Sampler::new(n, nz(b), sampling, steps, 42);
    sampler.start_epoch(epoch);
    let mut batches = Vec::new();
    while let Some(batch) = sampler.next_batch() {
        batches.push(batch.to_vec());
    }
    batches
}

#[test]
fn a_shuffled_epoch_visits_every_index_exactly_once_with_a_short_last_batch() {
    let batches = epoch_batches(103, 10, Sampling::Shuffle { drop_last: false }, 0);
    assert_eq!(batches.len(), 11);
    assert!(batches[..10].iter().all(|b| b.len() == 10));
    assert_eq!(batches[10].len(), 3);
    let mut all: Vec<usize> = batches.concat();
    all.sort_unstable();
    assert_eq!(all, (0..103).collect::<Vec<_>>());
}

#[test]
fn drop_last_skips_the_short_batch_and_every_batch_is_full() {
    let batches = epoch_batches(103, 10, Sampling::Shuffle { drop_last: true }, 0);
    assert_eq!(batches.len(), 10);
    assert!(batches.iter().all(|b| b.len() == 10));
    let distinct: HashSet<usize> = batches.concat().into_iter().collect();
    assert_eq!(distinct.len(), 100);
}

#[test]
fn each_epoch_has_a_different_permutation_and_the_same_epoch_repeats() {
    let shuffle = Sampling::Shuffle { drop_last: false };
    let e0 = epoch_batches(50, 50, shuffle, 0);
    let e1 = epoch_batches(50, 50, shuffle, 1);
    assert_ne!(e0, e1);
    assert_ne!(
        e0[0],
        (0..50).collect::<Vec<_>>(),
        "the order should be shuffled"
    );
    assert_eq!(e0, epoch_batches(50, 50, shuffle, 0));
}

#[test]
fn uniform_mode_draws_distinct_indices_covering_the_data_evenly() {
    let (n, b) = (20, 7);
    let mut sampler = Sampler::new(n, nz(b), Sampling::Uniform, nz(3000), 5);
    sampler.start_epoch(0);
    let mut counts = vec![0usize; n];
    while let Some(batch) = sampler.next_batch() {
        assert_eq!(batch.len(), b);
        let distinct: HashSet<_> = batch.iter().collect();
        assert_eq!(distinct.len(), b, "a batch repeats an index: {batch:?}");
        for &i in batch {
            counts[i] += 1;
        }
    }
    // Each index is drawn with probability B/N = 0.35 per step: 1050 expected of 3000 steps,
    // standard deviation sqrt(3000 * 0.35 * 0.65) = 26; allow 6 sigma.
    for (i, &c) in counts.iter().enumerate() {
        assert!(
            (c as f64 - 1050.0).abs() < 160.0,
            "index {i} drawn {c} times"
        );
    }
}

fn trains(batch_size: usize) -> (f64, f64) {
    let cfg = config(&format!(
        r#"
        [data]
        synthetic = "linear"
        n = 64
        d = 3
        [train]
        epochs = 30
        batch_size = {batch_size}
        lr = 0.02
        "#
    ));
    let data = random_dataset(64, 3, None, 1);
    let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), 3, &cfg.train, 1).unwrap();
    let before = trainer.evaluate(&data).unwrap().mean_loss();
    let report = trainer.fit(&data, None, |_| {}).unwrap();
    assert_eq!(report.steps, 30 * 64usize.div_ceil(batch_size) as u64);
    (before, trainer.evaluate(&data).unwrap().mean_loss())
}

#[test]
fn pure_sgd_with_batch_size_1_trains() {
    let (before, after) = trains(1);
    assert!(after < 0.9 * before, "loss {before} -> {after}");
}

#[test]
fn full_batch_with_batch_size_n_trains() {
    let (before, after) = trains(64);
    assert!(after < 0.9 * before, "loss {before} -> {after}");
}
