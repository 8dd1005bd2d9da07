//! The `Model` trait the trainer drives, and the built-in models behind it.
//!
//! A model owns no parameters: it knows their layout and computes, for a block of rows, the
//! *sum* of per-example losses and the *sum* of their gradients, written into a flat
//! gradient buffer. The 1/B of the mean is applied once, by the optimizer step. This is what
//! lets a batch be cut into shards whose sums add up, in a fixed order, to the batch's.
//!
//! Built in: `Mlp`, a multi-layer perceptron of any depth (zero hidden layers gives linear,
//! logistic and softmax regression) with an MSE, logistic or softmax head.

mod batch;
pub mod gemm;
mod kernels;
mod mlp;

pub use batch::{Batch, PREFETCH_ROWS, prefetch_row};
pub use kernels::{argmax, log_sum_exp, sigmoid, softplus};
pub use mlp::{Activation, Head, Mlp, MlpShared, MlpSpec, MlpWorkspace};

use ndarray::ArrayViewMut2;
use rand::rngs::StdRng;

use crate::params::ParamLayout;

/// Sums over the rows of a block, never means, so that blocks add up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub loss_sum: f64,
    pub n_correct: u64,
    pub rows: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.loss_sum += other.loss_sum;
        self.n_correct += other.n_correct;
        self.rows += other.rows;
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.rows.max(1) as f64
    }

    pub fn accuracy(&self) -> f64 {
        self.n_correct as f64 / self.rows.max(1) as f64
    }

    /// The three sums as f64, for messages between MPI ranks (counts stay exact below 2^53).
    pub fn to_f64s(&self) -> [f64; 3] {
        [self.loss_sum, self.n_correct as f64, self.rows as f64]
    }

    /// `to_f64s` read back.
    pub fn from_f64s(v: &[f64]) -> Stats {
        Stats {
            loss_sum: v[0],
            n_correct: v[1] as u64,
            rows: v[2] as u64,
        }
    }
}

/// How the shards of the coming step (or evaluation) will use what `Model::prepare` derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Whether to split the preparation over the pool: false when the step runs as one
    /// shard, where waking idle workers would cost more than it saves.
    pub parallel: bool,
    /// The most rows one model call will pass (a shard's, or a group's when shards run in
    /// groups): for a few rows, copying weights into a layout the kernel likes costs more
    /// than the products save.
    pub rows: usize,
    /// How many threads will run shards at once: a small model gives each its own copy of
    /// what every shard reads, since cores reading the same lines at the same time slow
    /// each other down (see `gemm::PackedB`).
    pub readers: usize,
}

/// Where `Model::loss_grad_into` puts a batch's gradient sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradInto {
    /// Over what the buffer holds (nobody zeroes it first).
    Overwrite,
    /// Added to what the buffer holds, the sum formed on its own first: the same bits as
    /// writing it into a buffer of its own and adding the two buffers, which is what the
    /// reduction tree would do (see `loss_grad_group_apart`).
    Add,
}

/// What the trainer needs from a model. Implement it for your own model: the trainer,
/// sampler, reduction and optimizer work on any layout.
pub trait Model: Send + Sync {
    /// Activations and scratch for one task (a shard, or a group of shards); allocated once
    /// per thread and reused for every task the thread runs, so the hot path allocates
    /// nothing and the buffers stay in that thread's caches.
    type Workspace: Send;

    /// Read-only state derived from the parameters once per step and shared by every shard
    /// (the built-in model keeps its weights packed for the matrix kernel here). Use `()`
    /// when there is none.
    type Shared: Send + Sync;

    fn layout(&self) -> &ParamLayout;

    /// Seeded standard initialisation of a zeroed buffer of `layout().n_params()` elements.
    fn init(&self, params: &mut [f32], rng: &mut StdRng);

    /// Scratch space for blocks of at most `max_rows` rows.
    fn workspace(&self, max_rows: usize) -> Self::Workspace;

