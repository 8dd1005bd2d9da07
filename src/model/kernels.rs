//! Numerical kernels shared by the models: matrix products into existing buffers, the
//! activations with their derivatives, the heads' stable loss-and-gradient per row, and the
//! row kernels of single-output linear models (a dot product and an axpy over several rows
//! at once, portable and AVX-512, the same bits).
//!
//! Legend: `x` a block's input `(rows, d_in)`, `w` a weight `(d_in, d_out)`, `b` its bias,
//! `z` pre-activations, `a` activations, `dz` = dL/dz, all `(rows, width)` row-major.
//! Every product adds into or overwrites a caller-owned buffer; nothing here allocates.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, s};

use super::gemm::{Accumulate, GemmScratch, PackedB, gemm_packed, gemm_segments};
use super::{Activation, Head, Stats};
use crate::reduce::{TreeStack, add_into, add_slot};

/// z = x w + b, overwriting `z`, then z = act(z) when `act` is given (a hidden layer). The
/// product overwrites z and the bias is added in the activation's pass over it, so z is
/// written once by the product and read and written once after (broadcasting the bias into
/// z for the product to add to cost a pass of its own and a read of z in the product's first
/// k-block).
pub(super) fn affine(
    x: ArrayView2<f32>,
    w: &PackedB,
    w_source: ArrayView2<f32>,
    b: ArrayView1<f32>,
    act: Option<Activation>,
    mut z: ArrayViewMut2<f32>,
    scratch: &mut GemmScratch,
) {
    gemm_packed(x, w, w_source, z.view_mut(), Accumulate::Overwrite, scratch);
    let b = b.as_slice().expect("biases are contiguous");
    for mut row in z.rows_mut() {
        let row = row.as_slice_mut().expect("rows are contiguous");
        // One loop per activation, so that each vectorises on its own.
        match act {
            None => add_into(row, b),
            Some(Activation::Relu) => {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v = (*v + b).max(0.0);
                }
            }
            Some(Activation::Tanh) => {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v = (*v + b).tanh();
                }
            }
            Some(Activation::Sigmoid) => {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v = sigmoid(*v + b);
                }
            }
        }
    }
}

/// gw = x^T dz and gb = column sums of dz: the weight and bias gradients summed over rows,
/// written over (`Overwrite`) or added to what the buffers hold (`AddSum`: each sum formed
/// on its own first). The rows are cut into segments of `seg` (a group's shards), each
/// segment summed on its own and the segments' sums added in the reduction tree's order
/// (`gemm_segments`, `TreeStack`), with `bias_sums` as room for `tree_slots` partial sums
/// of the bias's.
pub(super) fn affine_grad(
    x: ArrayView2<f32>,
    dz: ArrayView2<f32>,
    (gw, mut gb): (ArrayViewMut2<f32>, ArrayViewMut1<f32>),
    mode: Accumulate,
    seg: usize,
    bias_sums: &mut [f32],
    scratch: &mut GemmScratch,
) {
    gemm_segments(x.t(), dz, gw, mode, seg, scratch);
    let (n, rows) = (gb.len(), dz.nrows());
    let mut stack = TreeStack::default();
    for s in 0..rows.div_ceil(seg).max(1) {
        let slot = stack.next_slot();
        let sum = &mut bias_sums[slot * n..(slot + 1) * n];
        sum.fill(0.0);
        let segment = s * seg..(s.saturating_add(1).saturating_mul(seg)).min(rows);
        for row in dz.slice(s![segment, ..]).rows() {
            add_into(sum, row.as_slice().expect("rows are contiguous"));
        }
        stack.push(|d, s| add_slot(bias_sums, n, d, s));
    }
    stack.finish(|d, s| add_slot(bias_sums, n, d, s));
    let total = ArrayView1::from(&bias_sums[..n]);
    match mode {
        Accumulate::Overwrite => gb.assign(&total),
        Accumulate::Add | Accumulate::AddSum => gb += &total,
    }
}

