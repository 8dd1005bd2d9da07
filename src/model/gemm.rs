//! Single-threaded f32 matrix multiply into caller-owned buffers, with packing space the
//! caller owns too, so a training step allocates nothing.
//!
//! C (m x n, row-major) = A (m x k) B (k x n), or C += A B summed on its own first
//! (`Accumulate`), where A and B may have any strides (so transposes cost nothing).
//! Classic blocking: for each block of `KC` along k, B is packed into column panels `NR`
//! wide and A into row panels `MR` high, zero-padded at the edges, and a register-tiled
//! microkernel computes each `MR x NR` tile. Operands the kernel can stream already are read
//! in place instead: A with contiguous rows always (`a_in_place`), B with contiguous rows
//! and whole panels only for products of at most `B_IN_PLACE_MAX_ROWS` rows or k-steps
//! (beyond, packing wins). B products of at most `SMALL_B` values (the W1 head) take a
//! plain loop (`small_gemm`).
//!
//! The entry points: `gemm_packed`, with B packed once per step by `PackedB::pack` (the
//! layer weights, read by every shard; it may hold a copy per reading thread, chosen by
//! `shard::reader`); `gemm_segments`, a sum of products over segments of k added in the
//! reduction tree's order (a group of shards' weight gradient, summed tile by tile in L1:
//! the bits of the shards' gradients summed by `reduce::tree_reduce`); `gemm`, one plain
//! product (tests and benches, and the reference for the other two).
//!
//! Three microkernels: AVX-512 (tile 8 x 32, two zmm per row, or 8 x 16 for products at
//! most 16 columns wide), AVX2 + FMA (6 x 16), both written with `std::arch` intrinsics,
//! and a portable one (4 x 8); the widest the CPU supports is chosen at run time by
//! feature detection. So a binary built without `target-cpu` flags runs at AVX-512 speed
//! where the CPU has it and correctly everywhere else. Shards are the only parallel layer
//! for products, so `gemm` is single-threaded; only `PackedB::pack` may split its copy over
//! the caller's pool.

use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::lines::LineBuf;
use crate::reduce::{TreeStack, add_slot, tree_slots};

/// Depth of one packed block: an `NR`-wide panel of B (KC x 32 x 4 bytes = 32 KB) stays in
/// L1 while the A panels stream from L2.
const KC: usize = 256;

/// Rows of A packed at a time: MC x KC x 4 bytes = 256 KB, well inside L2.
const MC: usize = 256;

/// Packing space for `gemm`, grown on first use and reused after.
#[derive(Debug, Default, Clone)]
pub struct GemmScratch {
    a: LineBuf,
    b: LineBuf,
    /// A tile's partial sums over k-segments (`gemm_segments`): a few KB, kept in L1.
    tiles: LineBuf,
    /// Whole products held apart: partial sums over k-segments where tiles cannot hold
    /// them, or a product for `Accumulate::AddSum` that cannot go straight into C.
    sums: LineBuf,
}

/// How `gemm` combines with what C holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulate {
    /// C = A B.
    Overwrite,
    /// C += A B.
    Add,
    /// C += A B with A B summed on its own first: the same bits as computing A B into a
    /// buffer of its own and adding the two buffers (what the reduction tree does). A
    /// product of one k-block (k <= 256) adds its finished tiles to C directly; others go
    /// through scratch space.
    AddSum,
}

/// A right-hand operand packed once and used by many products: the weights of a layer,
/// packed before the shards of a step start, instead of once per shard.
///
/// It may hold several identical copies, one per thread that reads it at once: two cores
/// streaming the same packed lines through their caches at the same time slowed each other
/// down by 15-20%, and the same values in two copies did not. Measured on W1, B = 128
/// (64-row shards), 2 threads: the forward products of a shard 317 -> 262 us, as fast as on
/// one thread. The threads running a step's shards read one copy each (`shard::reader`).
#[derive(Debug, Default, Clone)]
pub struct PackedB {
    /// `copies` copies of the panels, one after the other.
    data: LineBuf,
    copies: usize,
    /// Row-major copy of a small B, for `small_gemm`.
    plain: Vec<f32>,
    k: usize,
    n: usize,
    nr: usize,
    /// B is read where it lies (contiguous rows, whole panels): nothing was copied.
    in_place: bool,
}

