//! Training across processes (MPI ranks): which shards of each batch a rank computes, and how
//! the ranks' partial sums meet so that every rank takes the identical step.
//!
//! Every rank holds the whole model, derives the same permutation and cuts each global batch
//! into the same shards as a single process would. Rank r computes the contiguous run of
//! shards `even_split(n, r, R)`. In the single-process tree (`reduce.rs`) the node at
//! level k starting at shard i is the sum of shards `i .. i + 2^k`, formed in a fixed order;
//! a run of shards splits into a few such whole nodes (`tree_nodes`), which the rank sums with
//! the same tree. The ranks then exchange slices of those node sums, each finishes the tree
//! over all nodes for its share of the parameters (`reduce::combine_nodes`) by exactly the
//! additions the single process makes, and they gather the shares (see `Exchange`). So the
//! step, and the saved parameters, are the same bits for any number of ranks and threads, for
//! about the traffic of a ring all-reduce. `Reduction::Fast` instead sums each rank's shards
//! locally and calls the MPI all-reduce, whose order MPI does not fix.
//!
//! The transport is the `Collective` trait; `mpi` (behind the `mpi` cargo feature)
//! implements it with MPI. Tests implement it with threads.

#[cfg(feature = "mpi")]
pub mod mpi;

use std::num::NonZeroUsize;
use std::ops::Range;

use ndarray::ArrayViewMut2;
use tracing::trace_span;

use crate::error::{Error, Result};
use crate::model::Stats;
use crate::reduce::{CombineSchedule, combine_nodes, reduce_nodes, tree_reduce};

/// How the ranks' gradients are combined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The single-process tree, exactly: identical bits for any rank and thread count.
    #[default]
    Exact,
    /// Each rank sums its shards, then MPI's all-reduce adds the ranks' sums in an order of
    /// the library's choosing: one collective instead of two, about the same traffic, bits
    /// that may change with the rank count.
    Fast,
}

impl std::str::FromStr for Reduction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Reduction::Exact),
            "fast" => Ok(Reduction::Fast),
            other => Err(format!(
                "unknown reduction {other:?}: expected exact or fast"
            )),
        }
    }
}

/// The few collective operations a data-parallel step needs. Every rank calls the same
/// operations in the same order with the same counts.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Concatenates every rank's `send` in rank order into every rank's `recv`; rank r
    /// sends `counts[r]` elements, placed at `displs[r]`.
    fn all_gather_f32(&self, send: &[f32], counts: &[i32], displs: &[i32], recv: &mut [f32]);
    /// `all_gather_f32` for f64.
    fn all_gather_f64(&self, send: &[f64], counts: &[i32], displs: &[i32], recv: &mut [f64]);
    /// Personalised exchange: rank r sends `send[send_displs[q]..][..send_counts[q]]` to rank
    /// q, and places what rank r sent it at `recv[recv_displs[r]..][..recv_counts[r]]`.
    fn all_to_all_f32(
        &self,
        send: &[f32],
        send_counts: &[i32],
        send_displs: &[i32],
        recv: &mut [f32],
        recv_counts: &[i32],
        recv_displs: &[i32],
    );
    /// Elementwise sum over ranks of `send` into every rank's `recv`.
    fn all_reduce_sum(&self, send: &[f32], recv: &mut [f32]);
    /// Whether any rank passed true: every rank leaves a run at the same step.
    fn any(&self, flag: bool) -> bool;
}

/// One rank's side of every step's exchange: the plan of who sends what to whom, and
/// buffers sized once so that steps allocate nothing.
///
/// The exact reduction is a reduce-scatter then an all-gather, like a ring all-reduce, but
/// with the tree's order: the parameters are split into one column range per rank; every
/// rank sends each of its node sums' slice of range q to rank q (all-to-all); rank q then
/// holds every node's slice of its range, in shard order, finishes the tree on it, and the
/// ranks gather the finished ranges. Each element is still summed by the single-process
/// tree's additions, and a rank receives about `2 (R - 1) / R` gradients per step when each
/// rank's run is one node (R a power of two dividing the shard count), a little more
/// otherwise.
pub struct Exchange {
    comm: Box<dyn Collective>,
    reduction: Reduction,
    n_params: usize,
    /// Every rank's nodes for the current batch, in shard order; `mine` indexes this rank's.
    nodes: Vec<Node>,
    mine: Range<usize>,
    shards: Range<usize>,
    n_shards: usize,
    /// Element counts and offsets, per rank, of: the node slices sent and received, the
    /// finished ranges gathered, and the shard stats gathered.
    send_counts: Vec<i32>,
    send_displs: Vec<i32>,
    recv_counts: Vec<i32>,
    recv_displs: Vec<i32>,
    range_counts: Vec<i32>,
    range_displs: Vec<i32>,
    stat_counts: Vec<i32>,
    stat_displs: Vec<i32>,
    /// This rank's node sums, cut by destination range (exact), or its shards' sum (fast).
    send: Vec<f32>,
    /// Every node's slice of this rank's range, in shard order (exact only).
    parts: Vec<f32>,
    /// The batch's gradient sum, the same on every rank.
    total: Vec<f32>,
    stats_send: Vec<f64>,
    stats_recv: Vec<f64>,
    schedule: CombineSchedule,
}

