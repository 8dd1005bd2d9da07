//! The built-in model: a multi-layer perceptron of any depth and width.
//!
//! With no hidden layers it is linear regression (MSE head), logistic regression (logistic
//! head, one output) or softmax regression (softmax head, k outputs), so the three classic
//! models and the MLP share one forward and one backward pass.
//!
//! Parameter layout, in this order (layer l = 1..=L, L = hidden layers + 1):
//! `w{l}` of shape `(d_{l-1}, d_l)` then `b{l}` of shape `(d_l,)`, where d_0 is the input
//! width and d_L the head's width (1 for MSE and logistic, k for softmax). So `z = x w + b`
//! with `x` row-major `(rows, d_{l-1})`.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, s};
use ndarray_rand::RandomExt;
use ndarray_rand::rand_distr::Normal;
use rand::rngs::StdRng;
use rayon::prelude::*;

use super::gemm::{Accumulate, B_IN_PLACE_MAX_ROWS, GemmScratch, PackedB};
use super::kernels::{
    activation_backward, affine, affine_grad, affine_input_grad, axpy_rows, dot, dot_rows,
    head_loss, scalar_head,
};
#[cfg(target_arch = "x86_64")]
use super::kernels::{axpy_rows_avx512, dot_rows_avx512};
use super::{Batch, GradInto, Model, Stats, Usage, loss_grad_group_apart};
use crate::lines::zeros_on_lines;
use crate::params::{ParamId, ParamLayout};
use crate::reduce::tree_slots;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
}

impl Activation {
    /// Every activation, for messages listing them.
    pub const ALL: [Activation; 3] = [Activation::Relu, Activation::Tanh, Activation::Sigmoid];

    /// The name configs and saved files use (`model.activation`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
        }
    }

    pub fn from_name(name: &str) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The output layer's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Regression: L = (z - y)^2, one output.
    Mse,
    /// Binary classification: sigmoid + binary cross-entropy, one output (the logit).
    Logistic,
    /// k-class classification: softmax + cross-entropy, k outputs.
    Softmax { n_classes: usize },
}

impl Head {
    /// The name configs and saved files use (`model.head`): mse, logistic or softmax.
    pub fn name(self) -> &'static str {
        match self {
            Head::Mse => "mse",
            Head::Logistic => "logistic",
            Head::Softmax { .. } => "softmax",
        }
    }

    /// The kind of model this head makes without hidden layers (`model.kind`): linear,
    /// logistic or softmax.
    pub fn linear_kind(self) -> &'static str {
        match self {
            Head::Mse => "linear",
            head => head.name(),
        }
    }

    /// Classes the head predicts, `None` for regression.
    pub fn n_classes(self) -> Option<usize> {
        match self {
            Head::Mse => None,
            Head::Logistic => Some(2),
            Head::Softmax { n_classes } => Some(n_classes),
        }
    }

    pub fn n_outputs(self) -> usize {
        match self {
            Head::Mse | Head::Logistic => 1,
            Head::Softmax { n_classes } => n_classes,
        }
    }
}

/// The shape of an `Mlp`: input width, hidden widths (possibly none), activation, head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpSpec {
    pub d_in: usize,
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub head: Head,
}

impl MlpSpec {
    /// Widths d_0..=d_L.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths = vec![self.d_in];
        widths.extend(&self.hidden);
        widths.push(self.head.n_outputs());
        widths
    }

    /// Floating-point operations per example for forward and backward, counting a
    /// multiply-add as 2: x w (2 d_in d_out per layer), x^T dz (the same) and dz w^T for every
    /// layer but the first, whose input needs no gradient. Elementwise work is not counted.
    pub fn flops_per_example(&self) -> f64 {
        let widths = self.widths();
        widths
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let product = 2.0 * (w[0] * w[1]) as f64;
                if l == 0 { 2.0 * product } else { 3.0 * product }
            })
            .sum()
    }

    /// "mlp 784-256-256-10 relu softmax", "logistic 1000-1", ...
    pub fn describe(&self) -> String {
        let widths = self
            .widths()
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("-");
        if self.hidden.is_empty() {
            format!("{} {widths}", self.head.linear_kind())
        } else {
            format!(
                "mlp {widths} {} {}",
                self.activation.name(),
                self.head.name()
            )
        }
    }
}