impl PackedB {
    /// Packs `b` (k x n, any strides) for the kernel this CPU will run, in `copies` copies
    /// (at least one). Allocates when a shape or more copies are first asked for only.
    pub fn pack(&mut self, b: ArrayView2<f32>, parallel: bool, in_place: bool, copies: usize) {
        let (k, n) = b.dim();
        self.in_place = false;
        self.copies = 1;
        if k * n <= SMALL_B {
            // Small operands are multiplied without packing; keep a plain copy only.
            (self.k, self.n, self.nr) = (k, n, Isa::detect().nr(n));
            self.plain.clear();
            self.plain.extend(b.iter());
            return;
        }
        let nr = Isa::detect().nr(n);
        if in_place && b.strides()[1] == 1 && b.strides()[0] >= 0 && n.is_multiple_of(nr) {
            // The kernel can read such a B in place (`gemm_packed` gets it again): for
            // products of a few rows, skipping the copy saves more than packing gains.
            (self.k, self.n, self.nr, self.in_place) = (k, n, nr, true);
            return;
        }
        let n_panels = n.div_ceil(nr);
        let copies = copies.max(1);
        let len = n_panels * nr * k;
        self.data.grow(copies * len);
        assert!(b.strides().iter().all(|&s| s >= 0), "negative strides");
        let (b_rs, b_cs) = (b.strides()[0] as usize, b.strides()[1] as usize);
        let data = SharedMut(self.data.as_mut_ptr());
        // The panels of each k-block are independent: pack them in parallel, a few per task
        // (on the caller's pool; this runs once per step, between the parallel phases, and
        // would otherwise be the largest serial part of a small-batch step). A task reads its
        // part of B once and copies what it packed into the other copies: no two threads
        // read one line.
        let groups = n_panels.div_ceil(PANELS_PER_TASK);
        let pack_part = |task: usize| {
            let (block, group) = (task / groups, task % groups);
            let k0 = block * KC;
            let kc = KC.min(k - k0);
            let p0 = group * PANELS_PER_TASK;
            let lines = (n - p0 * nr).min(PANELS_PER_TASK * nr);
            let (at, part_len) = (
                k0 * n_panels * nr + p0 * nr * kc,
                lines.div_ceil(nr) * nr * kc,
            );
            // SAFETY: these panels of this block in every copy (`part_len` values from `at`
            // within each copy of `len`) are written by this task alone, inside the buffer
            // grown above.
            let part_of = |copy: usize| unsafe {
                std::slice::from_raw_parts_mut(data.get().add(copy * len + at), part_len)
            };
            let first = part_of(0);
            // SAFETY: `b` is a live view of k x n elements with these strides, and its lines
            // from p0 * nr on are `lines` more.
            unsafe {
                let src = b.as_ptr().add(p0 * nr * b_cs);
                match Isa::detect() {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 if nr == 16 => {
                        Avx512::<16>::pack_b(first, src, b_cs, b_rs, lines, k0, kc)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => Avx512::<32>::pack_b(first, src, b_cs, b_rs, lines, k0, kc),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => Avx2::pack_b(first, src, b_cs, b_rs, lines, k0, kc),
                    _ => Scalar::pack_b(first, src, b_cs, b_rs, lines, k0, kc),
                }
            };
            for copy in 1..copies {
                part_of(copy).copy_from_slice(first);
            }
        };
        let tasks = k.div_ceil(KC) * groups;
        if parallel {
            (0..tasks).into_par_iter().for_each(pack_part);
        } else {
            (0..tasks).for_each(pack_part);
        }
        (self.k, self.n, self.nr, self.copies) = (k, n, nr, copies);
    }

    /// The copy the calling thread reads.
    fn panels(&self) -> *const f32 {
        let copy = crate::shard::reader() % self.copies;
        self.data[copy * self.n.div_ceil(self.nr) * self.nr * self.k..].as_ptr()
    }

    pub fn dim(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

/// C = A B or C += A B. Panics if the shapes do not chain or C's rows are not contiguous;
/// both are bugs of the caller, never of user input.
pub fn gemm(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    c: ArrayViewMut2<f32>,
    mode: Accumulate,
    scratch: &mut GemmScratch,
) {
    gemm_segments(a, b, c, mode, usize::MAX, scratch);
}

/// `gemm` of the sum over consecutive segments of `seg` steps along k (the last may be
/// shorter), each segment's product formed on its own and the products added in the
/// reduction tree's order (`reduce::TreeStack`): the bits of writing every segment's product
/// into a buffer of its own and summing the buffers with `reduce::tree_reduce`. This is a
/// group of shards' weight gradient (x^T dz, k along the rows) with the tree's bottom levels
/// summed tile by tile in L1, so C is written once for the group instead of once per shard
/// and read back by the reduction. `mode` is `Overwrite` or `AddSum` (then the whole sum is
/// added to C).
pub fn gemm_segments(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    c: ArrayViewMut2<f32>,
    mode: Accumulate,
    seg: usize,
    scratch: &mut GemmScratch,
) {
    assert!(b.strides().iter().all(|&s| s >= 0), "negative strides");
    let rhs = Rhs::View {
        ptr: b.as_ptr(),
        rs: b.strides()[0] as usize,
        cs: b.strides()[1] as usize,
    };
    gemm_with(Isa::detect(), a, b.dim(), rhs, c, mode, seg, scratch);
}

/// `gemm` with B prepared beforehand by `PackedB::pack`; `source` is the matrix it was
/// prepared from, read in place when `pack` left it there.
pub fn gemm_packed(
    a: ArrayView2<f32>,
    b: &PackedB,
    source: ArrayView2<f32>,
    c: ArrayViewMut2<f32>,
    mode: Accumulate,
    scratch: &mut GemmScratch,
) {
    assert_eq!(b.nr, Isa::detect().nr(b.n), "packed for another kernel");
    assert_eq!(source.dim(), b.dim(), "packed from another matrix");
    let rhs = if b.in_place {
        Rhs::View {
            ptr: source.as_ptr(),
            rs: source.strides()[0] as usize,
            cs: 1,
        }
    } else if b.k * b.n <= SMALL_B {
        Rhs::View {
            ptr: b.plain.as_ptr(),
            rs: b.n,
            cs: 1,
        }
    } else {
        Rhs::Packed(b.panels())
    };
    gemm_with(Isa::detect(), a, b.dim(), rhs, c, mode, usize::MAX, scratch);
}

/// Panels of B packed per parallel task by `PackedB::pack`: the W1 model's second layer is
/// one k-block, whose 8 panels were one task.
const PANELS_PER_TASK: usize = 2;

/// A buffer whose disjoint parts parallel tasks write (each task's part is argued at its
/// `unsafe`).
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

// SAFETY: only a pointer; every dereference is justified where it happens.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so that closures capture the `Sync` wrapper, not its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Where the microkernel's B panels come from.
#[derive(Clone, Copy)]
enum Rhs {
    /// A strided matrix, packed block by block into the scratch space.
    View {
        ptr: *const f32,
        rs: usize,
        cs: usize,
    },
    /// Panels packed in advance, every k-block one after the other.
    Packed(*const f32),
}

/// The product on the kernel of `isa` (which the CPU must have; packed B must be packed for
/// it), summed over k-segments of `seg` steps as `gemm_segments` says.
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    isa: Isa,
    a: ArrayView2<f32>,
    (k2, n): (usize, usize),
    b: Rhs,
    mut c: ArrayViewMut2<f32>,
    mode: Accumulate,
    seg: usize,
    scratch: &mut GemmScratch,
) {
    let (m, k) = a.dim();
    assert_eq!(k, k2, "inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "output shape");
    assert!(n <= 1 || c.strides()[1] == 1, "C must have contiguous rows");
    assert!(seg > 0, "empty segments");
    let small = matches!(b, Rhs::View { .. }) && m * n * k <= SMALL_FLOPS;
    let segments = k.div_ceil(seg);
    // `Add` adds each k-block's sum into C in turn, so `AddSum` past one k-block forms the
    // product apart, as segments too large or too small for tile sums do.
    if (segments > 1 && (small || k > KC)) || (mode == Accumulate::AddSum && k > KC) {
        return segments_apart(isa, a, b, c, mode, seg, scratch);
    }
    if mode == Accumulate::Overwrite && k == 0 {
        c.fill(0.0);
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let ldc = c.strides()[0];
    assert!(
        ldc >= 0 && a.strides().iter().all(|&s| s >= 0),
        "negative strides"
    );
    let shape = Shape {
        m,
        n,
        k,
        a: a.as_ptr(),
        a_rs: a.strides()[0] as usize,
        a_cs: a.strides()[1] as usize,
        b,
        c: c.as_mut_ptr(),
        ldc: ldc as usize,
        overwrite: mode == Accumulate::Overwrite,
        seg: if segments > 1 { seg } else { k },
    };
    // With `AddSum`, one k-block: each tile's sum is formed from zero and added to C once.
    // SAFETY: the pointers and strides come from live views of the asserted shapes, and C
    // is borrowed mutably for the duration of the call.
    unsafe {
        if let (Rhs::View { ptr, rs, cs }, true) = (shape.b, small) {
            return match isa {
                Isa::Avx512 | Isa::Avx2 => small_gemm_fma(&shape, ptr, rs, cs),
                Isa::Baseline => small_gemm(&shape, ptr, rs, cs, |a, b, acc| acc + a * b),
            };
        }
        match isa {
            Isa::Avx512 => gemm_avx512(&shape, scratch),
            Isa::Avx2 => gemm_avx2(&shape, scratch),
            Isa::Baseline => gemm_blocked::<Scalar>(&shape, scratch),
        }
    }
}

/// `gemm_with` over k-segments when one blocked pass cannot sum them tile by tile (k past
/// one k-block, or a product too small to block), or with `AddSum` past one k-block (one
/// segment). Split at the tree's top where both halves fit one k-block (a group of shards
/// of twice `KC` rows: two passes, the second adding its tree's total to C as the top of
/// the tree does); otherwise every segment's product goes into a buffer of its own, summed
/// with `TreeStack`, and the total is put into C.
fn segments_apart(
    isa: Isa,
    a: ArrayView2<f32>,
    b: Rhs,
    mut c: ArrayViewMut2<f32>,
    mode: Accumulate,
    seg: usize,
    scratch: &mut GemmScratch,
) {
    let (m, k) = a.dim();
    let n = c.ncols();
    assert!(mode != Accumulate::Add, "segments are summed apart");
    let rows_of_b = |from: usize| match b {
        _ if from == 0 => b,
        Rhs::View { ptr, rs, cs } => Rhs::View {
            ptr: ptr.wrapping_add(from * rs),
            rs,
            cs,
        },
        Rhs::Packed(_) => panic!("segments of a packed B"),
    };
    let segments = k.div_ceil(seg);
    // The tree's top split: the largest power of two below the segment count, on the left.
    let split = if segments > 1 {
        (1 << (segments - 1).ilog2()) * seg
    } else {
        k
    };
    if split < k
        && mode == Accumulate::Overwrite
        && split <= KC
        && k - split <= KC
        && m * n * (k - split) > SMALL_FLOPS
    {
        let (a_left, a_right) = a.split_at(ndarray::Axis(1), split);
        gemm_with(isa, a_left, (split, n), b, c.view_mut(), mode, seg, scratch);
        let right = rows_of_b(split);
        gemm_with(
            isa,
            a_right,
            (k - split, n),
            right,
            c,
            Accumulate::AddSum,
            seg,
            scratch,
        );
        return;
    }
    let mut sums = std::mem::take(&mut scratch.sums);
    sums.grow(tree_slots(segments) * m * n);
    let mut stack = TreeStack::default();
    for s in 0..segments {
        let kk = s * seg..(s * seg + seg).min(k);
        let slot = stack.next_slot();
        let part = &mut sums[slot * m * n..(slot + 1) * m * n];
        let product = ArrayViewMut2::from_shape((m, n), part).expect("m * n values");
        let a_part = a.slice(ndarray::s![.., kk.clone()]);
        let b_part = rows_of_b(kk.start);
        let (len, over) = (kk.len(), Accumulate::Overwrite);
        gemm_with(
            isa,
            a_part,
            (len, n),
            b_part,
            product,
            over,
            usize::MAX,
            scratch,
        );
        stack.push(|d, s| add_slot(&mut sums, m * n, d, s));
    }
    stack.finish(|d, s| add_slot(&mut sums, m * n, d, s));
    let total = ArrayView2::from_shape((m, n), &sums[..m * n]).expect("m * n values");
    match mode {
        Accumulate::Overwrite => c.assign(&total),
        _ => c.zip_mut_with(&total, |c, &t| *c += t),
    }
    scratch.sums = sums;
}

/// Products at most this many columns wide run on the AVX-512 kernel's 16-wide tile.
#[cfg(target_arch = "x86_64")]
const NARROW: usize = 16;

/// Products of at most this many multiply-adds skip packing: at B = 1 on a linear model
/// the packing and tile bookkeeping would cost more than the arithmetic.
const SMALL_FLOPS: usize = 8 * 1024;

/// B operands of at most this many elements are kept unpacked by `PackedB`.
const SMALL_B: usize = 1024;

/// C (+)= A B by plain loops, for tiny products, with the blocked path's arithmetic: each
/// element summed from zero over each k-block in k order by the kernel's multiply-add, then
/// stored or added to C. So a row's result does not depend on the path its product takes,
/// and so not on how many rows the product has (a group of shards multiplies all its
/// shards' rows at once: `Model::loss_grad_group`).
///
/// # Safety
/// As for the blocked path: the shape describes live, non-overlapping matrices.
#[inline(always)]
unsafe fn small_gemm(
    s: &Shape,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    /// Columns summed side by side (vectorised across j).
    const COLS: usize = 64;
    for i in 0..s.m {
        let c_row = unsafe { std::slice::from_raw_parts_mut(s.c.add(i * s.ldc), s.n) };
        for (chunk, c_part) in c_row.chunks_mut(COLS).enumerate() {
            let j0 = chunk * COLS;
            let mut k0 = 0;
            while k0 < s.k {
                let kc = KC.min(s.k - k0);
                let mut acc = [0.0f32; COLS];
                for kk in k0..k0 + kc {
                    let a = unsafe { *s.a.add(i * s.a_rs + kk * s.a_cs) };
                    let b_row = unsafe { b.add(kk * b_rs + j0 * b_cs) };
                    for (j, v) in acc.iter_mut().enumerate().take(c_part.len()) {
                        *v = madd(a, unsafe { *b_row.add(j * b_cs) }, *v);
                    }
                }
                let store = s.overwrite && k0 == 0;
                for (c, &v) in c_part.iter_mut().zip(&acc) {
                    *c = if store { v } else { *c + v };
                }
                k0 += kc;
            }
        }
    }
}

/// `small_gemm` with the AVX kernels' fused multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn small_gemm_fma(s: &Shape, b: *const f32, b_rs: usize, b_cs: usize) {
    unsafe { small_gemm(s, b, b_rs, b_cs, f32::mul_add) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn small_gemm_fma(s: &Shape, b: *const f32, b_rs: usize, b_cs: usize) {
    unsafe { small_gemm(s, b, b_rs, b_cs, f32::mul_add) }
}

/// The widest instruction set this CPU offers us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// Columns of the microkernel's tile for a product `n` wide, the width of packed B
    /// panels.
    pub fn nr(self, n: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if n <= NARROW => Avx512::<16>::NR,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Avx512::<32>::NR,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Avx2::NR,
            _ => Scalar::NR,
        }
    }
}

struct Shape {
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: Rhs,
    c: *mut f32,
    ldc: usize,
    /// C = A B rather than C += A B.
    overwrite: bool,
    /// Steps per k-segment, summed apart and added in the tree's order (`gemm_segments`);
    /// `k` for one sum. Below `k` only for products of one k-block.
    seg: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gemm_avx512(shape: &Shape, scratch: &mut GemmScratch) {
    if shape.n <= NARROW {
        unsafe { gemm_blocked::<Avx512<16>>(shape, scratch) }
    } else {
        unsafe { gemm_blocked::<Avx512<32>>(shape, scratch) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2(shape: &Shape, scratch: &mut GemmScratch) {
    unsafe { gemm_blocked::<Avx2>(shape, scratch) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gemm_avx512(shape: &Shape, scratch: &mut GemmScratch) {
    unsafe { gemm_blocked::<Scalar>(shape, scratch) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gemm_avx2(shape: &Shape, scratch: &mut GemmScratch) {
    unsafe { gemm_blocked::<Scalar>(shape, scratch) }
}

/// Where a microkernel puts its `mr x nr` result: C's top-left element, its row stride,
/// and whether to overwrite C or add to it.
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
}

/// Partial sums a microkernel adds into its accumulators, in order, before it stores them:
/// tiles of `MR x NR` values, rows `NR` apart. A tile's k-segments are summed in the tree's
/// order this way (`run_tile`): the tree adds each new partial sum to the one on its left,
/// and as `a + b == b + a` in floating point, adding the left one into the registers gives
/// the same bits as adding both in memory, without storing the new one first (NaN payloads
/// aside: which of two NaNs an addition keeps is not the language's to promise).
#[derive(Clone, Copy)]
struct Partials {
    tiles: [*const f32; MAX_PARTIALS],
    len: usize,
}

/// Room for the partial sums one tile adds: at most `tree_slots` of the most segments in a
/// k-block, less one.
const MAX_PARTIALS: usize = 16;
const _: () = assert!(tree_slots(KC) <= MAX_PARTIALS);

impl Partials {
    const NONE: Partials = Partials {
        tiles: [std::ptr::null(); MAX_PARTIALS],
        len: 0,
    };

    fn push(&mut self, tile: *const f32) {
        self.tiles[self.len] = tile;
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = *const f32> + '_ {
        self.tiles[..self.len].iter().copied()
    }
}

/// Where a microkernel reads A: `at(i, kk)` is the value of the panel's row i at step kk.
trait Lhs: Copy {
    /// # Safety
    /// `i < MR` and `kk < kc` of the call the value is read in.
    unsafe fn at(self, i: usize, kk: usize) -> f32;

    /// The panel from step `kk` on.
    fn skip(self, kk: usize) -> Self;
}

/// A panel as `pack` writes it: the `width` (= MR) values of each step together.
#[derive(Clone, Copy)]
struct PackedA {
    ptr: *const f32,
    width: usize,
}

impl Lhs for PackedA {
    #[inline(always)]
    unsafe fn at(self, i: usize, kk: usize) -> f32 {
        unsafe { *self.ptr.add(kk * self.width + i) }
    }

    fn skip(self, kk: usize) -> Self {
        PackedA {
            ptr: self.ptr.wrapping_add(kk * self.width),
            ..self
        }
    }
}

/// The most rows of any kernel's tile.
const MAX_MR: usize = 8;

/// A read where it lies: row i starts at `rows[i]` and its steps are `step` apart. Rows past
/// a partial panel's last repeat the last, so the kernel reads nothing out of bounds (and
/// stores none of their results).
#[derive(Clone, Copy)]
struct StridedA {
    rows: [*const f32; MAX_MR],
    step: usize,
}

impl Lhs for StridedA {
    #[inline(always)]
    unsafe fn at(self, i: usize, kk: usize) -> f32 {
        unsafe { *self.rows[i].add(kk * self.step) }
    }

    fn skip(self, kk: usize) -> Self {
        StridedA {
            rows: self.rows.map(|row| row.wrapping_add(kk * self.step)),
            ..self
        }
    }
}

/// A register-tiled microkernel: C[..mr, ..nr] += (A panel) (B panel) over `kc` steps, A
/// read through `Lhs` (packed or in place) and B's `NR` values of step kk at
/// `b + kk * b_rs` (`b_rs = NR` when packed, B's row stride when read in place); the
/// `Partials` are added to the product, one after the other, before it goes into C.
trait Microkernel {
    const MR: usize;
    const NR: usize;
    /// # Safety
    /// `a` and `b` hold `kc` steps of their panels (B's `NR` values of every step
    /// readable, even when `nr < NR`); C has `mr <= MR` rows of `nr <= NR`
    /// writable values, `ldc` apart; the CPU has the kernel's instruction set. With
    /// `overwrite` the tile is stored without reading C. Each partial holds `MR x NR`
    /// readable values; C's tile may be one of them.
    unsafe fn run<A: Lhs>(
        kc: usize,
        a: A,
        b: *const f32,
        b_rs: usize,
        partials: &Partials,
        tile: Tile,
    );

    /// `pack` with W = MR (A panels) and W = NR (B panels).
    unsafe fn pack_a(
        dst: &mut [f32],
        src: *const f32,
        ls: usize,
        ks: usize,
        n: usize,
        k0: usize,
        kc: usize,
    );
    unsafe fn pack_b(
        dst: &mut [f32],
        src: *const f32,
        ls: usize,
        ks: usize,
        n: usize,
        k0: usize,
        kc: usize,
    );
}

/// The packing methods of a kernel with tile `$mr x $nr` (const generics cannot take a
/// trait's associated constants yet, so each kernel names its widths).
macro_rules! packers {
    ($mr:expr, $nr:expr) => {
        #[inline(always)]
        unsafe fn pack_a(
            dst: &mut [f32],
            src: *const f32,
            ls: usize,
            ks: usize,
            n: usize,
            k0: usize,
            kc: usize,
        ) {
            unsafe { pack::<{ $mr }>(dst, src, ls, ks, n, k0, kc) }
        }

        #[inline(always)]
        unsafe fn pack_b(
            dst: &mut [f32],
            src: *const f32,
            ls: usize,
            ks: usize,
            n: usize,
            k0: usize,
            kc: usize,
        ) {
            unsafe { pack::<{ $nr }>(dst, src, ls, ks, n, k0, kc) }
        }
    };
}

/// 8 x `NR`, `NR` 32 or 16: two zmm accumulators per row (sixteen; two B loads and eight
/// broadcasts per step), or one for products at most 16 columns wide (the W1 model's
/// 10-wide head, where a 32-wide tile spent 22 of every 32 lanes on padding: the forward
/// product and the weight gradient of a 512-row group took 26-28 and 36-40 us against
/// 44-45 and 56-59). Both sum each element with the same multiply-adds in the same order,
/// so the width never changes a bit.
#[cfg(target_arch = "x86_64")]
struct Avx512<const NR: usize>;

#[cfg(target_arch = "x86_64")]
impl<const NR: usize> Microkernel for Avx512<NR> {
    const MR: usize = 8;
    const NR: usize = NR;
    packers!(8, NR);

    #[inline(always)]
    unsafe fn run<A: Lhs>(
        kc: usize,
        a: A,
        b: *const f32,
        b_rs: usize,
        partials: &Partials,
        tile: Tile,
    ) {
        let Tile {
            c,
            ldc,
            mr,
            nr,
            overwrite,
        } = tile;
        use std::arch::x86_64::*;
        let wide = NR > 16;
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; 8];
            for kk in 0..kc {
                let b0 = _mm512_loadu_ps(b.add(kk * b_rs));
                let b1 = if wide {
                    _mm512_loadu_ps(b.add(kk * b_rs + 16))
                } else {
                    b0
                };
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(a.at(i, kk));
                    acc_row[0] = _mm512_fmadd_ps(ai, b0, acc_row[0]);
                    if wide {
                        acc_row[1] = _mm512_fmadd_ps(ai, b1, acc_row[1]);
                    }
                }
            }
            for p in partials.iter() {
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    acc_row[0] = _mm512_add_ps(_mm512_loadu_ps(p.add(i * NR)), acc_row[0]);
                    if wide {
                        let p1 = _mm512_loadu_ps(p.add(i * NR + 16));
                        acc_row[1] = _mm512_add_ps(p1, acc_row[1]);
                    }
                }
            }
            // Masks select the valid columns of a partial tile; masked-off lanes are neither
            // read nor written.
            let mask0: __mmask16 = if nr >= 16 {
                0xFFFF
            } else {
                ((1u32 << nr) - 1) as u16
            };
            let mask1: __mmask16 = if nr >= 32 {
                0xFFFF
            } else if nr > 16 {
                ((1u32 << (nr - 16)) - 1) as u16
            } else {
                0
            };
            for (i, acc_row) in acc.iter().enumerate().take(mr) {
                let row = c.add(i * ldc);
                if overwrite {
                    _mm512_mask_storeu_ps(row, mask0, acc_row[0]);
                    if mask1 != 0 {
                        _mm512_mask_storeu_ps(row.add(16), mask1, acc_row[1]);
                    }
                    continue;
                }
                let c0 = _mm512_maskz_loadu_ps(mask0, row);
                _mm512_mask_storeu_ps(row, mask0, _mm512_add_ps(c0, acc_row[0]));
                if mask1 != 0 {
                    let c1 = _mm512_maskz_loadu_ps(mask1, row.add(16));
                    _mm512_mask_storeu_ps(row.add(16), mask1, _mm512_add_ps(c1, acc_row[1]));
                }
            }
        }
    }
}

/// 6 x 16: twelve ymm accumulators.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Microkernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    packers!(6, 16);

    #[inline(always)]
    unsafe fn run<A: Lhs>(
        kc: usize,
        a: A,
        b: *const f32,
        b_rs: usize,
        partials: &Partials,
        tile: Tile,
    ) {
        let Tile {
            c,
            ldc,
            mr,
            nr,
            overwrite,
        } = tile;
        use std::arch::x86_64::*;
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; 6];
            for kk in 0..kc {
                let b0 = _mm256_loadu_ps(b.add(kk * b_rs));
                let b1 = _mm256_loadu_ps(b.add(kk * b_rs + 8));
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_set1_ps(a.at(i, kk));
                    acc_row[0] = _mm256_fmadd_ps(ai, b0, acc_row[0]);
                    acc_row[1] = _mm256_fmadd_ps(ai, b1, acc_row[1]);
                }
            }
            for p in partials.iter() {
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    acc_row[0] = _mm256_add_ps(_mm256_loadu_ps(p.add(i * 16)), acc_row[0]);
                    acc_row[1] = _mm256_add_ps(_mm256_loadu_ps(p.add(i * 16 + 8)), acc_row[1]);
                }
            }
            let mut tile = [0.0f32; 16];
            for (i, acc_row) in acc.iter().enumerate().take(mr) {
                _mm256_storeu_ps(tile.as_mut_ptr(), acc_row[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(8), acc_row[1]);
                let row = std::slice::from_raw_parts_mut(c.add(i * ldc), nr);
                for (c, &v) in row.iter_mut().zip(&tile) {
                    *c = if overwrite { v } else { *c + v };
                }
            }
        }
    }
}

/// Portable fallback: plain loops the compiler vectorises as the target allows.
struct Scalar;

impl Microkernel for Scalar {
    const MR: usize = 4;
    const NR: usize = 8;
    packers!(4, 8);

    #[inline(always)]
    unsafe fn run<A: Lhs>(
        kc: usize,
        a: A,
        b: *const f32,
        b_rs: usize,
        partials: &Partials,
        tile: Tile,
    ) {
        let Tile {
            c,
            ldc,
            mr,
            nr,
            overwrite,
        } = tile;
        let mut acc = [[0.0f32; 8]; 4];
        for kk in 0..kc {
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let ai = unsafe { a.at(i, kk) };
                for (j, v) in acc_row.iter_mut().enumerate() {
                    *v += ai * unsafe { *b.add(kk * b_rs + j) };
                }
            }
        }
        for p in partials.iter() {
            for (i, acc_row) in acc.iter_mut().enumerate() {
                for (j, v) in acc_row.iter_mut().enumerate() {
                    *v += unsafe { *p.add(i * 8 + j) };
                }
            }
        }
        for (i, acc_row) in acc.iter().enumerate().take(mr) {
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
            for (c, &v) in row.iter_mut().zip(acc_row) {
                *c = if overwrite { v } else { *c + v };
            }
        }
    }
}

/// The blocked loop. Inlined into each `target_feature` wrapper so the whole of it, the
/// microkernel included, is compiled for that instruction set.
#[inline(always)]
unsafe fn gemm_blocked<K: Microkernel>(s: &Shape, scratch: &mut GemmScratch) {
    let (mr_full, nr_full) = (K::MR, K::NR);
    let n_panels = s.n.div_ceil(nr_full);
    let kc_max = KC.min(s.k);
    let mc_max = MC.min(s.m);
    let a_in_place = a_in_place(s.a_cs, n_panels);
    if !a_in_place {
        scratch.a.grow(mc_max.div_ceil(mr_full) * mr_full * kc_max);
    }
    // B with contiguous rows and whole panels is read where it lies when few rows of A use
    // it (packing would copy every weight once per product: see `PackedB::pack`) or when a
    // panel has few k-steps, so that its rows stay in L1 whatever their stride.
    let in_place = matches!(s.b, Rhs::View { cs: 1, .. })
        && s.n.is_multiple_of(nr_full)
        && s.m.min(s.k) <= B_IN_PLACE_MAX_ROWS;
    if matches!(s.b, Rhs::View { .. }) && !in_place {
        scratch.b.grow(n_panels * nr_full * kc_max);
    }
    let tiles = if s.seg < s.k {
        assert!(s.k <= KC, "segments within one k-block");
        scratch
            .tiles
            .grow(tree_slots(s.k.div_ceil(s.seg)) * mr_full * nr_full);
        scratch.tiles.as_mut_ptr()
    } else {
        std::ptr::null_mut()
    };
    let mut k0 = 0;
    while k0 < s.k {
        let kc = KC.min(s.k - k0);
        // The block's first panel, the step between panels, and between k-rows of a panel.
        let (b_block, panel_step, b_rs) = match s.b {
            Rhs::View { ptr, rs, .. } if in_place => (unsafe { ptr.add(k0 * rs) }, nr_full, rs),
            Rhs::View { ptr, rs, cs } => {
                unsafe { K::pack_b(&mut scratch.b, ptr, cs, rs, s.n, k0, kc) };
                (scratch.b.as_ptr(), nr_full * kc, nr_full)
            }
            Rhs::Packed(ptr) => (
                unsafe { ptr.add(k0 * n_panels * nr_full) },
                nr_full * kc,
                nr_full,
            ),
        };
        let mut m0 = 0;
        while m0 < s.m {
            let mc = MC.min(s.m - m0);
            let a_block = unsafe { s.a.add(m0 * s.a_rs) };
            if !a_in_place {
                unsafe { K::pack_a(&mut scratch.a, a_block, s.a_rs, s.a_cs, mc, k0, kc) };
            }
            for q in 0..n_panels {
                let b_panel = unsafe { b_block.add(q * panel_step) };
                let nr = nr_full.min(s.n - q * nr_full);
                for p in 0..mc.div_ceil(mr_full) {
                    let mr = mr_full.min(mc - p * mr_full);
                    let a_panel = PackedA {
                        ptr: scratch.a.as_ptr().wrapping_add(p * mr_full * kc),
                        width: mr_full,
                    };
                    let a_rows = || StridedA {
                        rows: std::array::from_fn(|i| unsafe {
                            a_block.add((p * mr_full + i.min(mr - 1)) * s.a_rs + k0 * s.a_cs)
                        }),
                        step: s.a_cs,
                    };
                    unsafe {
                        let c = s.c.add((m0 + p * mr_full) * s.ldc + q * nr_full);
                        let tile = Tile {
                            c,
                            ldc: s.ldc,
                            mr,
                            nr,
                            overwrite: s.overwrite && k0 == 0,
                        };
                        // Packed panels get their stride as a constant, for the addressing.
                        let seg = s.seg;
                        match (a_in_place, b_rs == nr_full) {
                            (false, true) => {
                                run_tile::<K, _>(kc, seg, a_panel, b_panel, K::NR, tile, tiles)
                            }
                            (false, false) => {
                                run_tile::<K, _>(kc, seg, a_panel, b_panel, b_rs, tile, tiles)
                            }
                            (true, true) => {
                                run_tile::<K, _>(kc, seg, a_rows(), b_panel, K::NR, tile, tiles)
                            }
                            (true, false) => {
                                run_tile::<K, _>(kc, seg, a_rows(), b_panel, b_rs, tile, tiles)
                            }
                        }
                    }
                }
            }
            m0 += mc;
        }
        k0 += kc;
    }
}

/// One tile: the microkernel over all `kc` steps, or, when they are cut into segments of
/// `seg` (`gemm_segments`), over each segment from zero, the segments summed in the tree's
/// order (`TreeStack`): each segment's product adds the partial sums its place in the tree
/// completes while still in registers (`Partials`) and is stored into a tile-sized slot of
/// `tiles`, the last one into C. The slots (a few KB) stay in L1 while the tile runs, so
/// summing a group of shards' weight gradients costs a few adds per segment, where adding
/// each shard's tile into C read C back from L2 or memory. Against summing the stored
/// slots in memory, the registers' additions made the 512-row group's first weight
/// gradient (784 x 512 x 256 in segments of 64) about 4% faster: 1.05-1.12x the time of
/// the same product without segments (median 1.10) -> 1.05-1.10x (median 1.06), six
/// alternating runs (`cargo bench --bench step -- matmul/group_weight_grad` shows both).
///
/// # Safety
/// As for `Microkernel::run`; with segments, `tiles` holds `tree_slots(kc.div_ceil(seg))`
/// tiles.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_tile<K: Microkernel, A: Lhs>(
    kc: usize,
    seg: usize,
    a: A,
    b: *const f32,
    b_rs: usize,
    tile: Tile,
    tiles: *mut f32,
) {
    if seg >= kc {
        return unsafe { K::run(kc, a, b, b_rs, &Partials::NONE, tile) };
    }
    let size = K::MR * K::NR;
    let slot = |i: usize| tiles.wrapping_add(i * size);
    let mut stack = TreeStack::default();
    let mut k0 = 0;
    while k0 < kc {
        let len = seg.min(kc - k0);
        // The additions this segment completes, each into the partial sum on its left: made
        // in registers, the result stored where the leftmost of them was (or into C at the
        // last segment, after the additions that finish the tree).
        let mut partials = Partials::NONE;
        let mut lands = stack.next_slot();
        stack.push(|left, _| {
            partials.push(slot(left));
            lands = left;
        });
        let last = k0 + len == kc;
        let into = if last {
            stack.finish(|left, _| partials.push(slot(left)));
            tile
        } else {
            Tile {
                c: slot(lands),
                ldc: K::NR,
                mr: K::MR,
                nr: K::NR,
                overwrite: true,
            }
        };
        // SAFETY: the caller sized `tiles` for every slot the stack uses.
        unsafe { K::run(len, a.skip(k0), b.add(k0 * b_rs), b_rs, &partials, into) };
        k0 += len;
    }
}