/// Per shard: loss sum, correct answers, rows, |gradient sum|^2.
pub const SHARD_STATS: usize = 4;

impl Exchange {
    /// Plans for batches of up to `max_shards` shards of a model of `n_params` parameters.
    pub fn new(
        comm: Box<dyn Collective>,
        reduction: Reduction,
        max_shards: usize,
        n_params: usize,
    ) -> Result<Self> {
        let size = comm.size();
        let max_nodes = max_nodes(max_shards, size);
        let rank_nodes = max_nodes_of_rank(max_shards, size);
        let widest = n_params.div_ceil(size);
        let (send_len, parts_len) = match reduction {
            Reduction::Exact => (rank_nodes * n_params, max_nodes * widest),
            Reduction::Fast => (n_params, 0),
        };
        if send_len.max(parts_len).max(max_shards * SHARD_STATS) > i32::MAX as usize {
            return Err(Error::config(
                "model",
                format!(
                    "{n_params} parameters x {rank_nodes} tree nodes exceed one MPI message \
                     (2^31 elements); use fewer shards (train.shard_rows) or --reduction fast"
                ),
            ));
        }
        Ok(Exchange {
            comm,
            reduction,
            n_params,
            nodes: Vec::with_capacity(max_nodes),
            mine: 0..0,
            shards: 0..0,
            n_shards: 0,
            send_counts: vec![0; size],
            send_displs: vec![0; size],
            recv_counts: vec![0; size],
            recv_displs: vec![0; size],
            range_counts: (0..size)
                .map(|q| even_split(n_params, q, size).len() as i32)
                .collect(),
            range_displs: (0..size)
                .map(|q| even_split(n_params, q, size).start as i32)
                .collect(),
            stat_counts: vec![0; size],
            stat_displs: vec![0; size],
            send: vec![0.0; send_len],
            parts: vec![0.0; parts_len],
            total: vec![0.0; n_params],
            stats_send: vec![0.0; max_shards * SHARD_STATS],
            stats_recv: vec![0.0; max_shards * SHARD_STATS],
            schedule: CombineSchedule::with_capacity(max_nodes),
        })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Plans a batch of `n_shards` shards; returns the shards this rank computes.
    pub fn plan(&mut self, n_shards: usize) -> Range<usize> {
        let (rank, size) = (self.comm.rank(), self.comm.size());
        self.nodes.clear();
        self.n_shards = n_shards;
        // Counts fit in i32: `new` checked the largest batch.
        let my_range = self.range_counts[rank];
        let (mut stat_at, mut received) = (0i32, 0i32);
        for r in 0..size {
            let run = even_split(n_shards, r, size);
            let first = self.nodes.len();
            tree_nodes(run.clone(), n_shards, &mut self.nodes);
            let their_nodes = self.nodes.len() - first;
            if r == rank {
                self.mine = first..self.nodes.len();
                self.shards = run.clone();
            }
            self.stat_counts[r] = (run.len() * SHARD_STATS) as i32;
            self.stat_displs[r] = stat_at;
            stat_at += self.stat_counts[r];
            self.recv_counts[r] = their_nodes as i32 * my_range;
            self.recv_displs[r] = received;
            received += self.recv_counts[r];
        }
        let mut sent = 0i32;
        for q in 0..size {
            self.send_counts[q] = self.mine.len() as i32 * self.range_counts[q];
            self.send_displs[q] = sent;
            sent += self.send_counts[q];
        }
        self.shards.clone()
    }

    /// Every shard's stats of the batch, in shard order, from this rank's `local` (one
    /// `SHARD_STATS` group per shard it computed).
    pub fn gather_stats(&mut self, local: impl Iterator<Item = [f64; SHARD_STATS]>) -> &[f64] {
        let mut len = 0;
        for (dst, group) in self.stats_send.chunks_exact_mut(SHARD_STATS).zip(local) {
            dst.copy_from_slice(&group);
            len += SHARD_STATS;
        }
        let total = self.n_shards * SHARD_STATS;
        self.comm.all_gather_f64(
            &self.stats_send[..len],
            &self.stat_counts,
            &self.stat_displs,
            &mut self.stats_recv[..total],
        );
        &self.stats_recv[..total]
    }

    /// Sums the batch's gradient over all ranks from this rank's shard rows (row i of
    /// `grads` is shard `plan(..).start + i`); every rank gets the same sum.
    pub fn reduce(&mut self, grads: ArrayViewMut2<f32>) -> &[f32] {
        let p = self.n_params;
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let mut grads = grads;
        match self.reduction {
            Reduction::Exact => {
                let mine = &self.nodes[self.mine.clone()];
                reduce_nodes(grads.view_mut(), mine, self.shards.start, self.n_shards);
                // Node sums cut by destination: for rank q, each node's slice of q's range.
                let mut at = 0;
                for q in 0..size {
                    let cols = even_split(p, q, size);
                    for node in mine {
                        let row = grads.row(node.start - self.shards.start);
                        let row = &row.as_slice().expect("rows are contiguous")[cols.clone()];
                        self.send[at..at + row.len()].copy_from_slice(row);
                        at += row.len();
                    }
                }
                let n_nodes = self.nodes.len();
                let width = self.range_counts[rank] as usize;
                {
                    let _exchange = trace_span!("exchange", what = "node slices").entered();
                    self.comm.all_to_all_f32(
                        &self.send[..at],
                        &self.send_counts,
                        &self.send_displs,
                        &mut self.parts[..n_nodes * width],
                        &self.recv_counts,
                        &self.recv_displs,
                    );
                }
                let rows =
                    ArrayViewMut2::from_shape((n_nodes, width), &mut self.parts[..n_nodes * width])
                        .expect("one slice per node");
                combine_nodes(rows, &self.nodes, self.n_shards, &mut self.schedule);
                let _exchange = trace_span!("exchange", what = "ranges").entered();
                self.comm.all_gather_f32(
                    &self.parts[..width],
                    &self.range_counts,
                    &self.range_displs,
                    &mut self.total,
                );
            }
            Reduction::Fast => {
                let n_local = self.shards.len();
                if n_local == 0 {
                    self.send[..p].fill(0.0);
                } else {
                    tree_reduce(grads.view_mut(), n_local);
                    let row = grads.row(0);
                    self.send[..p].copy_from_slice(row.as_slice().expect("rows are contiguous"));
                }
                let _exchange = trace_span!("exchange", what = "all-reduce").entered();
                self.comm.all_reduce_sum(&self.send[..p], &mut self.total);
            }
        }
        &self.total
    }

    /// Every evaluation block's stats, in block order, from this rank's run of the
    /// `n_blocks` blocks (`even_split(n_blocks, ..)`); `n_blocks * 3` fits an i32.
    pub fn gather_block_stats(&self, local: &[Stats], n_blocks: usize) -> Vec<Stats> {
        let size = self.comm.size();
        let runs = (0..size).map(|r| even_split(n_blocks, r, size));
        let counts: Vec<i32> = runs.clone().map(|run| (run.len() * 3) as i32).collect();
        let displs: Vec<i32> = runs.map(|run| (run.start * 3) as i32).collect();
        let send: Vec<f64> = local.iter().flat_map(Stats::to_f64s).collect();
        let mut all = vec![0.0f64; n_blocks * 3];
        self.comm.all_gather_f64(&send, &counts, &displs, &mut all);
        all.chunks_exact(3).map(Stats::from_f64s).collect()
    }

    /// Whether any rank wants to stop after this step.
    pub fn any(&self, flag: bool) -> bool {
        self.comm.any(flag)
    }

    /// The first rank whose `value` differs from rank 0's, if any; every rank gets the same
    /// answer. (Sent as two exact halves: f64 holds 32 bits exactly.)
    pub fn first_differing(&self, value: u64) -> Option<usize> {
        let size = self.comm.size();
        let send = [(value >> 32) as f64, (value & 0xFFFF_FFFF) as f64];
        let counts = vec![2i32; size];
        let displs: Vec<i32> = (0..size).map(|r| 2 * r as i32).collect();
        let mut all = vec![0.0f64; 2 * size];
        self.comm.all_gather_f64(&send, &counts, &displs, &mut all);
        (1..size).find(|&r| all[2 * r..2 * r + 2] != all[..2])
    }
}

/// A bound on one rank's tree nodes for any batch of up to `max_shards` shards.
fn max_nodes_of_rank(max_shards: usize, size: usize) -> usize {
    let run = max_shards.div_ceil(size.max(1)).max(1);
    (2 * (usize::BITS - run.leading_zeros()) as usize + 1).min(run)
}

/// A bound on the tree nodes of all ranks together, for any batch of up to `max_shards`
/// shards: each rank's run is at most ceil(max_shards / size) shards long, a run of s
/// shards splits into at most 2 log2(s) + 1 nodes, and no node is empty.
pub fn max_nodes(max_shards: usize, size: usize) -> usize {
    (size * max_nodes_of_rank(max_shards, size))
        .min(max_shards)
        .max(1)
}

/// Rank `rank` of `size`'s part of 0..n: a contiguous run, the runs in rank order and as
/// even as can be. The shards a rank computes, the parameters whose exact sum it finishes,
/// the evaluation blocks it runs.
pub fn even_split(n: usize, rank: usize, size: usize) -> Range<usize> {
    n * rank / size..n * (rank + 1) / size
}

/// A node of the reduction tree over `n` shards: the sum of shards
/// `start .. min(start + 2^level, n)`, with `start` a multiple of `2^level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub start: usize,
    pub level: u32,
}

