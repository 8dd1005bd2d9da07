//! The fixed-shape tree that sums shard gradients.
//!
//! Float addition is not associative, so the sum's bits depend on the order of additions.
//! rayon's `reduce` and `sum` combine in an order that changes with the thread count and even
//! between runs; this tree's order depends only on the number of shards. Row i + s is added
//! into row i for strides s = 1, 2, 4, ...; after the last level row 0 holds the total. The
//! work is split across threads by *columns* (parameter chunks), which leaves every element's
//! order of additions untouched.
//!
//! Also here: `TreeStack`, the same order for leaves that arrive one at a time (a group's
//! shards summed tile by tile by the matrix kernel); `reduce_nodes` and `combine_nodes`,
//! the tree split between MPI ranks and finished across them with the same additions; and
//! `squared_norm_chunked`, |g|^2 over fixed chunks for the noise-scale estimate.

use ndarray::{ArrayViewMut2, Axis, Zip};

use crate::cluster::Node;
use rayon::prelude::*;

/// Parameters per parallel task: small enough that a chunk of every shard row stays in L2
/// while its whole tree runs, large enough to amortise the task.
pub const REDUCE_CHUNK: usize = 8 * 1024;

/// Sums rows `0..n_rows` of `grads` into row 0, parallel over column chunks when the rows
/// are long. The result does not depend on the thread count.
pub fn tree_reduce(grads: ArrayViewMut2<f32>, n_rows: usize) {
    tree_reduce_above(grads, n_rows, 0);
}

/// `tree_reduce` when its bottom `done` levels are summed already (by shards run in groups of
/// 2^done: `ShardQueue::in_groups`).
pub fn tree_reduce_above(grads: ArrayViewMut2<f32>, n_rows: usize, done: u32) {
    if n_rows <= 1 << done {
        return;
    }
    let mut grads = grads;
    by_column_chunks(grads.slice_mut(ndarray::s![..n_rows, ..]), |rows| {
        tree_reduce_serial(rows, done)
    });
}

/// Runs `f` on chunks of `REDUCE_CHUNK` columns in parallel when the rows are long, else on
/// the whole: every element's additions happen in the same order either way.
fn by_column_chunks(mut rows: ArrayViewMut2<f32>, f: impl Fn(ArrayViewMut2<f32>) + Send + Sync) {
    if rows.ncols() >= 2 * REDUCE_CHUNK {
        rows.axis_chunks_iter_mut(Axis(1), REDUCE_CHUNK)
            .into_par_iter()
            .for_each(f);
    } else {
        f(rows);
    }
}

/// `tree_reduce`, also returning |row 0|^2 after the sum (for the noise-scale estimate),
/// computed per chunk while the chunk is in cache and added in chunk order. `partials` is
/// scratch reused across calls.
pub fn tree_reduce_with_norm(
    grads: ArrayViewMut2<f32>,
    n_rows: usize,
    partials: &mut Vec<f64>,
) -> f64 {
    let mut grads = grads;
    let mut rows = grads.slice_mut(ndarray::s![..n_rows.max(1), ..]);
    let chunk_norm = |mut chunk: ArrayViewMut2<f32>| {
        if chunk.nrows() > 1 {
            tree_reduce_serial(chunk.view_mut(), 0);
        }
        squared_norm(chunk.row(0).as_slice().expect("rows are contiguous"))
    };
    rows.axis_chunks_iter_mut(Axis(1), REDUCE_CHUNK)
        .into_par_iter()
        .map(chunk_norm)
        .collect_into_vec(partials);
    partials.iter().sum()
}

/// Sums, for each of `nodes` (a run of the tree over `n` shards whose shard `first` is row 0 of
/// `grads`), its shard rows with the tree, leaving the node's sum in the node's first row:
/// the value the single-process tree has there once it has summed that node.
pub fn reduce_nodes(grads: ArrayViewMut2<f32>, nodes: &[Node], first: usize, n: usize) {
    let Some(last) = nodes.last() else {
        return;
    };
    let mut grads = grads;
    let rows = grads.slice_mut(ndarray::s![..last.end(n) - first, ..]);
    by_column_chunks(rows, |mut chunk| {
        for node in nodes {
            let rows = node.start - first..node.end(n) - first;
            tree_reduce_serial(chunk.slice_mut(ndarray::s![rows, ..]), 0);
        }
    });
}

