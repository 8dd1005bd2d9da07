//! The fixed-shape tree that sums shard gradients.
//!
//! Float addition is not associative, so the sum's bits depend on the order of additions.
//! rayon's `reduce` and `sum` combine in an order that changes with the thread count and even
//! between runs; this tree's order depends only on the number of shards. Row i + s is added
//! into row i for strides s = 1, 2, 4, ...; after the last level row 0 holds the total. The
//! work is split across threads by *columns* (parameter chunks), which leaves every element's
//! order of additions untouched.

use ndarray::{ArrayViewMut2, Axis, Zip};

use crate::noise::squared_norm;
use rayon::prelude::*;

/// Parameters per parallel task: small enough that a chunk of every shard row stays in L2
/// while its whole tree runs, large enough to amortise the task.
pub const REDUCE_CHUNK: usize = 8 * 1024;

/// Sums rows `0..n_rows` of `grads` into row 0, parallel over column chunks when the rows
/// are long. The result does not depend on the thread count.
pub fn tree_reduce(grads: ArrayViewMut2<f32>, n_rows: usize) {
    if n_rows <= 1 {
        return;
    }
    let mut grads = grads;
    let mut rows = grads.slice_mut(ndarray::s![..n_rows, ..]);
    if rows.ncols() >= 2 * REDUCE_CHUNK {
        rows.axis_chunks_iter_mut(Axis(1), REDUCE_CHUNK)
            .into_par_iter()
            .for_each(tree_reduce_serial);
    } else {
        tree_reduce_serial(rows);
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
            tree_reduce_serial(chunk.view_mut());
        }
        squared_norm(chunk.row(0).as_slice().expect("rows are contiguous"))
    };
    rows.axis_chunks_iter_mut(Axis(1), REDUCE_CHUNK)
        .into_par_iter()
        .map(chunk_norm)
        .collect_into_vec(partials);
    partials.iter().sum()
}

fn tree_reduce_serial(mut rows: ArrayViewMut2<f32>) {
    let n_rows = rows.nrows();
    let mut stride = 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn tree_order_for_three_rows_is_row0_plus_row1_then_plus_row2() {
        // With 3 rows the tree computes (r0 + r1) + r2; pick values where that differs from
        // r0 + (r1 + r2) in f32: 1e8 + (-1e8) + 1 = 1, while 1e8 + (-1e8 + 1) = 0.
        let mut g = Array2::from_shape_vec((3, 1), vec![1e8f32, -1e8, 1.0]).unwrap();
        tree_reduce(g.view_mut(), 3);
        assert_eq!(g[[0, 0]], 1.0);
    }
}