impl MlpSpec {
    /// The spec `describe` wrote: a saved model names its shape in words, so that it can be
    /// rebuilt without the training data its config points to. `None` for any other text.
    pub fn parse(text: &str) -> Option<MlpSpec> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let widths: Vec<usize> = words
            .get(1)?
            .split('-')
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        if widths.contains(&0) {
            return None;
        }
        let (&d_in, rest) = widths.split_first()?;
        let (&outputs, hidden) = rest.split_last()?;
        let head = |name: &str| match name {
            "mse" | "linear" if outputs == 1 => Some(Head::Mse),
            "logistic" if outputs == 1 => Some(Head::Logistic),
            "softmax" if outputs >= 2 => Some(Head::Softmax { n_classes: outputs }),
            _ => None,
        };
        let spec = match (words[0], words.len()) {
            ("mlp", 4) if !hidden.is_empty() => MlpSpec {
                d_in,
                hidden: hidden.to_vec(),
                activation: Activation::from_name(words[2])?,
                head: head(words[3])?,
            },
            (kind, 2) if hidden.is_empty() => MlpSpec {
                d_in,
                hidden: Vec::new(),
                activation: Activation::Relu,
                head: head(kind)?,
            },
            _ => return None,
        };
        Some(spec)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    spec: MlpSpec,
    layout: ParamLayout,
    /// (weight, bias) per layer, in forward order.
    layers: Vec<(ParamId, ParamId)>,
}

/// The weights packed for the matrix kernel, once per step: `w[l]` for the forward product
/// x w, `wt[l]` (l >= 1) for the backward product dz w^T. The forward weights come in a
/// copy per thread when the model is small (see `PackedB`).
pub struct MlpShared {
    w: Vec<PackedB>,
    wt: Vec<PackedB>,
}

/// The most bytes the copies of the forward weights may take together (W1's are 1 MB).
const COPIES_BUDGET: usize = 64 << 20;

/// A thread's buffers for the tasks it runs: `a[l]` holds layer l's output (its
/// pre-activation for the head) and `dz[l]` its gradient, each `(max_rows, d_{l+1})`; a block
/// uses the first `rows` rows.
pub struct MlpWorkspace {
    /// An indexed batch's rows gathered `(max_rows, d_in)`, and their targets.
    x: Array2<f32>,
    y: Array1<f32>,
    layers: LayerBuffers,
}

struct LayerBuffers {
    a: Vec<Array2<f32>>,
    dz: Vec<Array2<f32>>,
    gemm: GemmScratch,
    /// Gradient sums formed apart before they are added: a layer's bias sums per shard of a
    /// group (`tree_slots` of them) or before `GradInto::Add`, or a single-output linear
    /// model's whole gradient.
    apart: Vec<f32>,
}