/// Finishes the tree: row j of `rows` holds the sum of `nodes[j]`, and `nodes` are whole
/// nodes covering all `n` shards in order. Leaves the total in row 0, computed with exactly
/// the additions `tree_reduce` makes above those nodes, so the bits match it. `schedule`
/// is scratch reused across calls.
pub fn combine_nodes(
    rows: ArrayViewMut2<f32>,
    nodes: &[Node],
    n: usize,
    schedule: &mut CombineSchedule,
) {
    schedule.plan(nodes, n);
    let pairs = &schedule.pairs;
    if pairs.is_empty() {
        return;
    }
    by_column_chunks(rows, |mut chunk| {
        for &(dst, src) in pairs {
            let (mut d, s) = chunk.multi_slice_mut((ndarray::s![dst, ..], ndarray::s![src, ..]));
            Zip::from(&mut d).and(&s).for_each(|d, &s| *d += s);
        }
    });
}

/// The additions that finish a tree from given nodes, as (destination row, source row)
/// pairs in order; its buffers are reused so a step allocates nothing.
#[derive(Debug, Default)]
pub struct CombineSchedule {
    pairs: Vec<(usize, usize)>,
    /// Per row: the level its value has reached, and whether it is still to be read.
    state: Vec<(u32, bool)>,
}

impl CombineSchedule {
    pub fn with_capacity(nodes: usize) -> Self {
        CombineSchedule {
            pairs: Vec::with_capacity(nodes),
            state: Vec::with_capacity(nodes),
        }
    }

    /// Replays the tree level by level: at level m, a row starting at a multiple of 2^(m+1)
    /// that has reached level m takes in the next live row (its right sibling), if the tree
    /// has one; rows that already hold a higher node wait.
    fn plan(&mut self, nodes: &[Node], n: usize) {
        self.pairs.clear();
        self.state.clear();
        self.state
            .extend(nodes.iter().map(|node| (node.level, true)));
        let mut level = 0u32;
        while (1usize << level) < n {
            let size = 1usize << level;
            for j in 0..nodes.len() {
                let (reached, live) = self.state[j];
                if !live || reached != level || !nodes[j].start.is_multiple_of(2 * size) {
                    continue;
                }
                if nodes[j].start + size < n {
                    let k = (j + 1..nodes.len())
                        .find(|&k| self.state[k].1)
                        .expect("the right sibling is a later node");
                    debug_assert_eq!(nodes[k].start, nodes[j].start + size);
                    debug_assert_eq!(self.state[k].0, level);
                    self.pairs.push((j, k));
                    self.state[k].1 = false;
                }
                self.state[j].0 = level + 1;
            }
            level += 1;
        }
    }
}

/// |v|^2 by chunks of `REDUCE_CHUNK` (in parallel when asked) summed in chunk order: the
/// same bits on any thread count, and as the norm that `tree_reduce_with_norm` returns for
/// the same sum. The noise scale and gradient clipping both take it.
pub fn squared_norm_chunked(v: &[f32], partials: &mut Vec<f64>, parallel: bool) -> f64 {
    if parallel {
        v.par_chunks(REDUCE_CHUNK)
            .map(squared_norm)
            .collect_into_vec(partials);
    } else {
        partials.clear();
        partials.extend(v.chunks(REDUCE_CHUNK).map(squared_norm));
    }
    partials.iter().sum()
}

widest!(
    /// |v|^2 in f64 (`squared_norm_lanes`), built for AVX-512 where the CPU has it: W1's norm
    /// for clipping took 72 us a step on one thread in the baseline's two-wide f64 vectors.
    squared_norm(v: &[f32]) -> f64 => squared_norm_lanes
);