/// The most rows of A, or steps along k, for which B is read in place rather than packed. A
/// panel of B read in place has its k-steps a row of B apart, and rows 1 KB apart (256
/// columns) fall into a handful of L1 sets: past 32 or so steps the panel no longer fits
/// them and is fetched again for every A panel. With a few A panels that costs less than
/// the copy, with many it does not. Measured on the weight gradients (A = X^T, 784 or 256
/// rows; B = dz, 256 columns; one thread): at 64 shard rows 141 -> 168 GFLOP/s and 141 ->
/// 156 GFLOP/s when B is packed; at 32 rows in place was as fast or faster (145 -> 160 on
/// the 256-row one).
pub(crate) const B_IN_PLACE_MAX_ROWS: usize = 32;

/// A with contiguous rows is read where it lies: the kernel broadcasts from MR row streams
/// that the prefetchers follow, and packing would copy every value once more. Measured on
/// the W1 shard products (64 rows, one thread): forward 784 -> 256 160 -> 176-182 GFLOP/s,
/// 256 -> 256 163 -> 177-192, the input gradients 166 -> 180-189. A transposed A (the
/// weight gradients' X^T) is still packed: read in place, every step touched another line
/// of X, and those products got 5-10% slower. But when B is one panel wide each A panel is
/// read once, and packing it is a copy for nothing: the head's weight gradient (a 512-row
/// group's, 256 x 512 x 10) 73-84 -> 56-63 us.
fn a_in_place(a_cs: usize, n_panels: usize) -> bool {
    a_cs == 1 || n_panels == 1
}