impl Mlp {
    pub fn new(spec: MlpSpec) -> Self {
        let mut layout = ParamLayout::new();
        let widths = spec.widths();
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let w = layout.push(&format!("w{}", i + 1), &[pair[0], pair[1]]);
                let b = layout.push(&format!("b{}", i + 1), &[pair[1]]);
                (w, b)
            })
            .collect();
        Mlp {
            spec,
            layout,
            layers,
        }
    }

    /// The head's outputs (logits, or the regression value) for every row of `x`,
    /// `(rows, n_outputs)`, computed in blocks. For evaluation and prediction, not training:
    /// it allocates its result and workspace.
    pub fn outputs(&self, params: &[f32], x: ArrayView2<f32>) -> Array2<f32> {
        const BLOCK: usize = 1024;
        let mut shared = self.shared();
        let rows = BLOCK.min(x.nrows().max(1));
        let usage = Usage {
            parallel: true,
            rows,
            readers: 1,
        };
        self.prepare(params, &mut shared, usage);
        let mut ws = self.workspace(rows);
        let last = self.n_layers() - 1;
        let mut out = Array2::zeros((x.nrows(), self.spec.head.n_outputs()));
        for start in (0..x.nrows()).step_by(BLOCK) {
            let end = (start + BLOCK).min(x.nrows());
            let block = x.slice(s![start..end, ..]);
            if self.is_single_output_linear() {
                let (w, b) = self.layers[0];
                let (w, bias) = (
                    self.layout.slice(w, params),
                    self.layout.slice(b, params)[0],
                );
                for (r, row) in block.rows().into_iter().enumerate() {
                    out[[start + r, 0]] = dot(row.as_slice().expect("row-major"), w) + bias;
                }
            } else {
                let rows = end - start;
                self.forward(&shared, block, params, &mut ws.layers);
                out.slice_mut(s![start..end, ..])
                    .assign(&ws.layers.a[last].slice(s![..rows, ..]));
            }
        }
        out
    }

    pub fn spec(&self) -> &MlpSpec {
        &self.spec
    }

    fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Linear and logistic regression: one layer, one output. Each row is then a dot product
    /// and an axpy, done in place on the row instead of as matrix products, which at d = 10
    /// and B = 1 cost more in setup than in arithmetic, and at d = 1000 read the row twice.
    fn is_single_output_linear(&self) -> bool {
        self.spec.hidden.is_empty() && self.spec.head.n_outputs() == 1
    }

    /// `loss_grad_sum` (with `grad`) or `loss_sum` of a single-output linear model, row by
    /// row: z = x . w + b, then g_w += dL/dz x and g_b += dL/dz.
    fn single_output_linear(
        &self,
        params: &[f32],
        batch: Batch<'_>,
        grad: Option<&mut [f32]>,
    ) -> Stats {
        let (w_id, b_id) = self.layers[0];
        let w = self.layout.slice(w_id, params);
        let bias = self.layout.slice(b_id, params)[0];
        let (w_range, b_offset) = (
            self.layout.entry(w_id).range(),
            self.layout.entry(b_id).offset,
        );
        if batch.rows() < 4 {
            // B = 1 and other tiny blocks: the plain loop, nothing to set up.
            let mut stats = Stats {
                rows: batch.rows() as u64,
                ..Stats::default()
            };
            let mut grad = grad;
            if let Some(grad) = grad.as_deref_mut() {
                grad.fill(0.0);
            }
            for r in 0..batch.rows() {
                let g = grad.as_deref_mut().map(|g| (g, w_range.clone(), b_offset));
                linear_row(self.spec.head, w, bias, &batch, r, &mut stats, g);
            }
            return stats;
        }
        let grad = grad.map(|g| LinearGrad {
            g,
            w: w_range,
            b: b_offset,
        });
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return match is_amd() {
                // SAFETY: as above.
                true => unsafe { linear_rows_avx512::<16>(self.spec.head, w, bias, batch, grad) },
                // SAFETY: as above.
                false => unsafe { linear_rows_avx512::<8>(self.spec.head, w, bias, batch, grad) },
            };
        }
        linear_rows::<8>(self.spec.head, w, bias, batch, grad, RowKernels::PORTABLE)
    }

    /// Forward and backward over every row of `batch` (a non-linear-path model), cut into
    /// shards of `shard_rows` (the last may be shorter): each shard's loss into `stats`, and
    /// each shard's weight gradients formed on its own and summed in the reduction tree's
    /// order (`affine_grad`), the total put into `grad` as `into` says.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        params: &[f32],
        shared: &MlpShared,
        batch: Batch<'_>,
        shard_rows: usize,
        into: GradInto,
        ws: &mut MlpWorkspace,
        grad: &mut [f32],
        stats: &mut [Stats],
    ) {
        let rows = batch.rows();
        let mode = match into {
            GradInto::Overwrite => Accumulate::Overwrite,
            GradInto::Add => Accumulate::AddSum,
        };
        let MlpWorkspace { x, y, layers: ws } = ws;
        let (x, y) = batch.contiguous(x.view_mut(), y.view_mut());
        self.forward(shared, x, params, ws);
        let last = self.n_layers() - 1;
        for (i, stats) in stats.iter_mut().enumerate() {
            let shard = i * shard_rows..((i + 1) * shard_rows).min(rows);
            *stats = head_loss(
                self.spec.head,
                ws.a[last].slice(s![shard.clone(), ..]),
                y.slice(s![shard.clone()]),
                Some(ws.dz[last].slice_mut(s![shard, ..])),
            );
        }
        // Backward: dz[l] is known; accumulate layer l's gradients, then push dz into layer
        // l - 1 through w_l and the activation. The first layer needs no input gradient.
        for l in (0..=last).rev() {
            let (w, b) = self.layers[l];
            let input = if l == 0 {
                x
            } else {
                ws.a[l - 1].slice(s![..rows, ..])
            };
            affine_grad(
                input,
                ws.dz[l].slice(s![..rows, ..]),
                self.layout.linear_mut(w, b, grad),
                mode,
                shard_rows,
                &mut ws.apart,
                &mut ws.gemm,
            );
            if l > 0 {
                let (below, above) = ws.dz.split_at_mut(l);
                let mut da = below[l - 1].slice_mut(s![..rows, ..]);
                affine_input_grad(
                    above[0].slice(s![..rows, ..]),
                    &shared.wt[l],
                    self.layout.matrix(w, params).t(),
                    da.view_mut(),
                    &mut ws.gemm,
                );
                activation_backward(self.spec.activation, ws.a[l - 1].slice(s![..rows, ..]), da);
            }
        }
    }

    /// Runs every layer on `x` and leaves the head's pre-activation in `ws.a[L-1]`.
    fn forward(
        &self,
        shared: &MlpShared,
        x: ArrayView2<f32>,
        params: &[f32],
        ws: &mut LayerBuffers,
    ) {
        let rows = x.nrows();
        let last = self.n_layers() - 1;
        for (l, &(w, b)) in self.layers.iter().enumerate() {
            let (done, rest) = ws.a.split_at_mut(l);
            let input = if l == 0 {
                x
            } else {
                done[l - 1].slice(s![..rows, ..])
            };
            let act = (l < last).then_some(self.spec.activation);
            affine(
                input,
                &shared.w[l],
                self.layout.matrix(w, params),
                self.layout.vector(b, params),
                act,
                rest[0].slice_mut(s![..rows, ..]),
                &mut ws.gemm,
            );
        }
    }
}