impl Node {
    pub fn end(&self, n: usize) -> usize {
        (self.start + (1usize << self.level)).min(n)
    }
}

/// Appends to `out` the largest whole tree nodes that together cover `shards` (a run of the
/// `n` shards), in shard order.
pub fn tree_nodes(shards: Range<usize>, n: usize, out: &mut Vec<Node>) {
    let mut start = shards.start;
    while start < shards.end {
        let mut level = 0u32;
        loop {
            let size = 1usize << level;
            // The parent starts here, has a right half, and fits in the run.
            let fits = start.is_multiple_of(2 * size)
                && start + size < n
                && (start + 2 * size).min(n) <= shards.end;
            if !fits {
                break;
            }
            level += 1;
        }
        out.push(Node { start, level });
        start = Node { start, level }.end(n);
    }
}

/// The process count an MPI launcher announced in the environment, if this process was
/// started by one: Open MPI's mpirun, a PMI launcher (MPICH's Hydra), MVAPICH, or a PMIx
/// launcher such as `srun --mpi=pmix` (whose count is Slurm's task count). `Some(0)`: a
/// PMIx launcher that left the count out of the environment (MPI itself knows it).
pub fn launcher_size() -> Option<usize> {
    let var = |key: &str| std::env::var(key).ok()?.parse::<usize>().ok();
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"]
        .iter()
        .find_map(|key| var(key))
        .or_else(|| {
            std::env::var_os("PMIX_RANK").map(|_| {
                ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"]
                    .iter()
                    .find_map(|key| var(key))
                    .unwrap_or(0)
            })
        })
}