/// |v|^2 in f64: sixteen partial sums (so the loop vectorises instead of waiting on one
/// chain of additions), combined in a fixed order, so the result depends on `v` only, at
/// any vector width (`squared_norm`).
#[inline(always)]
fn squared_norm_lanes(v: &[f32]) -> f64 {
    let mut partial = [0.0f64; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (p, &x) in partial.iter_mut().zip(chunk) {
            *p += f64::from(x) * f64::from(x);
        }
    }
    for (p, &x) in partial.iter_mut().zip(rest) {
        *p += f64::from(x) * f64::from(x);
    }
    partial.iter().sum()
}

/// dst += src, element by element: the tree's addition, for a sum formed apart (see
/// `model::GradInto::Add`).
#[inline]
pub fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// The tree's levels above the bottom `done` ones (whose sums are in their rows already), on
/// this thread.
pub(crate) fn tree_reduce_serial(mut rows: ArrayViewMut2<f32>, done: u32) {
    let n_rows = rows.nrows();
    let mut stride = 1 << done;
    while stride < n_rows {
        let mut i = 0;
        while i + stride < n_rows {
            let (mut dst, src) =
                rows.multi_slice_mut((ndarray::s![i, ..], ndarray::s![i + stride, ..]));
            Zip::from(&mut dst).and(&src).for_each(|d, &s| *d += s);
            i += 2 * stride;
        }
        stride *= 2;
    }
}

/// The tree's additions for leaves that arrive one at a time, in order, with at most
/// `tree_slots(n)` partial sums alive: what `tree_reduce` computes over n rows, for callers
/// that form the leaves themselves and keep the partial sums small and close (a product's
/// tile in L1: `gemm::gemm_segments`; a group of shards' bias sums). A leaf goes into slot
/// `next_slot()`; `push` then adds every completed pair (slot `dst` += slot `src`, through
/// the caller's `add`), `finish` what is left. The total ends in slot 0. The stack itself
/// only counts: a caller may ask `push` which additions a leaf completes before it forms
/// the leaf, and make them on its way (`gemm`'s tiles add them in registers).
///
/// Why the order matches: the tree adds row i + s into row i for strides s = 1, 2, 4, ...,
/// so two partial sums meet when both cover a whole aligned block of the same size (equal
/// levels, merged on `push`), and a ragged end is folded in from the right (`finish`).
#[derive(Debug, Clone, Copy)]
pub struct TreeStack {
    /// Each partial sum's level (it sums 2^level leaves while it waits to merge); one per
    /// bit of a leaf count, made anew for every tile of a product, so bytes.
    levels: [u8; usize::BITS as usize + 1],
    depth: usize,
}

impl Default for TreeStack {
    fn default() -> Self {
        TreeStack {
            levels: [0; usize::BITS as usize + 1],
            depth: 0,
        }
    }
}

/// Slot `dst` += slot `src` of `slots` (slots of `len` values end to end, `dst < src`): the
/// addition `TreeStack` asks of callers that keep their partial sums in one buffer.
#[inline(always)]
pub fn add_slot(slots: &mut [f32], len: usize, dst: usize, src: usize) {
    let (below, above) = slots.split_at_mut(src * len);
    add_into(&mut below[dst * len..(dst + 1) * len], &above[..len]);
}

/// Slots a `TreeStack` over `n` leaves may use at once: before leaf i's merges, one per set
/// bit of i, and the leaf's own.
pub const fn tree_slots(n: usize) -> usize {
    if n <= 1 {
        1
    } else {
        (n - 1).ilog2() as usize + 2
    }
}

impl TreeStack {
    /// Where the next leaf goes.
    #[inline(always)]
    pub fn next_slot(&self) -> usize {
        self.depth
    }

    /// Records the leaf written to `next_slot()` and adds every pair it completes.
    #[inline(always)]
    pub fn push(&mut self, mut add: impl FnMut(usize, usize)) {
        self.levels[self.depth] = 0;
        self.depth += 1;
        while self.depth >= 2 && self.levels[self.depth - 1] == self.levels[self.depth - 2] {
            add(self.depth - 2, self.depth - 1);
            self.levels[self.depth - 2] += 1;
            self.depth -= 1;
        }
    }