/// Where a single-output linear model's gradient goes: the buffer and its w and b entries.
struct LinearGrad<'g> {
    g: &'g mut [f32],
    w: std::ops::Range<usize>,
    b: usize,
}

/// The rows of a single-output linear model, R at a time (one pass over w and over the
/// gradient serves R rows, and R rows stream from memory together), then the rest one by
/// one. Each row's sums are formed in the same order either way, so the bits depend neither
/// on R nor on the vector width the CPU offers. No software prefetch: with several rows in
/// flight the hardware prefetchers do better. Measured on W2 (B = 4096, one thread): row by
/// row with prefetch 1.07 M examples/s; R = 4 1.30 M; R = 8 with AVX-512 2.19 M (63% of the
/// copy bandwidth), 2.0 M without; R = 16 1.87 M (but more on AMD cores: `is_amd`).
#[inline(always)]
fn linear_rows<const R: usize>(
    head: Head,
    w: &[f32],
    bias: f32,
    batch: Batch<'_>,
    mut grad: Option<LinearGrad<'_>>,
    kernels: RowKernels<R>,
) -> Stats {
    let RowKernels {
        dot_rows,
        axpy_rows,
    } = kernels;
    let mut stats = Stats {
        rows: batch.rows() as u64,
        ..Stats::default()
    };
    if let Some(grad) = grad.as_mut() {
        grad.g.fill(0.0);
    }
    let blocks = batch.rows() / R * R;
    for r in (0..blocks).step_by(R) {
        let x: [&[f32]; R] = std::array::from_fn(|k| batch.row(r + k));
        // Read before the rows: each target is a cache miss of its own (a random element
        // of the targets), which then overlaps the rows' streams instead of following them.
        let targets: [f32; R] = std::array::from_fn(|k| batch.target(r + k));
        let z = dot_rows(x, w);
        let mut dz = [0.0f32; R];
        for k in 0..R {
            let (loss, d, correct) = scalar_head(head, z[k] + bias, targets[k]);
            stats.loss_sum += f64::from(loss);
            stats.n_correct += u64::from(correct);
            dz[k] = d;
        }
        if let Some(grad) = grad.as_mut() {
            axpy_rows(&mut grad.g[grad.w.clone()], dz, x);
            for d in dz {
                grad.g[grad.b] += d;
            }
        }
    }
    for r in blocks..batch.rows() {
        let g = grad.as_mut().map(|g| (&mut *g.g, g.w.clone(), g.b));
        linear_row(head, w, bias, &batch, r, &mut stats, g);
    }
    stats
}

/// The two passes `linear_rows` makes over R rows: their dot products with w, and their
/// scaled sum into the gradient. The portable ones, or AVX-512's, which give the same bits.
struct RowKernels<const R: usize> {
    dot_rows: fn([&[f32]; R], &[f32]) -> [f32; R],
    axpy_rows: fn(&mut [f32], [f32; R], [&[f32]; R]),
}