/// dx = dz w^T, overwriting `dx`: the gradient flowing into the layer's input. `wt` is
/// w^T, packed.
pub(super) fn affine_input_grad(
    dz: ArrayView2<f32>,
    wt: &PackedB,
    wt_source: ArrayView2<f32>,
    dx: ArrayViewMut2<f32>,
    scratch: &mut GemmScratch,
) {
    gemm_packed(dz, wt, wt_source, dx, Accumulate::Overwrite, scratch);
}

/// da *= act'(z), written with the activation's output a = act(z), which is what the
/// workspace keeps: relu' = [a > 0], tanh' = 1 - a^2, sigmoid' = a (1 - a).
pub(super) fn activation_backward(act: Activation, a: ArrayView2<f32>, mut da: ArrayViewMut2<f32>) {
    match act {
        // A select rather than a branch, so the loop vectorises.
        Activation::Relu => da.zip_mut_with(&a, |g, &a| *g = if a > 0.0 { *g } else { 0.0 }),
        Activation::Tanh => da.zip_mut_with(&a, |g, &a| *g *= 1.0 - a * a),
        Activation::Sigmoid => da.zip_mut_with(&a, |g, &a| *g *= a * (1.0 - a)),
    }
}

/// Loss sums for the head's outputs `z (rows, n_out)` against targets `y`, and, when `dz` is
/// given, dL_i/dz_i per row. Each row's loss is in the stable form:
/// - MSE: L = (z - y)^2, dL/dz = 2 (z - y);
/// - logistic: L = softplus(z) - y z = max(z, 0) - y z + ln(1 + e^-|z|), dL/dz = sigmoid(z) - y;
/// - softmax: L = logsumexp(z) - z_y, dL/dz_j = softmax(z)_j - [j = y].
pub(super) fn head_loss(
    head: Head,
    z: ArrayView2<f32>,
    y: ArrayView1<f32>,
    mut dz: Option<ArrayViewMut2<f32>>,
) -> Stats {
    let mut stats = Stats {
        rows: z.nrows() as u64,
        ..Stats::default()
    };
    for (i, (z_row, &target)) in z.rows().into_iter().zip(y.iter()).enumerate() {
        match head {
            Head::Mse | Head::Logistic => {
                let (loss, grad, correct) = scalar_head(head, z_row[0], target);
                stats.loss_sum += f64::from(loss);
                stats.n_correct += u64::from(correct);
                if let Some(dz) = dz.as_mut() {
                    dz[[i, 0]] = grad;
                }
            }
            Head::Softmax { .. } => {
                let class = target as usize;
                let lse = log_sum_exp(z_row);
                stats.loss_sum += f64::from(lse - z_row[class]);
                let predicted = argmax(z_row.as_slice().expect("rows of a row-major block"));
                stats.n_correct += u64::from(predicted == class);
                if let Some(dz) = dz.as_mut() {
                    let mut dz_row = dz.row_mut(i);
                    for (g, &v) in dz_row.iter_mut().zip(z_row.iter()) {
                        *g = (v - lse).exp();
                    }
                    dz_row[class] -= 1.0;
                }
            }
        }
    }
    stats
}

/// Loss, dL/dz and whether the answer is right, for a one-output head (MSE, logistic).
#[inline(always)]
pub(super) fn scalar_head(head: Head, z: f32, target: f32) -> (f32, f32, bool) {
    match head {
        Head::Logistic => (
            softplus(z) - target * z,
            sigmoid(z) - target,
            (z > 0.0) == (target > 0.5),
        ),
        _ => {
            let diff = z - target;
            (diff * diff, 2.0 * diff, false)
        }
    }
}

/// The sum of 16 partial sums as a tree (lane j plus lane j + 8, then + 4, + 2, + 1): four
/// dependent additions where a left-to-right sum chains fifteen, which at d = 10 was a
/// tenth of a whole B = 1 step. Every dot product here ends with it, so all give the same
/// bits.
#[inline(always)]
pub(super) fn lane_sum(mut p: [f32; 16]) -> f32 {
    for half in [8, 4, 2, 1] {
        for j in 0..half {
            p[j] += p[j + half];
        }
    }
    p[0]
}