/// `pack`'s transposing case, lines contiguous along k (B = w^T of a row-major w): sixteen
/// lines' next sixteen values loaded as sixteen vectors and transposed in registers
/// (`transpose16`), each result a run of the panel; the last kc % 16 steps gathered, sixteen
/// lines' values at one step into one vector. Measured on the W1 model (its 256 x 256 and
/// 256 x 10 w^T packed once per step, one thread): the step's packing 100 -> 83 us with
/// gathers at every step instead of scalar stores; the transposes, on the AMD host, 24.6-25.4
/// -> 7.9-10.1 us (B = 32, where the forward weights are read in place and w^T is all the
/// packing).
///
/// # Safety
/// Line l (l < W) holds `kc` readable values from `first + l * line_stride`, with
/// `line_stride >= 0` and `15 * line_stride` within i32; the panel holds `kc` steps of W
/// values; the CPU has AVX-512F. W is a multiple of 16 (asserted).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_lines_avx512<const W: usize>(
    panel: &mut [f32],
    first: *const f32,
    line_stride: i32,
    kc: usize,
) {
    use std::arch::x86_64::*;
    assert!(W.is_multiple_of(16), "whole vectors of lines");
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(line_stride),
    );
    assert!(panel.len() >= kc * W);
    let full = kc / 16 * 16;
    for l0 in (0..W).step_by(16) {
        let lines = unsafe { first.add(l0 * line_stride as usize) };
        for k16 in (0..full).step_by(16) {
            // Sixteen lines' next sixteen values: sixteen loads, transposed in registers.
            // SAFETY: line l0 + l holds values k16..k16 + 16 (the caller's promise of kc
            // values, and k16 + 16 <= full <= kc); each store lands inside the panel
            // (asserted).
            unsafe {
                let block: [__m512; 16] = std::array::from_fn(|l| {
                    _mm512_loadu_ps(lines.add(l * line_stride as usize + k16))
                });
                for (j, column) in transpose16(block).into_iter().enumerate() {
                    _mm512_storeu_ps(panel.as_mut_ptr().add((k16 + j) * W + l0), column);
                }
            }
        }
        for kk in full..kc {
            // SAFETY: lanes read lines l0..l0 + 16 at step kk (the caller's promise); the
            // store lands inside the panel (asserted).
            unsafe {
                let v = _mm512_i32gather_ps::<4>(offsets, lines.add(kk).cast());
                _mm512_storeu_ps(panel.as_mut_ptr().add(kk * W + l0), v);
            }
        }
    }
}