impl<const R: usize> RowKernels<R> {
    const PORTABLE: Self = RowKernels {
        dot_rows,
        axpy_rows,
    };
}

/// One row of a single-output linear model: its stats, and its gradient added to `grad`
/// (the buffer, the range of w and the offset of b).
#[inline(always)]
fn linear_row(
    head: Head,
    w: &[f32],
    bias: f32,
    batch: &Batch<'_>,
    r: usize,
    stats: &mut Stats,
    grad: Option<(&mut [f32], std::ops::Range<usize>, usize)>,
) {
    let (x, target) = (batch.row(r), batch.target(r));
    let (loss, dz, correct) = scalar_head(head, dot(x, w) + bias, target);
    stats.loss_sum += f64::from(loss);
    stats.n_correct += u64::from(correct);
    if let Some((g, w_range, b)) = grad {
        for (g, &v) in g[w_range].iter_mut().zip(x) {
            *g += dz * v;
        }
        g[b] += dz;
    }
}

/// `linear_rows` with the AVX-512 row kernels (`kernels::dot_rows_avx512`,
/// `axpy_rows_avx512`: the portable kernels' operations in the same order on wider vectors,
/// so the same bits). Explicit intrinsics, not the portable loops compiled for AVX-512: an
/// unrelated change once made the compiler stop vectorising those here, and W2 fell from
/// 1.85-1.88 M to 0.75-0.86 M examples/s on one thread (B = 4096).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn linear_rows_avx512<const R: usize>(
    head: Head,
    w: &[f32],
    bias: f32,
    batch: Batch<'_>,
    grad: Option<LinearGrad<'_>>,
) -> Stats {
    // Closures inherit this function's target features, so the kernels inline here.
    let kernels = RowKernels {
        // SAFETY: the caller checked that the CPU has AVX-512F.
        dot_rows: |x, w| unsafe { dot_rows_avx512::<R>(x, w) },
        // SAFETY: as above.
        axpy_rows: |g, a, x| unsafe { axpy_rows_avx512::<R>(g, a, x) },
    };
    linear_rows::<R>(head, w, bias, batch, grad, kernels)
}

/// Whether this is an AMD CPU, where the AVX-512 row kernels take 16 rows at a time, not 8
/// (the bits are the same at any count). Measured on W2 (`bench -w w2 -t 1,2`, four
/// alternating runs of each): on an AMD EPYC (AVX-512 on 256-bit units, 32 KB of L1 data)
/// 16 rows ran 2.80-3.06 M examples/s on one thread against 2.45-2.73 M for 8 (12 rows:
/// 2.27-2.87 M), and within the noise on two; on the Intel cores of earlier measurements
/// 16 rows ran 1.87 M against 2.19 M for 8. Other AMD generations (Zen 5's full-width
/// AVX-512 among them) are unmeasured and take the AMD setting.
#[cfg(target_arch = "x86_64")]
fn is_amd() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMD.get_or_init(|| {
        let id = std::arch::x86_64::__cpuid(0);
        [id.ebx, id.edx, id.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
    })
}

impl Model for Mlp {
    type Workspace = MlpWorkspace;
    type Shared = MlpShared;

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// He-normal (std sqrt(2 / fan_in)) for layers feeding a ReLU, Glorot-normal
    /// (std sqrt(2 / (fan_in + fan_out))) for tanh, sigmoid and the output layer; zero biases.
    fn init(&self, params: &mut [f32], rng: &mut StdRng) {
        let last = self.n_layers() - 1;
        for (l, &(w, b)) in self.layers.iter().enumerate() {
            let shape = self.layout.entry(w).shape();
            let (fan_in, fan_out) = (shape[0], shape[1]);
            let std = if l < last && self.spec.activation == Activation::Relu {
                (2.0 / fan_in as f32).sqrt()
            } else {
                (2.0 / (fan_in + fan_out) as f32).sqrt()
            };
            let normal = Normal::new(0.0f32, std).expect("std is finite and positive");
            let values = Array2::random_using((fan_in, fan_out), normal, rng);
            self.layout
                .slice_mut(w, params)
                .copy_from_slice(values.as_slice().expect("fresh arrays are contiguous"));
            self.layout.slice_mut(b, params).fill(0.0);
        }
    }