/// sum_j a_j b_j with 16 partial sums (so it vectorises), combined in a fixed order: the
/// result depends on the length only.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0.0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (ac, bc) in a_chunks.zip(b_chunks) {
        for j in 0..16 {
            partial[j] += ac[j] * bc[j];
        }
    }
    for (j, (&x, &y)) in a_rest.iter().zip(b_rest).enumerate() {
        partial[j] += x * y;
    }
    lane_sum(partial)
}

/// `dot(x[k], w)` for R rows at once, each with the same bits as `dot`: one pass over `w`
/// serves R rows, and R rows' memory streams are in flight together.
#[inline(always)]
pub(super) fn dot_rows<const R: usize>(x: [&[f32]; R], w: &[f32]) -> [f32; R] {
    let mut partial = [[0.0f32; 16]; R];
    let full = w.len() / 16 * 16;
    for c in (0..full).step_by(16) {
        let wc = &w[c..c + 16];
        for (p, xk) in partial.iter_mut().zip(&x) {
            let xc = &xk[c..c + 16];
            for j in 0..16 {
                p[j] += xc[j] * wc[j];
            }
        }
    }
    for (p, xk) in partial.iter_mut().zip(&x) {
        for (j, (&a, &b)) in xk[full..].iter().zip(&w[full..]).enumerate() {
            p[j] += a * b;
        }
    }
    partial.map(lane_sum)
}

/// `g += a[0] x[0]`, then `a[1] x[1]`, ... in that order per element (the bits of R
/// row-by-row updates), reading and writing `g` once.
#[inline(always)]
pub(super) fn axpy_rows<const R: usize>(g: &mut [f32], a: [f32; R], x: [&[f32]; R]) {
    let n = g.len();
    let x = x.map(|row| &row[..n]);
    for (j, g) in g.iter_mut().enumerate() {
        let mut acc = *g;
        for k in 0..R {
            acc += a[k] * x[k][j];
        }
        *g = acc;
    }
}

/// `dot_rows` in AVX-512 registers, written out: per lane the same multiply, then add, in
/// the same order, and the same sums of the lanes, so the same bits. The portable loop is
/// left to the compiler, which vectorised it or not depending on what was inlined around it:
/// an unrelated change once turned W2's loop scalar (1.9 M -> 0.86 M examples/s, one
/// thread); these do not depend on that.
///
/// # Safety
/// The CPU has AVX-512F. (Panics unless each row holds `w.len()` values.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn dot_rows_avx512<const R: usize>(x: [&[f32]; R], w: &[f32]) -> [f32; R] {
    use std::arch::x86_64::*;
    let n = w.len();
    let x = x.map(|row| &row[..n]);
    let full = n / 16 * 16;
    let mut acc = [_mm512_setzero_ps(); R];
    for c in (0..full).step_by(16) {
        // SAFETY: c + 16 <= full <= n, the length of w and of every row.
        unsafe {
            let wc = _mm512_loadu_ps(w.as_ptr().add(c));
            for (a, row) in acc.iter_mut().zip(&x) {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(c)), wc));
            }
        }
    }
    let mut partial = [[0.0f32; 16]; R];
    for (p, a) in partial.iter_mut().zip(acc) {
        // SAFETY: p holds 16 values.
        unsafe { _mm512_storeu_ps(p.as_mut_ptr(), a) };
    }
    for (p, row) in partial.iter_mut().zip(&x) {
        for (j, (&a, &b)) in row[full..].iter().zip(&w[full..]).enumerate() {
            p[j] += a * b;
        }
    }
    partial.map(lane_sum)
}

