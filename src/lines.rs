//! Buffers of f32 whose first value starts a 64-byte cache line. The allocator aligns large
//! blocks to 16 bytes only, so a 16-wide (AVX-512) load or store from a plain `Vec<f32>`
//! straddles two lines every time, and one that straddles costs about two. From here: the
//! kernel's packed panels and scratch, gradient rows and activations, the parameters and the
//! optimizer's state, where it was measured to matter. (The data set's rows were measured
//! too, aligned or 16 bytes off, and ran alike: a row's gather is a few % of a step.)

use ndarray::{Array1, Array2};

/// f32s per 64-byte cache line.
pub const LINE: usize = 16;

/// Index of the first value of `buf` that starts a cache line.
fn first_on_line(buf: &[f32]) -> usize {
    (buf.as_ptr() as usize / 4).wrapping_neg() % LINE
}

/// A zeroed `rows x cols` array whose first value starts a cache line, and so every row
/// when `cols` is a multiple of `LINE`: for buffers the kernel writes as C (gradient rows,
/// activations), where a tile's loads and stores then touch two lines per row, not three.
/// Measured on the weight gradient 784 x 64 x 256 adding into C: 163-170 GFLOP/s aligned
/// against 155-164 with C 16 bytes off.
pub fn zeros_on_lines(rows: usize, cols: usize) -> Array2<f32> {
    let len = rows * cols;
    let whole = Array1::<f32>::zeros(len + LINE - 1);
    let start = first_on_line(whole.as_slice().expect("a new array is contiguous"));
    whole
        .slice_move(ndarray::s![start..start + len])
        .into_shape_with_order((rows, cols))
        .expect("rows x cols values")
}

/// A slice of f32 that starts on a cache line, read and written as `[f32]`. Measured with
/// the 8 x 32 matrix kernel on one thread: a 256-step panel read from L1 86-87% of peak
/// aligned against 82-85% 16 bytes off, a 1024-step one (out of L1) 86% against 73%. The
/// parameters and the optimizer's state: Adam at W1 B = 32 on one thread, whose update
/// streams four buffers that all straddled, 37,800-43,000 -> 44,900-47,200 examples/s.
#[derive(Default)]
pub struct LineBuf {
    buf: Vec<f32>,
    /// Index in `buf` of the first aligned value.
    start: usize,
    len: usize,
}

impl LineBuf {
    /// `len` zeros (from pages the system hands out zeroed, where the allocator maps them:
    /// no pass writes them first).
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return LineBuf::default();
        }
        let buf = vec![0.0f32; len + LINE - 1];
        let start = first_on_line(&buf);
        LineBuf { buf, start, len }
    }

    /// Makes room for at least `len` values, for scratch space only: what it held is kept
    /// only while no reallocation is needed (every user rewrites the buffer before reading),
    /// and a buffer already longer stays so.
    pub(crate) fn grow(&mut self, len: usize) {
        if self.len >= len {
            return;
        }
        if self.buf.len() < len + LINE - 1 {
            self.buf.resize(len + LINE - 1, 0.0);
        }
        self.start = first_on_line(&self.buf);
        self.len = len;
    }
}

impl std::ops::Deref for LineBuf {
    type Target = [f32];

    #[inline]
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for LineBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for LineBuf {
    /// The values, as a slice's: the padding before the first line is no one's business.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self[..].fmt(f)
    }
}

impl Clone for LineBuf {
    /// A clone is aligned anew: its allocation lies elsewhere.
    fn clone(&self) -> Self {
        let mut copy = LineBuf::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_on_cache_lines() {
        let on_line = |p: *const f32| (p as usize).is_multiple_of(64);
        let mut buf = LineBuf::default();
        // Small, then large enough to come from a fresh mapping: aligned after every move.
        for len in [1, 5, 100, 1 << 16, 1 << 20] {
            buf.grow(len);
            assert!(on_line(buf.as_ptr()), "len {len}");
            assert_eq!(buf.len(), len);
        }
        buf[7] = 3.0;
        let copy = buf.clone();
        assert!(on_line(copy.as_ptr()));
        assert_eq!(&copy[..], &buf[..]);
        assert!(LineBuf::zeroed(0).is_empty());
        for len in [1, 269_322, 1 << 20] {
            let zeros = LineBuf::zeroed(len);
            assert_eq!(zeros.len(), len);
            assert!(on_line(zeros.as_ptr()), "len {len}");
            assert!(zeros.iter().all(|&v| v == 0.0));
        }
        for (rows, cols) in [(1, 1), (3, 10), (64, 784), (5, 269_328)] {
            let a = zeros_on_lines(rows, cols);
            assert_eq!(a.dim(), (rows, cols));
            assert!(a.iter().all(|&v| v == 0.0));
            for r in 0..rows {
                let at = a.row(r).as_ptr();
                assert_eq!(
                    on_line(at),
                    r == 0 || cols.is_multiple_of(LINE),
                    "{rows} x {cols}"
                );
            }
        }
    }
}