    fn workspace(&self, max_rows: usize) -> MlpWorkspace {
        let widths = self.spec.widths();
        let buffers = || {
            widths[1..]
                .iter()
                .map(|&w| zeros_on_lines(max_rows, w))
                .collect()
        };
        // The single-output linear path reads rows where they lie and never gathers.
        let gather_rows = if self.is_single_output_linear() {
            0
        } else {
            max_rows
        };
        let apart = if self.is_single_output_linear() {
            self.layout.n_params()
        } else {
            tree_slots(max_rows) * widths[1..].iter().copied().max().unwrap_or(0)
        };
        MlpWorkspace {
            x: zeros_on_lines(gather_rows, self.spec.d_in),
            y: Array1::zeros(gather_rows),
            layers: LayerBuffers {
                a: buffers(),
                dz: buffers(),
                gemm: GemmScratch::default(),
                apart: vec![0.0; apart],
            },
        }
    }

    fn shared(&self) -> MlpShared {
        MlpShared {
            w: vec![PackedB::default(); self.n_layers()],
            wt: vec![PackedB::default(); self.n_layers()],
        }
    }

    /// Packs every layer's weights for the matrix kernel (w for the forward products, w^T
    /// for the input gradients), except that with at most `B_IN_PLACE_MAX_ROWS` rows per
    /// model call (a shard's, or a group's) the forward products read w where it lies: the
    /// copy would cost more than it saves (W1: B = 32 65,000-67,000 -> 74,000-76,000
    /// examples/s; at 64 rows and more the packed products win, by 3-10% at B = 128).
    fn prepare(&self, params: &[f32], shared: &mut MlpShared, usage: Usage) {
        if self.is_single_output_linear() {
            return;
        }
        let MlpShared { w, wt } = shared;
        let (parallel, in_place) = (usage.parallel, usage.rows <= B_IN_PLACE_MAX_ROWS);
        // As many copies as fit the budget, up to one per reader (threads share the rest).
        let bytes = self.layout.n_params() * size_of::<f32>();
        let copies = (COPIES_BUDGET / bytes.max(1)).clamp(1, usage.readers.max(1));
        let forward = |(l, packed): (usize, &mut PackedB)| {
            let matrix = self.layout.matrix(self.layers[l].0, params);
            packed.pack(matrix, parallel, in_place, copies);
        };
        let backward = |(l, packed): (usize, &mut PackedB)| {
            if l > 0 {
                let matrix = self.layout.matrix(self.layers[l].0, params);
                packed.pack(matrix.t(), parallel, false, 1);
            }
        };
        if parallel {
            // Every layer is a task of its own (and splits its panels into tasks), so the
            // threads share them out: one task per direction left the first layer's copy,
            // three quarters of the work, on one thread.
            rayon::join(
                || w.par_iter_mut().enumerate().for_each(forward),
                || wt.par_iter_mut().enumerate().for_each(backward),
            );
        } else {
            w.iter_mut().enumerate().for_each(forward);
            wt.iter_mut().enumerate().for_each(backward);
        }
    }

    fn loss_grad_into(
        &self,
        params: &[f32],
        shared: &MlpShared,
        batch: Batch<'_>,
        ws: &mut MlpWorkspace,
        grad: &mut [f32],
        into: GradInto,
    ) -> Stats {
        if self.is_single_output_linear() {
            if into == GradInto::Overwrite {
                return self.single_output_linear(params, batch, Some(grad));
            }
            // Rows add into the gradient one by one: sum them apart, then add.
            let apart = &mut ws.layers.apart[..grad.len()];
            let stats = self.single_output_linear(params, batch, Some(apart));
            crate::reduce::add_into(grad, apart);
            return stats;
        }
        let mut stats = [Stats::default()];
        self.pass(
            params,
            shared,
            batch,
            usize::MAX,
            into,
            ws,
            grad,
            &mut stats,
        );
        stats[0]
    }