    /// An empty `Shared`, filled by `prepare`.
    fn shared(&self) -> Self::Shared;

    /// Derives `shared` from `params`; called after every parameter change, before the
    /// shards of the next step or evaluation run, with how they will use it.
    fn prepare(&self, params: &[f32], shared: &mut Self::Shared, usage: Usage);

    /// Puts `sum_i dL_i/dtheta` over the rows of `batch` into `grad` as `into` says, and
    /// returns the sums of loss and correct answers.
    fn loss_grad_into(
        &self,
        params: &[f32],
        shared: &Self::Shared,
        batch: Batch<'_>,
        ws: &mut Self::Workspace,
        grad: &mut [f32],
        into: GradInto,
    ) -> Stats;

    /// A group of consecutive shards (`shard_rows` rows each, the last perhaps fewer), as
    /// `ShardQueue::in_groups` runs them: their gradient sums added in the reduction tree's
    /// order, the total left in row 0 of `grads` (one row per shard; the others are room
    /// the model may use), and each shard's stats in `stats` (one per shard). The default
    /// (`loss_grad_group_apart`) calls `loss_grad_into` shard by shard; a model may pass
    /// the group's rows through at once if the bits stay those of the shards apart (the
    /// built-in MLP does: each weight is read once for all the group's rows, and the
    /// shards' weight gradients are summed tile by tile). `ws` holds the group's rows.
    #[allow(clippy::too_many_arguments)]
    fn loss_grad_group(
        &self,
        params: &[f32],
        shared: &Self::Shared,
        batch: Batch<'_>,
        shard_rows: usize,
        ws: &mut Self::Workspace,
        grads: ArrayViewMut2<f32>,
        stats: &mut [Stats],
    ) {
        loss_grad_group_apart(self, params, shared, batch, shard_rows, ws, grads, stats);
    }

    /// `loss_grad_into`, overwriting every element of `grad` (so nobody zeroes the buffer
    /// first: the product kernels store their first block without reading it).
    fn loss_grad_sum(
        &self,
        params: &[f32],
        shared: &Self::Shared,
        batch: Batch<'_>,
        ws: &mut Self::Workspace,
        grad: &mut [f32],
    ) -> Stats {
        self.loss_grad_into(params, shared, batch, ws, grad, GradInto::Overwrite)
    }

    /// Forward only: the same `Stats` as `loss_grad_sum` without touching gradients.
    fn loss_sum(
        &self,
        params: &[f32],
        shared: &Self::Shared,
        batch: Batch<'_>,
        ws: &mut Self::Workspace,
    ) -> Stats;

    /// Whether `Stats::n_correct` means anything (accuracy is reported for classifiers only).
    fn is_classifier(&self) -> bool;
}

/// `Model::loss_grad_group` by `loss_grad_into` calls: each pair of shards into the first's
/// row (written, then added as `GradInto::Add` adds), then the tree's levels above the pairs
/// over those rows.
#[allow(clippy::too_many_arguments)]
pub fn loss_grad_group_apart<M: Model + ?Sized>(
    model: &M,
    params: &[f32],
    shared: &M::Shared,
    batch: Batch<'_>,
    shard_rows: usize,
    ws: &mut M::Workspace,
    mut grads: ArrayViewMut2<f32>,
    stats: &mut [Stats],
) {
    let mut rest = batch;
    for (i, stats) in stats.iter_mut().enumerate() {
        let (shard, after) = rest.split_at(shard_rows.min(rest.rows()));
        rest = after;
        let into = if i % 2 == 0 {
            GradInto::Overwrite
        } else {
            GradInto::Add
        };
        let mut row = grads.row_mut(i & !1);
        let grad = row.as_slice_mut().expect("gradient rows are contiguous");
        *stats = model.loss_grad_into(params, shared, shard, ws, grad, into);
    }
    let shards = stats.len();
    crate::reduce::tree_reduce_serial(grads.slice_mut(ndarray::s![..shards, ..]), 1);
}
