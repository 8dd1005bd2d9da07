//! Learning-rate schedules give the exact rate at chosen steps, as the formulas in
//! src/schedule.rs state, and epoch durations convert with the run's steps per epoch.

use minibatch::schedule::{Decay, Schedule};

use crate::common::config;

fn schedule(decay: Decay, warmup_steps: u64, total_steps: u64) -> Schedule {
    Schedule {
        base_lr: 0.1,
        decay,
        warmup_steps,
        total_steps,
    }
}

fn assert_lr(s: &Schedule, t: u64, want: f64) {
    let got = f64::from(s.lr(t));
    assert!(
        (got - want).abs() <= 1e-7 * want.max(1e-3),
        "step {t}: lr {got}, expected {want}"
    );
}

#[test]
fn warmup_ramps_linearly_to_the_base_rate_then_hands_over() {
    let s = schedule(Decay::Constant, 4, 100);
    assert_lr(&s, 0, 0.025);
    assert_lr(&s, 1, 0.05);
    assert_lr(&s, 3, 0.1);
    assert_lr(&s, 4, 0.1);
    assert_lr(&s, 99, 0.1);
}

#[test]
fn step_decay_changes_exactly_at_the_boundaries() {
    let s = schedule(
        Decay::Step {
            every: 10,
            gamma: 0.5,
        },
        0,
        100,
    );
    assert_lr(&s, 9, 0.1);
    assert_lr(&s, 10, 0.05);
    assert_lr(&s, 19, 0.05);
    assert_lr(&s, 20, 0.025);
    // With warmup the decay clock starts after it.
    let s = schedule(
        Decay::Step {
            every: 10,
            gamma: 0.5,
        },
        5,
        100,
    );
    assert_lr(&s, 14, 0.1);
    assert_lr(&s, 15, 0.05);
}

#[test]
fn exponential_decay_is_smooth_between_boundaries() {
    let s = schedule(
        Decay::Exponential {
            every: 10,
            gamma: 0.5,
        },
        0,
        100,
    );
    assert_lr(&s, 10, 0.05);
    assert_lr(&s, 5, 0.1 * 0.5f64.sqrt());
}

#[test]
fn cosine_starts_at_the_base_after_warmup_and_ends_at_the_floor() {
    let s = schedule(Decay::Cosine { min_lr: 0.01 }, 10, 110);
    assert_lr(&s, 9, 0.1);
    assert_lr(&s, 10, 0.1);
    assert_lr(&s, 60, 0.055); // halfway: min + (base - min) / 2
    assert_lr(&s, 110, 0.01);
    let last = 0.01 + 0.09 * (1.0 + (std::f64::consts::PI * 99.0 / 100.0).cos()) / 2.0;
    assert_lr(&s, 109, last);
}

#[test]
fn epochs_convert_to_steps_and_batch_size_scaling_applies() {
    // 1000 rows, B = 100: 10 steps per epoch, 3 epochs = 30 steps.
    let cfg = config(
        "[data]\nsynthetic = \"linear\"\nn = 1000\n[train]\nepochs = 3\nbatch_size = 100\nlr = 0.2\n\
         lr_scaling = \"linear\"\nreference_batch_size = 50\n\
         [train.schedule]\nkind = \"step\"\nwarmup_epochs = 0.5\nevery_epochs = 1\ngamma = 0.1\n",
    );
    let s = cfg.train.schedule;
    assert_eq!(s.warmup_steps, 5);
    assert_eq!(s.total_steps, 30);
    assert_eq!(
        s.decay,
        Decay::Step {
            every: 10,
            gamma: 0.1
        }
    );
    assert!(
        (s.base_lr - 0.4).abs() < 1e-7,
        "linear scaling 0.2 x 100/50 gives {}",
        s.base_lr
    );
    let sqrt = config(
        "[data]\nsynthetic = \"linear\"\nn = 1000\n[train]\nbatch_size = 400\nlr = 0.1\nlr_scaling = \"sqrt\"\nreference_batch_size = 100\n",
    );
    assert!((sqrt.train.schedule.base_lr - 0.2).abs() < 1e-7);
}