    /// A group's rows in one forward and backward pass: the products read each weight once
    /// for all the group's rows, and the shards' weight gradients are summed tile by tile
    /// in L1 (`gemm_segments`), written once into row 0 of `grads`. The bits are those of
    /// one call per shard summed by the tree: a product's rows are independent of the rows
    /// beside them, and each shard's gradient is formed on its own.
    fn loss_grad_group(
        &self,
        params: &[f32],
        shared: &MlpShared,
        batch: Batch<'_>,
        shard_rows: usize,
        ws: &mut MlpWorkspace,
        mut grads: ArrayViewMut2<f32>,
        stats: &mut [Stats],
    ) {
        if self.is_single_output_linear() {
            return loss_grad_group_apart(
                self, params, shared, batch, shard_rows, ws, grads, stats,
            );
        }
        let mut row = grads.row_mut(0);
        let grad = row.as_slice_mut().expect("gradient rows are contiguous");
        let over = GradInto::Overwrite;
        self.pass(params, shared, batch, shard_rows, over, ws, grad, stats);
    }

    fn loss_sum(
        &self,
        params: &[f32],
        shared: &MlpShared,
        batch: Batch<'_>,
        ws: &mut MlpWorkspace,
    ) -> Stats {
        if self.is_single_output_linear() {
            return self.single_output_linear(params, batch, None);
        }
        let rows = batch.rows();
        let MlpWorkspace { x, y, layers: ws } = ws;
        let (x, y) = batch.contiguous(x.view_mut(), y.view_mut());
        self.forward(shared, x, params, ws);
        let last = self.n_layers() - 1;
        head_loss(self.spec.head, ws.a[last].slice(s![..rows, ..]), y, None)
    }

    fn is_classifier(&self) -> bool {
        self.spec.head != Head::Mse
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    #[test]
    fn a_spec_is_read_back_from_its_description() {
        let spec = |hidden: &[usize], activation, head| MlpSpec {
            d_in: 784,
            hidden: hidden.to_vec(),
            activation,
            head,
        };
        for original in [
            spec(
                &[256, 256],
                Activation::Relu,
                Head::Softmax { n_classes: 10 },
            ),
            spec(&[16], Activation::Tanh, Head::Logistic),
            spec(&[8, 4, 2], Activation::Sigmoid, Head::Mse),
            spec(&[], Activation::Relu, Head::Mse),
            spec(&[], Activation::Relu, Head::Logistic),
            spec(&[], Activation::Relu, Head::Softmax { n_classes: 3 }),
        ] {
            let text = original.describe();
            assert_eq!(MlpSpec::parse(&text), Some(original), "{text}");
        }
        for text in [
            "",
            "mlp",
            "mlp 3-4",
            "mlp 3-4-2 gelu softmax",
            "softmax 3-1",
            "cnn 3-2",
            "mlp 3-0-2 relu softmax",
            "linear 0-1",
        ] {
            assert_eq!(MlpSpec::parse(text), None, "{text}");
        }
    }

    /// The AVX-512 build of the linear rows gives the same bits as the baseline build, so a
    /// saved file does not depend on the CPU's vector width.
    #[test]
    fn linear_rows_give_the_same_bits_at_every_vector_width() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let (n, d) = (23, 37);
            let x = Array2::from_shape_fn((n, d), |(i, j)| ((i * 13 + j * 7) % 19) as f32 - 9.3);
            let y = Array1::from_shape_fn(n, |i| (i % 2) as f32);
            let w: Vec<f32> = (0..d).map(|j| 0.01 * (j as f32 - 18.0)).collect();
            let idx: Vec<usize> = (0..n).rev().collect();
            let run = |rows_at_once: usize| {
                let batch = Batch::indexed(x.view(), y.view(), &idx);
                let mut g = vec![f32::NAN; d + 1];
                let grad = Some(LinearGrad {
                    g: &mut g,
                    w: 0..d,
                    b: d,
                });
                let stats = match rows_at_once {
                    // SAFETY: checked above.
                    8 => unsafe { linear_rows_avx512::<8>(Head::Logistic, &w, 0.2, batch, grad) },
                    // SAFETY: checked above.
                    16 => unsafe { linear_rows_avx512::<16>(Head::Logistic, &w, 0.2, batch, grad) },
                    _ => {
                        linear_rows::<8>(Head::Logistic, &w, 0.2, batch, grad, RowKernels::PORTABLE)
                    }
                };
                let bits: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
                (stats.loss_sum.to_bits(), stats.n_correct, bits)
            };
            // Both block sizes, whichever this CPU's vendor gets.
            assert_eq!(run(8), run(0));
            assert_eq!(run(16), run(0));
        }
    }
}
