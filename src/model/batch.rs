//! The rows one shard works on, as a model receives them, and gathering them.
//!
//! A shuffled batch's rows are scattered over the dataset. The trainer hands a model the
//! dataset and the shard's row indices rather than copying the rows first: a model whose
//! work per row is a pass or two over it (linear and logistic regression) reads each row
//! where it lies, at streaming speed with prefetching, while a model built on matrix
//! products calls `contiguous` to gather them into its own block. Evaluation and tests hand
//! over contiguous blocks directly.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

/// Features `(n, d)` (row-major) and targets `(n,)` of a block of rows, or of a dataset
/// together with the indices of the rows that make up the batch. Class targets are the
/// exact integers 0..k stored as f32.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    x: ArrayView2<'a, f32>,
    y: ArrayView1<'a, f32>,
    idx: Option<&'a [usize]>,
}

/// How many rows ahead a pass over an indexed batch prefetches.
pub const PREFETCH_ROWS: usize = 8;

impl<'a> Batch<'a> {
    /// Every row of `x`, in order. Panics unless `x` is row-major and `y` has a target per row.
    pub fn block(x: ArrayView2<'a, f32>, y: ArrayView1<'a, f32>) -> Self {
        assert_eq!(x.nrows(), y.len(), "one target per row");
        assert!(x.is_standard_layout(), "rows must be contiguous");
        Batch { x, y, idx: None }
    }

    /// Rows `idx` of `x` (and their targets), in that order.
    pub fn indexed(x: ArrayView2<'a, f32>, y: ArrayView1<'a, f32>, idx: &'a [usize]) -> Self {
        assert_eq!(x.nrows(), y.len(), "one target per row");
        assert!(x.is_standard_layout(), "rows must be contiguous");
        assert!(idx.iter().all(|&i| i < x.nrows()), "row index out of range");
        Batch {
            x,
            y,
            idx: Some(idx),
        }
    }

    /// Its first `rows` rows and the rest.
    pub fn split_at(&self, rows: usize) -> (Batch<'a>, Batch<'a>) {
        match self.idx {
            Some(idx) => {
                let (a, b) = idx.split_at(rows);
                (
                    Batch {
                        idx: Some(a),
                        ..*self
                    },
                    Batch {
                        idx: Some(b),
                        ..*self
                    },
                )
            }
            None => {
                let (xa, xb) = self.x.split_at(ndarray::Axis(0), rows);
                let (ya, yb) = self.y.split_at(ndarray::Axis(0), rows);
                (Batch::block(xa, ya), Batch::block(xb, yb))
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.idx.map_or(self.x.nrows(), <[usize]>::len)
    }

    pub fn d(&self) -> usize {
        self.x.ncols()
    }

    /// Features of the batch's row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [f32] {
        let i = self.idx.map_or(r, |idx| idx[r]);
        let d = self.x.ncols();
        let all: &'a [f32] = self
            .x
            .to_slice()
            .expect("row-major, checked at construction");
        &all[i * d..(i + 1) * d]
    }

    #[inline]
    pub fn target(&self, r: usize) -> f32 {
        self.y[self.idx.map_or(r, |idx| idx[r])]
    }

    /// Hints the cache about row `r`, if the batch has one; a no-op for contiguous blocks,
    /// which the hardware prefetcher already follows.
    #[inline]
    pub fn prefetch(&self, r: usize) {
        if self.idx.is_some() && r < self.rows() {
            prefetch_row(self.row(r));
        }
    }

    /// The features as a `(rows, d)` matrix and the targets, copying indexed rows into the
    /// first rows of `x_buf` and `y_buf` (which need at least `rows()` rows).
    pub fn contiguous<'b>(
        &self,
        mut x_buf: ArrayViewMut2<'b, f32>,
        mut y_buf: ArrayViewMut1<'b, f32>,
    ) -> (ArrayView2<'b, f32>, ArrayView1<'b, f32>)
    where
        'a: 'b,
    {
        let Some(idx) = self.idx else {
            return (self.x, self.y);
        };
        let _gather = tracing::trace_span!("gather", rows = idx.len()).entered();
        let (rows, d) = (idx.len(), self.d());
        let dst = x_buf.as_slice_mut().expect("buffers are row-major");
        for r in 0..rows {
            self.prefetch(r + PREFETCH_ROWS);
            dst[r * d..(r + 1) * d].copy_from_slice(self.row(r));
            y_buf[r] = self.target(r);
        }
        let x = ArrayView2::from_shape(
            (rows, d),
            &x_buf.into_slice().expect("row-major")[..rows * d],
        )
        .expect("rows * d values");
        let y = ArrayView1::from(&y_buf.into_slice().expect("contiguous")[..rows]);
        (x, y)
    }
}

/// Hints every cache line of `row` into L2 (`_MM_HINT_T1`: the row is read soon, not next).
#[inline(always)]
pub fn prefetch_row(row: &[f32]) {
    // Every cache line the row touches: a row need not start on a line (W3's 40-byte rows
    // straddle two lines in three cases of eight), so one hint per 16 values from its start
    // can miss its last line.
    #[cfg(target_arch = "x86_64")]
    if let Some(last) = row.last() {
        let (start, end) = (row.as_ptr() as usize, last as *const f32 as usize);
        let mut at = start & !63;
        while at <= end {
            // SAFETY: prefetching is a hint and never faults; the line holds part of the row.
            unsafe {
                std::arch::x86_64::_mm_prefetch(at as *const i8, std::arch::x86_64::_MM_HINT_T1)
            };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}