/// A 16 x 16 block of f32 transposed: vector j of the result holds lane j of every input
/// vector, in order. Unpacks of pairs of lanes, then of pairs of pairs, then two shuffles of
/// 128-bit quarters: 64 permutes for 256 values.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let mut t = r;
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = t;
    let pd = _mm512_castps_pd;
    for g in (0..16).step_by(4) {
        u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[g]), pd(t[g + 2])));
        u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[g]), pd(t[g + 2])));
        u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[g + 1]), pd(t[g + 3])));
        u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[g + 1]), pd(t[g + 3])));
    }
    let mut v = u;
    for h in [0, 8] {
        for i in 0..4 {
            v[h + i] = _mm512_shuffle_f32x4::<0x88>(u[h + i], u[h + 4 + i]);
            v[h + 4 + i] = _mm512_shuffle_f32x4::<0xdd>(u[h + i], u[h + 4 + i]);
        }
    }
    let mut out = v;
    for i in 0..8 {
        out[i] = _mm512_shuffle_f32x4::<0x88>(v[i], v[8 + i]);
        out[8 + i] = _mm512_shuffle_f32x4::<0xdd>(v[i], v[8 + i]);
    }
    out
}

/// Packs `kc` steps along k (from `k0`) of `n_lines` lines (rows of A or columns of B) into
/// panels of `W` lines: panel p holds, for each kk, the W values of lines pW..pW+W at
/// k0 + kk, contiguous, zero past the last line. `line_stride` steps between lines,
/// `k_stride` along k.
#[inline(always)]
unsafe fn pack<const W: usize>(
    dst: &mut [f32],
    src: *const f32,
    line_stride: usize,
    k_stride: usize,
    n_lines: usize,
    k0: usize,
    kc: usize,
) {
    for (p, panel) in dst
        .chunks_exact_mut(W * kc)
        .take(n_lines.div_ceil(W))
        .enumerate()
    {
        let lines = W.min(n_lines - p * W);
        if lines < W {
            panel.fill(0.0);
        }
        if line_stride == 1 {
            // Lines are adjacent at each k (B row-major, or A transposed): copy runs.
            for kk in 0..kc {
                let run = unsafe { src.add(p * W + (k0 + kk) * k_stride) };
                if lines == W {
                    // A whole run of known length: inlined vector moves, not a memcpy call.
                    let run = unsafe { &*(run as *const [f32; W]) };
                    panel[kk * W..kk * W + W].copy_from_slice(run);
                } else {
                    let run = unsafe { std::slice::from_raw_parts(run, lines) };
                    panel[kk * W..kk * W + lines].copy_from_slice(run);
                }
            }
            continue;
        }
        // The gather's offsets (up to 15 lines) are 32-bit.
        #[cfg(target_arch = "x86_64")]
        if k_stride == 1
            && lines == W
            && W.is_multiple_of(16)
            && Isa::detect() == Isa::Avx512
            && i32::try_from(line_stride * 15).is_ok()
        {
            let first = unsafe { src.add(p * W * line_stride + k0) };
            // SAFETY: the W lines of this panel hold kc values each from `first` on, the
            // offsets fit (checked above), and the CPU has AVX-512.
            unsafe { transpose_lines_avx512::<W>(panel, first, line_stride as i32, kc) };
            continue;
        }
        for l in 0..lines {
            let line = unsafe { src.add((p * W + l) * line_stride + k0 * k_stride) };
            if k_stride == 1 {
                let values = unsafe { std::slice::from_raw_parts(line, kc) };
                for (kk, &v) in values.iter().enumerate() {
                    panel[kk * W + l] = v;
                }
            } else {
                for kk in 0..kc {
                    panel[kk * W + l] = unsafe { *line.add(kk * k_stride) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn naive(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f64> {
        Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
            (0..a.ncols())
                .map(|k| f64::from(a[[i, k]]) * f64::from(b[[k, j]]))
                .sum()
        })
    }

    /// The transpose in row-major memory, so that its `.t()` is a column-major view of the
    /// original (`to_owned` would keep the view's column-major order).
    fn transposed(x: &Array2<f32>) -> Array2<f32> {
        let t = Array2::from_shape_fn((x.ncols(), x.nrows()), |(i, j)| x[[j, i]]);
        assert_eq!(t.t().strides()[0], 1, "a column-major view");
        t
    }

    /// The kernels this CPU can run besides the one it picks: a binary must be right on a CPU
    /// without AVX-512 too.
    fn other_kernels() -> Vec<Isa> {
        let mut isas = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            isas.push(Isa::Avx2);
        }
        isas.retain(|&isa| isa != Isa::detect());
        isas
    }

    /// Every kernel the CPU can run, on plain, strided and transposed operands, against the
    /// naive product.
    #[test]
    fn matches_the_naive_product_for_odd_shapes_transposes_and_every_kernel() {
        let mut scratch = GemmScratch::default();
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 5),
            (17, 300, 33),
            (9, 513, 70),
            (64, 20, 10),
            (20, 300, 64),
            (9, 513, 96),
            (300, 70, 40),
            (40, 50, 64),
        ] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.25 - 1.0);
            let (at, bt) = (transposed(&a), transposed(&b));
            // A whose rows are further apart than their length (read in place all the same).
            let mut wide = Array2::zeros((m, k + 5));
            wide.slice_mut(ndarray::s![.., ..k]).assign(&a);
            let want = naive(a.view(), b.view());
            let check = |c: &Array2<f32>, what: &str| {
                for ((i, j), &v) in c.indexed_iter() {
                    let err = (f64::from(v) - want[[i, j]] - 1.0).abs();
                    assert!(err < 1e-3, "{what} ({m},{k},{n}) at ({i},{j})");
                }
            };
            for (a_view, b_view) in [
                (a.view(), b.view()),
                (wide.slice(ndarray::s![.., ..k]), b.view()),
                (at.t(), b.view()),
                (a.view(), bt.t()),
                (at.t(), bt.t()),
            ] {
                let mut c = Array2::from_elem((m, n), 1.0f32);
                gemm(a_view, b_view, c.view_mut(), Accumulate::Add, &mut scratch);
                check(&c, "detected kernel");
                for isa in other_kernels() {
                    let mut c = Array2::from_elem((m, n), 1.0f32);
                    let rhs = Rhs::View {
                        ptr: b_view.as_ptr(),
                        rs: b_view.strides()[0] as usize,
                        cs: b_view.strides()[1] as usize,
                    };
                    let mode = Accumulate::Add;
                    gemm_with(
                        isa,
                        a_view,
                        (k, n),
                        rhs,
                        c.view_mut(),
                        mode,
                        usize::MAX,
                        &mut scratch,
                    );
                    check(&c, &format!("{isa:?}"));
                }
                // Overwrite ignores what C held (the ones added above), everywhere.
                gemm(
                    a_view,
                    b_view,
                    c.view_mut(),
                    Accumulate::Overwrite,
                    &mut scratch,
                );
                c += 1.0;
                check(&c, "overwrite");
            }
        }
    }

    /// A (m x k) and B (k x n) with values whose products round differently in any other
    /// order of additions.
    fn operands(m: usize, k: usize, n: usize) -> (Array2<f32>, Array2<f32>) {
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.37 - 1.7);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.29 - 1.3);
        (a, b)
    }

    /// `AddSum` gives the bits of the product formed apart and then added, whichever path
    /// the product takes: tiny (plain loops), one k-block (added by the kernel), several
    /// k-blocks (formed apart: `Add` adds block by block); on every kernel.
    #[test]
    fn add_sum_gives_the_bits_of_the_product_added_apart() {
        let mut scratch = GemmScratch::default();
        for &(m, k, n) in &[(3, 4, 5), (40, 64, 72), (9, 256, 64), (17, 300, 33)] {
            let (a, b) = operands(m, k, n);
            // C far larger than the products' terms, so that each extra rounding shows.
            let c0 = Array2::from_shape_fn((m, n), |(i, j)| {
                ((i * 31 + j * 17) % 23) as f32 * 1e3 + 0.123
            });
            let rhs = Rhs::View {
                ptr: b.as_ptr(),
                rs: n,
                cs: 1,
            };
            for isa in std::iter::once(Isa::detect()).chain(other_kernels()) {
                let mut product = Array2::zeros((m, n));
                let overwrite = Accumulate::Overwrite;
                gemm_with(
                    isa,
                    a.view(),
                    (k, n),
                    rhs,
                    product.view_mut(),
                    overwrite,
                    usize::MAX,
                    &mut scratch,
                );
                let mut c = c0.clone();
                let add_sum = Accumulate::AddSum;
                gemm_with(
                    isa,
                    a.view(),
                    (k, n),
                    rhs,
                    c.view_mut(),
                    add_sum,
                    usize::MAX,
                    &mut scratch,
                );
                for ((&got, &c0), &p) in c.iter().zip(&c0).zip(&product) {
                    assert_eq!(got.to_bits(), (c0 + p).to_bits(), "{isa:?} ({m},{k},{n})");
                }
            }
        }
    }

    /// Every segment's product into a row of its own, the rows summed by the reduction tree:
    /// what `gemm_segments` must equal bit for bit.
    fn segments_by_the_tree(isa: Isa, a: &Array2<f32>, b: &Array2<f32>, seg: usize) -> Array2<f32> {
        let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
        let segments = k.div_ceil(seg);
        let mut rows = Array2::<f32>::zeros((segments, m * n));
        let mut scratch = GemmScratch::default();
        for (s, mut row) in rows.rows_mut().into_iter().enumerate() {
            let kk = s * seg..((s + 1) * seg).min(k);
            let product = ArrayViewMut2::from_shape((m, n), row.as_slice_mut().unwrap()).unwrap();
            let (a_part, b_part) = (
                a.slice(ndarray::s![.., kk.clone()]),
                b.slice(ndarray::s![kk, ..]),
            );
            let rhs = Rhs::View {
                ptr: b_part.as_ptr(),
                rs: n,
                cs: 1,
            };
            let over = Accumulate::Overwrite;
            let (len, one) = (b_part.nrows(), usize::MAX);
            gemm_with(isa, a_part, (len, n), rhs, product, over, one, &mut scratch);
        }
        crate::reduce::tree_reduce(rows.view_mut(), segments);
        rows.row(0)
            .to_owned()
            .into_shape_with_order((m, n))
            .unwrap()
    }

    /// The weight gradients of a group of shards rely on it: a product over k-segments,
    /// summed tile by tile, gives the bits of the segments' products summed by the tree.
    #[test]
    fn segments_give_the_bits_of_their_products_summed_by_the_tree() {
        let mut scratch = GemmScratch::default();
        // Blocked in one k-block (tile by tile), split at the tree's top into two k-blocks,
        // past two k-blocks, and too small to block; whole and ragged last segments.
        let cases = [
            (40, 256, 72, 64),
            (19, 200, 37, 48),
            (64, 256, 33, 7),
            (24, 512, 40, 64),
            (24, 448, 40, 128),
            (24, 384, 40, 128),
            (24, 480, 40, 80),
            (9, 700, 20, 64),
            (9, 300, 20, 256),
            (3, 40, 5, 6),
            (3, 9, 5, 1),
            (40, 100, 72, 100),
            // B read in place (at most 32 rows of A, or 32 steps along k) on every kernel.
            (24, 256, 64, 16),
            // The narrow tile (A transposed and one panel wide: read in place), and one-step
            // segments: 256 of them, the most partial sums a tile adds.
            (64, 256, 10, 64),
            (40, 256, 16, 7),
            (8, 256, 16, 1),
            (8, 256, 40, 1),
            (40, 32, 64, 8),
        ];
        for &(m, k, n, seg) in &cases {
            let (a, b) = operands(m, k, n);
            // x^T as the weight gradients pass it: a transposed view, packed by the kernel.
            let a = a.mapv(|v| v * 1e3 + 0.011);
            let at = a.t().to_owned();
            let c0 = Array2::from_shape_fn((m, n), |(i, j)| ((i * 31 + j * 17) % 23) as f32 * 1e5);
            let rhs = Rhs::View {
                ptr: b.as_ptr(),
                rs: n,
                cs: 1,
            };
            for isa in std::iter::once(Isa::detect()).chain(other_kernels()) {
                let want = segments_by_the_tree(isa, &a, &b, seg);
                for (a_view, layout) in [(a.view(), "rows"), (at.t(), "transposed")] {
                    let mut c = Array2::from_elem((m, n), f32::NAN);
                    let over = Accumulate::Overwrite;
                    gemm_with(
                        isa,
                        a_view,
                        (k, n),
                        rhs,
                        c.view_mut(),
                        over,
                        seg,
                        &mut scratch,
                    );
                    let case = format!("{isa:?} {layout} ({m},{k},{n}) seg {seg}");
                    for (&got, &w) in c.iter().zip(&want) {
                        assert_eq!(got.to_bits(), w.to_bits(), "{case}: {got} against {w}");
                    }
                    let mut c = c0.clone();
                    let add = Accumulate::AddSum;
                    gemm_with(
                        isa,
                        a_view,
                        (k, n),
                        rhs,
                        c.view_mut(),
                        add,
                        seg,
                        &mut scratch,
                    );
                    for ((&got, &c0), &w) in c.iter().zip(&c0).zip(&want) {
                        assert_eq!(got.to_bits(), (c0 + w).to_bits(), "{case}, added");
                    }
                }
            }
        }
    }

    /// A row's result does not depend on the other rows of its product: one row alone (a
    /// tiny product, plain loops) and the same row among many (the blocked kernels) give the
    /// same bits, overwriting or adding, over one k-block or several, on every kernel. Groups
    /// of shards rely on it: their products have all the group's rows.
    #[test]
    fn a_rows_bits_do_not_depend_on_the_rows_beside_it() {
        let mut scratch = GemmScratch::default();
        for &(m, k, n) in &[(64, 40, 20), (16, 300, 8), (33, 7, 70), (8, 256, 32)] {
            let (a, b) = operands(m, k, n);
            let c0 = Array2::from_shape_fn((m, n), |(i, j)| ((i * 31 + j * 17) % 23) as f32 * 0.9);
            let rhs = Rhs::View {
                ptr: b.as_ptr(),
                rs: n,
                cs: 1,
            };
            assert!(
                k * n <= SMALL_FLOPS && m * k * n > SMALL_FLOPS,
                "one row tiny, all not"
            );
            for isa in std::iter::once(Isa::detect()).chain(other_kernels()) {
                for mode in [Accumulate::Overwrite, Accumulate::Add, Accumulate::AddSum] {
                    let mut all = c0.clone();
                    gemm_with(
                        isa,
                        a.view(),
                        (k, n),
                        rhs,
                        all.view_mut(),
                        mode,
                        usize::MAX,
                        &mut scratch,
                    );
                    for i in [0, m / 2, m - 1] {
                        let mut row = c0.slice(ndarray::s![i..i + 1, ..]).to_owned();
                        let a_row = a.slice(ndarray::s![i..i + 1, ..]);
                        gemm_with(
                            isa,
                            a_row,
                            (k, n),
                            rhs,
                            row.view_mut(),
                            mode,
                            usize::MAX,
                            &mut scratch,
                        );
                        for (j, (&got, &want)) in row.iter().zip(all.row(i)).enumerate() {
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{isa:?} {mode:?} ({m},{k},{n}) row {i} col {j}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A column's result does not depend on how many columns its product has: the first
    /// columns of a wide product and the same columns alone (16 or fewer run on AVX-512's
    /// narrow tile) give the same bits, overwriting or adding, A in place or transposed, in
    /// k-segments or not, over one k-block or several, with B packed ahead or not.
    #[test]
    fn a_columns_bits_do_not_depend_on_the_columns_beside_it() {
        let mut scratch = GemmScratch::default();
        for &(m, k, n, seg) in &[
            (64, 256, 10, 64),
            (37, 300, 16, 300),
            (40, 600, 7, 600),
            (512, 512, 10, 64),
            (9, 40, 1, 40),
        ] {
            let wide_n = n + 41;
            let (a, b) = operands(m, k, wide_n);
            let at = transposed(&a);
            let c0 = Array2::from_shape_fn((m, wide_n), |(i, j)| ((i * 31 + j * 17) % 23) as f32);
            for a_view in [a.view(), at.t()] {
                for mode in [Accumulate::Overwrite, Accumulate::Add, Accumulate::AddSum] {
                    if mode == Accumulate::Add && seg < k {
                        continue;
                    }
                    let mut all = c0.clone();
                    gemm_segments(a_view, b.view(), all.view_mut(), mode, seg, &mut scratch);
                    let first = b.slice(ndarray::s![.., ..n]);
                    let want = all.slice(ndarray::s![.., ..n]);
                    let mut alone = c0.slice(ndarray::s![.., ..n]).to_owned();
                    gemm_segments(a_view, first, alone.view_mut(), mode, seg, &mut scratch);
                    let what = format!("{mode:?} ({m},{k},{n}) seg {seg}");
                    assert_eq!(alone.mapv(f32::to_bits), want.mapv(f32::to_bits), "{what}");
                    if seg == k {
                        let first = first.to_owned();
                        let mut packed = PackedB::default();
                        packed.pack(first.view(), false, false, 1);
                        let mut alone = c0.slice(ndarray::s![.., ..n]).to_owned();
                        let c = alone.view_mut();
                        gemm_packed(a_view, &packed, first.view(), c, mode, &mut scratch);
                        let want = want.mapv(f32::to_bits);
                        assert_eq!(alone.mapv(f32::to_bits), want, "packed {what}");
                    }
                }
            }
        }
    }

    /// The register transpose that packs w^T: vector j of its result holds lane j of each
    /// input vector.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_vectors_transpose_to_their_lanes() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let values: Vec<f32> = (0..256).map(|v| v as f32).collect();
        // SAFETY: the CPU has AVX-512F (checked above); each load reads 16 of 256 values.
        let columns = unsafe {
            transpose16(std::array::from_fn(|i| {
                _mm512_loadu_ps(values.as_ptr().add(16 * i))
            }))
        };
        for (j, column) in columns.into_iter().enumerate() {
            let mut lanes = [0.0f32; 16];
            // SAFETY: as above; lanes holds 16 values.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), column) };
            let want: Vec<f32> = (0..16).map(|i| (16 * i + j) as f32).collect();
            assert_eq!(lanes.to_vec(), want, "column {j}");
        }
    }

    /// B read in place (contiguous rows, whole panels), packed per call, or packed ahead:
    /// the microkernel makes the same additions, so the three give the same bits.
    #[test]
    fn b_read_in_place_or_packed_gives_the_same_bits() {
        let mut scratch = GemmScratch::default();
        let (nr, narrow) = (Isa::detect().nr(usize::MAX), Isa::detect().nr(1));
        for &(m, k, n) in &[
            (9, 300, 2 * nr),
            (64, 784, 8 * nr),
            (1, 600, nr),
            (40, 300, narrow),
        ] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 3.0);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 / 7.0 - 0.9);
            let bt = transposed(&b);
            let run = |b_view: ArrayView2<f32>, scratch: &mut GemmScratch| {
                let mut c = Array2::from_elem((m, n), 0.5f32);
                gemm(a.view(), b_view, c.view_mut(), Accumulate::Add, scratch);
                c.mapv(f32::to_bits)
            };
            let in_place = run(b.view(), &mut scratch);
            assert_eq!(in_place, run(bt.t(), &mut scratch), "({m},{k},{n})");
            for source in [b.view(), bt.t()] {
                let mut packed = PackedB::default();
                packed.pack(source, false, true, 1);
                assert_eq!(packed.in_place, source.strides()[1] == 1);
                let mut c = Array2::from_elem((m, n), 0.5f32);
                gemm_packed(
                    a.view(),
                    &packed,
                    source,
                    c.view_mut(),
                    Accumulate::Add,
                    &mut scratch,
                );
                assert_eq!(c.mapv(f32::to_bits), in_place, "({m},{k},{n}) packed ahead");
            }
            // A copy per thread: each of three threads reads its own and gets the same bits.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            let mut packed = PackedB::default();
            pool.install(|| packed.pack(bt.t(), true, false, 3));
            let per_thread = pool.broadcast(|_| {
                let mut c = Array2::from_elem((m, n), 0.5f32);
                let mut scratch = GemmScratch::default();
                let (a, c_view) = (a.view(), c.view_mut());
                gemm_packed(a, &packed, bt.t(), c_view, Accumulate::Add, &mut scratch);
                c.mapv(f32::to_bits)
            });
            for (thread, c) in per_thread.iter().enumerate() {
                assert_eq!(c, &in_place, "({m},{k},{n}) thread {thread}");
            }
        }
    }
}