/// This process's rank as an MPI launcher announced it in the environment, if one started
/// it (before, or without, MPI itself).
pub fn launcher_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "MV2_COMM_WORLD_RANK",
        "PMIX_RANK",
    ]
    .iter()
    .find_map(|key| std::env::var(key).ok()?.parse().ok())
}

/// The default `train.threads`: every core this process may run on. When several ranks of a
/// job share this machine and the launcher did not bind them to cores of their own, they
/// share the cores out evenly instead of each starting one thread per core.
pub fn default_threads() -> NonZeroUsize {
    let allowed = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let local_ranks = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|key| std::env::var(key).ok()?.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    // Bound to cores of its own, a rank uses those; bound to a set it shares (a socket), or
    // not bound, it takes its share of the machine.
    NonZeroUsize::new(allowed.min(online / local_ranks)).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_of_the_ranks_cover_every_shard_once_with_aligned_whole_nodes() {
        for n in 1..70 {
            for size in 1..7 {
                let mut nodes = Vec::new();
                for rank in 0..size {
                    let run = even_split(n, rank, size);
                    let first = nodes.len();
                    tree_nodes(run.clone(), n, &mut nodes);
                    if let (Some(a), Some(b)) = (nodes.get(first), nodes.last()) {
                        assert_eq!((a.start, b.end(n)), (run.start, run.end));
                    }
                }
                assert!(nodes.len() <= max_nodes(n, size));
                for m in [n + 1, 2 * n, 5 * n] {
                    assert!(nodes.len() <= max_nodes(m, size), "n {n} <= max {m}");
                }
                let mut next = 0;
                for node in &nodes {
                    assert_eq!(node.start, next, "n {n} size {size}");
                    assert!(node.start.is_multiple_of(1 << node.level));
                    next = node.end(n);
                }
                assert_eq!(next, n);
            }
        }
        // One rank: the root only. Shards 0..5 of 16 for rank 0 of 3: nodes 0..4 and 4..5.
        let mut nodes = Vec::new();
        tree_nodes(0..13, 13, &mut nodes);
        assert_eq!(nodes, [Node { start: 0, level: 4 }]);
        nodes.clear();
        tree_nodes(even_split(16, 0, 3), 16, &mut nodes);
        assert_eq!(
            nodes,
            [Node { start: 0, level: 2 }, Node { start: 4, level: 0 }]
        );
    }
}