/// `axpy_rows` in AVX-512 registers, written out (see `dot_rows_avx512`): per element
/// `g += a[0] x[0]`, then `a[1] x[1]`, ..., each product rounded, then the sum.
///
/// # Safety
/// The CPU has AVX-512F. (Panics unless each row holds `g.len()` values.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn axpy_rows_avx512<const R: usize>(g: &mut [f32], a: [f32; R], x: [&[f32]; R]) {
    use std::arch::x86_64::*;
    let n = g.len();
    let x = x.map(|row| &row[..n]);
    let full = n / 16 * 16;
    let scale = a.map(|v| _mm512_set1_ps(v));
    for j in (0..full).step_by(16) {
        // SAFETY: j + 16 <= full <= n, the length of g and of every row.
        unsafe {
            let mut acc = _mm512_loadu_ps(g.as_ptr().add(j));
            for (s, row) in scale.iter().zip(&x) {
                acc = _mm512_add_ps(acc, _mm512_mul_ps(*s, _mm512_loadu_ps(row.as_ptr().add(j))));
            }
            _mm512_storeu_ps(g.as_mut_ptr().add(j), acc);
        }
    }
    for (j, g) in g.iter_mut().enumerate().skip(full) {
        let mut acc = *g;
        for k in 0..R {
            acc += a[k] * x[k][j];
        }
        *g = acc;
    }
}

/// The index of the largest value (the first on ties): a row of logits' predicted class.
pub fn argmax(z: &[f32]) -> usize {
    z.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
            if v > best.1 { (j, v) } else { best }
        })
        .0
}

/// 1 / (1 + e^-z) without overflow for large |z|.
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// ln(1 + e^z) without overflow: max(z, 0) + ln(1 + e^-|z|).
pub fn softplus(z: f32) -> f32 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// ln sum_j e^{z_j}, shifted by the maximum so that no exponential overflows.
pub fn log_sum_exp(z: ArrayView1<f32>) -> f32 {
    let max = z.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn sigmoid_and_softplus_are_finite_at_extremes() {
        for z in [-1000.0f32, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0] {
            let s = sigmoid(z);
            assert!((0.0..=1.0).contains(&s), "sigmoid({z}) = {s}");
            let sp = softplus(z);
            assert!(sp.is_finite() && sp >= 0.0, "softplus({z}) = {sp}");
        }
        assert_eq!(softplus(1000.0), 1000.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn rows_at_once_give_the_bits_of_one_row_at_a_time() {
        fn check<const R: usize>(d: usize) {
            let rows: Vec<Vec<f32>> = (0..R)
                .map(|k| {
                    (0..d)
                        .map(|j| ((j * 31 + k * 17) % 23) as f32 / 7.0 - 1.5)
                        .collect()
                })
                .collect();
            let x: [&[f32]; R] = std::array::from_fn(|k| &rows[k][..]);
            let w: Vec<f32> = (0..d).map(|j| 1e3 / (j as f32 + 0.37)).collect();
            let z = dot_rows(x, &w);
            for k in 0..R {
                assert_eq!(z[k].to_bits(), dot(x[k], &w).to_bits(), "d {d}, row {k}");
            }
            let a: [f32; R] =
                std::array::from_fn(|k| [0.3f32, -1e4, 7.1, 1e-3][k % 4] * (k + 1) as f32);
            let mut fused = w.clone();
            axpy_rows(&mut fused, a, x);
            let mut one_by_one = w.clone();
            for k in 0..R {
                for (g, &v) in one_by_one.iter_mut().zip(x[k]) {
                    *g += a[k] * v;
                }
            }
            assert!(
                fused
                    .iter()
                    .zip(&one_by_one)
                    .all(|(p, q)| p.to_bits() == q.to_bits())
            );
            // The AVX-512 kernels, where the CPU has them: the same bits again.
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                let z512 = unsafe { dot_rows_avx512(x, &w) };
                assert_eq!(z512.map(f32::to_bits), z.map(f32::to_bits), "d {d}");
                let mut fused512 = w.clone();
                // SAFETY: as above.
                unsafe { axpy_rows_avx512(&mut fused512, a, x) };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fused512), bits(&fused), "d {d}");
            }
        }
        for d in [1, 15, 16, 17, 40, 1000] {
            check::<4>(d);
            check::<8>(d);
            check::<16>(d);
        }
    }

    #[test]
    fn log_sum_exp_survives_huge_logits() {
        let z = array![1000.0f32, 1000.0, -1000.0];
        let expected = 1000.0 + 2.0f32.ln();
        assert!((log_sum_exp(z.view()) - expected).abs() < 1e-3);
    }
}
