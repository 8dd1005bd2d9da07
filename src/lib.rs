//! `minibatch`: mini-batch stochastic gradient descent on every core of one machine, with
//! parameters that are bit-identical for any thread count.
//!
//! The loss is a mean over N examples, so the gradient over a random batch of B examples is an
//! unbiased estimate of the full gradient; one parameter step per batch. The whole loop:
//!
//! ```text
//! for epoch in 0..epochs:
//!     sampler.start_epoch(epoch)                      // seeded permutation of 0..N
//!     for idx in sampler batches of B:                // B = N: full batch, B = 1: pure SGD
//!         for shard s of idx, in parallel:            // boundaries from B and shard_rows
//!             grads[s] = sum_{i in s} grad L_i        // model.loss_grad_sum
//!         tree_reduce(grads)                          // fixed pairwise order -> grads[0]
//!         theta = optimizer.step(theta, grads[0] / B) // exactly one step per batch
//! ```
//!
//! The same loop as the code runs it, by function (the names to search for):
//! `commands::train::train` (the binary) -> `Trainer::new` and `Trainer::fit_observed` ->
//! `fit_on_pool` (epochs, the sampler) -> `step_on_pool` (a batch of several shards) or
//! `step_one_shard` (one: no queue, no reduction) -> `Model::prepare` (the weights packed
//! once per step) -> `ShardQueue::run` (tasks handed to the pool's threads) -> `run_task`
//! -> `Mlp::loss_grad_sum` or `Mlp::loss_grad_group` (a group of shards in one pass) ->
//! `Mlp::pass` -> `kernels::affine`, `affine_grad`, `affine_input_grad` ->
//! `gemm::gemm_packed` / `gemm_segments` (the matrix kernel; linear and logistic models
//! take `Mlp::single_output_linear`, `linear_rows` and the row kernels instead: a
//! one-column product is a dot product per row) -> back in `step_on_pool`:
//! `reduce::tree_reduce_above` (the levels above the groups) -> `Optimizer::step`.
//!
//! Where things live. The engine:
//! - `train`: the `Trainer` (fit -> epoch -> step) on its own pool; start here;
//! - `shard` and `reduce`: cutting a batch and summing it back, deterministically;
//! - `model`: the `Model` trait, the built-in `Mlp` (linear, logistic, softmax, MLP), the
//!   batch view and the matrix kernel (`model::gemm`);
//! - `params`: the flat buffer layout (names, shapes, offsets);
//! - `optim` and `schedule`: the update on flat buffers and the learning rate per step;
//! - `sampler`: which rows each step sees;
//! - `config`: TOML + overrides -> validated `Config`;
//! - `cluster`: the same step across MPI ranks (which shards a rank computes, the exchange
//!   that finishes the tree), bit-identical to one process.
//!
//! Around it: `data` (datasets, synthetic workloads) and `io` (CSV, LIBSVM, .npy);
//! `lines` (buffers that start on a cache line, for the wide loads);
//! `memory` (what a run needs against what the machine has, checked before allocating);
//! `checkpoint` (safetensors parameters and checkpoints); `metrics` (evaluation);
//! `profile` (the span recorder behind --trace and --profile); `bench`, `scale`, `tune` and
//! `noise` (speed against the machine, thread scaling, batch size, the gradient noise
//! scale); `descent` (the picture of smooth and jittery paths).

/// Defines `pub fn $name(args) [-> ret]` running `$body(args)` compiled for AVX-512 where
/// the CPU has it, else as built: the same `#[inline(always)]` loop twice, the wider one
/// behind a `target_feature` function. For elementwise loops whose per-element operations
/// (no fused multiply-add) give the same bits at any width, so only the speed changes;
/// written as plain loops the compiler vectorises them four times as wide as the baseline.
macro_rules! widest {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { wide($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

pub mod bench;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod data;
pub mod descent;
pub mod error;
pub mod io;
pub mod lines;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod noise;
pub mod optim;
pub mod params;
pub mod profile;
pub mod reduce;
pub mod sampler;
pub mod scale;
pub mod schedule;
pub mod shard;
pub mod train;
pub mod tune;

pub use config::{Config, RawConfig};
pub use data::Dataset;
pub use error::{Error, Result};
pub use model::{Batch, Mlp, Model, Stats};
pub use params::ParamLayout;
pub use train::{EpochReport, Observer, Position, Progress, RunReport, TrainState, Trainer};