    /// Adds the partial sums left, the rightmost first; the total is then in slot 0.
    #[inline(always)]
    pub fn finish(&mut self, mut add: impl FnMut(usize, usize)) {
        while self.depth >= 2 {
            add(self.depth - 2, self.depth - 1);
            self.depth -= 1;
        }
        self.depth = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn the_squared_norm_has_the_baseline_bits_at_any_vector_width() {
        for n in [0usize, 1, 15, 16, 17, 1000, 16 * 1024 + 5] {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 10f32.powi((i % 11) as i32 - 5))
                .collect();
            assert_eq!(
                squared_norm(&v).to_bits(),
                squared_norm_lanes(&v).to_bits(),
                "{n}"
            );
            let exact: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            assert!((squared_norm(&v) - exact).abs() <= 1e-12 * exact, "{n}");
        }
    }

    #[test]
    fn tree_order_for_three_rows_is_row0_plus_row1_then_plus_row2() {
        // With 3 rows the tree computes (r0 + r1) + r2; pick values where that differs from
        // r0 + (r1 + r2) in f32: 1e8 + (-1e8) + 1 = 1, while 1e8 + (-1e8 + 1) = 0.
        let mut g = Array2::from_shape_vec((3, 1), vec![1e8f32, -1e8, 1.0]).unwrap();
        tree_reduce(g.view_mut(), 3);
        assert_eq!(g[[0, 0]], 1.0);
    }

    /// Values whose sums depend on the order of additions at every level.
    fn adversarial(n: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_fn((n, cols), |(i, j)| {
            let x = ((i * 7919 + j * 104_729) % 1000) as f32 / 7.0;
            if (i + j) % 3 == 0 {
                x * 1e7
            } else {
                -x * 1e-3 + 1.0
            }
        })
    }

    #[test]
    fn leaves_summed_as_they_arrive_give_the_tree_bits() {
        for n in 1..70 {
            let rows = adversarial(n, 5);
            let mut tree = rows.clone();
            tree_reduce(tree.view_mut(), n);
            let mut slots = Array2::<f32>::zeros((tree_slots(n), 5));
            let mut stack = TreeStack::default();
            let mut deepest = 0;
            let add = |slots: &mut Array2<f32>, dst: usize, src: usize| {
                let (mut d, s) =
                    slots.multi_slice_mut((ndarray::s![dst, ..], ndarray::s![src, ..]));
                d += &s;
            };
            for row in rows.rows() {
                let slot = stack.next_slot();
                deepest = deepest.max(slot + 1);
                slots.row_mut(slot).assign(&row);
                stack.push(|d, s| add(&mut slots, d, s));
            }
            stack.finish(|d, s| add(&mut slots, d, s));
            assert!(deepest <= tree_slots(n), "n = {n}: {deepest} slots");
            let (got, want) = (slots.row(0), tree.row(0));
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "n = {n}: {got} against {want}"
            );
        }
    }

    #[test]
    fn nodes_summed_per_rank_then_combined_give_the_single_process_bits() {
        use crate::cluster::{even_split, tree_nodes};
        for cols in [3, 2 * REDUCE_CHUNK + 5] {
            for n in 1..34 {
                let grads = adversarial(n, cols);
                let mut single = grads.clone();
                tree_reduce(single.view_mut(), n);
                for size in 1..6 {
                    // Each rank sums its nodes from its own rows; the nodes' sums are stacked.
                    let mut nodes = Vec::new();
                    let mut stacked = Vec::new();
                    for rank in 0..size {
                        let run = even_split(n, rank, size);
                        let first = nodes.len();
                        tree_nodes(run.clone(), n, &mut nodes);
                        let mut mine = grads.slice(ndarray::s![run.clone(), ..]).to_owned();
                        reduce_nodes(mine.view_mut(), &nodes[first..], run.start, n);
                        for node in &nodes[first..] {
                            stacked.extend(mine.row(node.start - run.start).iter().copied());
                        }
                    }
                    let mut rows = Array2::from_shape_vec((nodes.len(), cols), stacked).unwrap();
                    let mut schedule = CombineSchedule::default();
                    combine_nodes(rows.view_mut(), &nodes, n, &mut schedule);
                    let same = rows
                        .row(0)
                        .iter()
                        .zip(single.row(0))
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "n {n}, {size} ranks, {cols} columns");
                }
            }
        }
    }
}
