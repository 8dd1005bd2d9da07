//! The parameter update: one call per batch, on flat buffers.
//!
//! `Optimizer::step` receives the batch's gradient *sum* and its length and applies the mean
//! once, so models and the reduction never divide. State (momentum buffer, Adam moments) is a
//! flat buffer aligned element for element with the parameters. The update is elementwise,
//! so it is split over parameter chunks in parallel when the model is large; the bits do not
//! depend on the split. The rules are PyTorch's `torch.optim` ones, so runs moved from
//! PyTorch give the same numbers:
//!
//! - SGD (`SGD(momentum, dampening, nesterov, weight_decay)`), with g = mean gradient:
//!   g += wd theta; b = g on the first step, else b = mu b + (1 - dampening) g;
//!   g = g + mu b (Nesterov) or g = b (heavy ball); theta -= lr g.
//! - Adam: g += wd theta (L2); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//!   theta -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
//! - AdamW: theta *= 1 - lr wd (decoupled), then Adam without the L2 term.
//!
//! Clipping by global L2 norm scales the mean gradient by min(1, c / (|g| + 1e-6)) before
//! all of the above, as `clip_grad_norm_` does. The norm is summed in f64 over fixed chunks
//! in chunk order, so it too is independent of the thread count.

use rayon::prelude::*;

use crate::lines::LineBuf;

/// One chunk of (parameters, gradient sum, first moment, second moment).
type AdamChunk<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);

/// Parameters per parallel task of the update (the clipping norm is `reduce`'s).
const UPDATE_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimKind {
    /// Plain SGD when `momentum` is 0; heavy-ball momentum otherwise, Nesterov's with
    /// `nesterov`.
    Sgd {
        momentum: f32,
        dampening: f32,
        nesterov: bool,
    },
    /// Adam with L2 weight decay (`decoupled = false`) or AdamW (`decoupled = true`).
    Adam {
        beta1: f32,
        beta2: f32,
        eps: f32,
        decoupled: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub weight_decay: f32,
    /// Maximum global L2 norm of the mean gradient, if clipping.
    pub clip_norm: Option<f32>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimKind::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
            },
            weight_decay: 0.0,
            clip_norm: None,
        }
    }
}

/// A hyperparameter as a run header shows it: as written for ordinary sizes, in exponent
/// form beyond them (f32's `Display` never uses one: 1e-30 would print 31 digits).
pub(crate) fn show(x: f32) -> String {
    if x == 0.0 || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

impl OptimConfig {
    /// The rule's name as `train.optimizer` spells it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            OptimKind::Sgd { momentum: 0.0, .. } => "sgd",
            OptimKind::Sgd {
                nesterov: false, ..
            } => "momentum",
            OptimKind::Sgd { nesterov: true, .. } => "nesterov",
            OptimKind::Adam {
                decoupled: false, ..
            } => "adam",
            OptimKind::Adam {
                decoupled: true, ..
            } => "adamw",
        }
    }

    /// State buffers as long as the parameters: none (plain SGD), the momentum buffer, or
    /// Adam's two moments.
    pub fn state_buffers(&self) -> usize {
        match self.kind {
            OptimKind::Sgd { momentum: 0.0, .. } => 0,
            OptimKind::Sgd { .. } => 1,
            OptimKind::Adam { .. } => 2,
        }
    }

    /// "sgd", "momentum 0.9", "adamw (0.9, 0.999)", ... for run headers.
    pub fn describe(&self) -> String {
        let mut text = match self.kind {
            OptimKind::Sgd { momentum: 0.0, .. } => "sgd".to_string(),
            OptimKind::Sgd {
                momentum, nesterov, ..
            } => format!(
                "{} {}",
                if nesterov { "nesterov" } else { "momentum" },
                show(momentum)
            ),
            OptimKind::Adam {
                beta1,
                beta2,
                decoupled,
                ..
            } => format!(
                "{} ({beta1}, {beta2})",
                if decoupled { "adamw" } else { "adam" }
            ),
        };
        if self.weight_decay > 0.0 {
            text += &format!(" wd {}", show(self.weight_decay));
        }
        if let Some(c) = self.clip_norm {
            text += &format!(" clip {}", show(c));
        }
        text
    }
}

/// An optimizer's state, detached for a checkpoint: the flat buffers and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimConfig,
    /// Momentum buffer (SGD) or first moment (Adam); empty when unused.
    m: LineBuf,
    /// Second moment (Adam); empty otherwise.
    v: LineBuf,
    /// Per-chunk partial sums of squares for the clipping norm, reused every step.
    norm_partials: Vec<f64>,
    /// Steps taken so far.
    t: u64,
    /// Whether a large update may be split over the pool (see `set_parallel`).
    parallel: bool,
}

impl Optimizer {
    /// Allows or forbids splitting the update over the pool; the trainer forbids it for
    /// steps that ran as one shard, where the other workers are asleep and waking them
    /// costs more than the update. The result is the same either way.
    pub fn set_parallel(&mut self, parallel: bool) {
        self.parallel = parallel;
    }

    pub fn new(config: OptimConfig, n_params: usize) -> Self {
        let (m_len, v_len) = match config.state_buffers() {
            0 => (0, 0),
            1 => (n_params, 0),
            _ => (n_params, n_params),
        };
        Optimizer {
            config,
            m: LineBuf::zeroed(m_len),
            v: LineBuf::zeroed(v_len),
            norm_partials: Vec::with_capacity(n_params.div_ceil(crate::reduce::REDUCE_CHUNK)),
            t: 0,
            parallel: true,
        }
    }

    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// The first and second state buffers (empty when the optimizer keeps none).
    pub fn buffers(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Takes over a checkpoint's state; the buffers must match this optimizer's.
    pub fn restore(&mut self, state: OptimizerState) -> crate::error::Result<()> {
        for (name, have, got) in [
            ("optimizer.m", self.m.len(), state.m.len()),
            ("optimizer.v", self.v.len(), state.v.len()),
        ] {
            if have != got {
                return Err(crate::error::Error::Shape {
                    name: name.into(),
                    expected: vec![have],
                    got: vec![got],
                });
            }
        }
        self.m.copy_from_slice(&state.m);
        self.v.copy_from_slice(&state.v);
        self.t = state.t;
        Ok(())
    }

    /// theta <- update(theta, grad_sum / batch_len) with learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grad_sum: &[f32], batch_len: usize, lr: f32) {
        assert_eq!(
            params.len(),
            grad_sum.len(),
            "gradient does not match the parameters"
        );
        self.t += 1;
        let mut scale = 1.0 / batch_len as f32;
        if let Some(max_norm) = self.config.clip_norm {
            let norm = self.norm(grad_sum) * f64::from(scale);
            let coef = (f64::from(max_norm) / (norm + 1e-6)).min(1.0);
            scale *= coef as f32;
        }
        let wd = self.config.weight_decay;
        let parallel = self.parallel && params.len() >= 2 * UPDATE_CHUNK;
        match self.config.kind {
            OptimKind::Sgd { momentum: 0.0, .. } => {
                let update = |(p, g): (&mut [f32], &[f32])| rules::sgd(p, g, scale, wd, lr);
                if parallel {
                    params
                        .par_chunks_mut(UPDATE_CHUNK)
                        .zip(grad_sum.par_chunks(UPDATE_CHUNK))
                        .for_each(update);
                } else {
                    update((params, grad_sum));
                }
            }
            OptimKind::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                let rule = rules::Momentum {
                    scale,
                    wd,
                    lr,
                    momentum,
                    keep: 1.0 - dampening,
                    first: self.t == 1,
                    nesterov,
                };
                let update = |((p, g), b): ((&mut [f32], &[f32]), &mut [f32])| {
                    rules::momentum(p, g, b, &rule)
                };
                if parallel {
                    params
                        .par_chunks_mut(UPDATE_CHUNK)
                        .zip(grad_sum.par_chunks(UPDATE_CHUNK))
                        .zip(self.m.par_chunks_mut(UPDATE_CHUNK))
                        .for_each(update);
                } else {
                    update(((params, grad_sum), &mut self.m));
                }
            }
            OptimKind::Adam {
                beta1,
                beta2,
                eps,
                decoupled,
            } => {
                // Bias corrections in f64, as PyTorch computes them from a Python float step.
                let t = self.t as f64;
                let step_size = (f64::from(lr) / (1.0 - f64::from(beta1).powf(t))) as f32;
                let bias_correction2_sqrt = (1.0 - f64::from(beta2).powf(t)).sqrt() as f32;
                let rule = rules::Adam {
                    scale,
                    wd,
                    decay: 1.0 - lr * wd,
                    beta1,
                    beta2,
                    keep1: 1.0 - beta1,
                    keep2: 1.0 - beta2,
                    eps,
                    step_size,
                    bias_correction2_sqrt,
                    decoupled,
                };
                let update = |(((p, g), m), v): AdamChunk| rules::adam(p, g, m, v, &rule);
                if parallel {
                    params
                        .par_chunks_mut(UPDATE_CHUNK)
                        .zip(grad_sum.par_chunks(UPDATE_CHUNK))
                        .zip(self.m.par_chunks_mut(UPDATE_CHUNK))
                        .zip(self.v.par_chunks_mut(UPDATE_CHUNK))
                        .for_each(update);
                } else {
                    update((((params, grad_sum), &mut self.m), &mut self.v));
                }
            }
        }
    }

    /// |grad_sum|_2 in f64, by `reduce::squared_norm_chunked` (parallel where the update
    /// is; the same bits either way).
    fn norm(&mut self, grad_sum: &[f32]) -> f64 {
        crate::reduce::squared_norm_chunked(grad_sum, &mut self.norm_partials, self.parallel).sqrt()
    }
}

/// The update rules' loops, element by element in PyTorch's order of operations. Each
/// element's arithmetic is the same at any vector width (no fused multiply-add; square root
/// and division are correctly rounded in every width), so the AVX-512 builds give the
/// baseline's bits. Written as plain loops over equal-length slices, with the branches
/// that hold for a whole step taken outside them, so that they vectorise at all: as loops
/// over four zipped iterators with the branches inside, W1's update (269,322 parameters, one
/// thread) took 400 us with momentum and 950-1,020 us with Adam, against 50 us for plain SGD,
/// two thirds of a B = 32 step with Adam.
mod rules {
    /// Momentum SGD's coefficients for a step (`keep` is 1 - dampening).
    pub struct Momentum {
        pub scale: f32,
        pub wd: f32,
        pub lr: f32,
        pub momentum: f32,
        pub keep: f32,
        pub first: bool,
        pub nesterov: bool,
    }

    /// Adam's coefficients for a step (`decay` is 1 - lr wd, `keep1` and `keep2` are
    /// 1 - beta1 and 1 - beta2).
    pub struct Adam {
        pub scale: f32,
        pub wd: f32,
        pub decay: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub keep1: f32,
        pub keep2: f32,
        pub eps: f32,
        pub step_size: f32,
        pub bias_correction2_sqrt: f32,
        pub decoupled: bool,
    }

    widest!(sgd(p: &mut [f32], g: &[f32], scale: f32, wd: f32, lr: f32) => sgd_loop);
    widest!(momentum(p: &mut [f32], g: &[f32], b: &mut [f32], c: &Momentum) => momentum_loop);
    widest!(adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Adam) => adam_loop);

    #[inline(always)]
    pub(super) fn sgd_loop(p: &mut [f32], g: &[f32], scale: f32, wd: f32, lr: f32) {
        let g = &g[..p.len()];
        for i in 0..p.len() {
            let g = g[i] * scale + wd * p[i];
            p[i] -= lr * g;
        }
    }

    #[inline(always)]
    pub(super) fn momentum_loop(p: &mut [f32], g: &[f32], b: &mut [f32], c: &Momentum) {
        let n = p.len();
        let (g, b) = (&g[..n], &mut b[..n]);
        let (scale, wd, lr, mu, keep) = (c.scale, c.wd, c.lr, c.momentum, c.keep);
        match (c.first, c.nesterov) {
            (true, false) => {
                for i in 0..n {
                    b[i] = g[i] * scale + wd * p[i];
                    p[i] -= lr * b[i];
                }
            }
            (true, true) => {
                for i in 0..n {
                    let g = g[i] * scale + wd * p[i];
                    b[i] = g;
                    p[i] -= lr * (g + mu * b[i]);
                }
            }
            (false, false) => {
                for i in 0..n {
                    let g = g[i] * scale + wd * p[i];
                    b[i] = mu * b[i] + keep * g;
                    p[i] -= lr * b[i];
                }
            }
            (false, true) => {
                for i in 0..n {
                    let g = g[i] * scale + wd * p[i];
                    b[i] = mu * b[i] + keep * g;
                    p[i] -= lr * (g + mu * b[i]);
                }
            }
        }
    }

    #[inline(always)]
    pub(super) fn adam_loop(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Adam) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        let (scale, wd, decay) = (c.scale, c.wd, c.decay);
        let (beta1, beta2, keep1, keep2) = (c.beta1, c.beta2, c.keep1, c.keep2);
        let (eps, step_size, bc2) = (c.eps, c.step_size, c.bias_correction2_sqrt);
        // The decoupled decay (AdamW) or the L2 term (Adam), then the same moments.
        let moments = |i: usize, g: f32, p: &mut [f32], m: &mut [f32], v: &mut [f32]| {
            m[i] = beta1 * m[i] + keep1 * g;
            v[i] = beta2 * v[i] + keep2 * g * g;
            let denom = v[i].sqrt() / bc2 + eps;
            p[i] -= step_size * m[i] / denom;
        };
        if c.decoupled {
            for i in 0..n {
                p[i] *= decay;
                moments(i, g[i] * scale, p, m, v);
            }
        } else {
            for i in 0..n {
                moments(i, g[i] * scale + wd * p[i], p, m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rules, show};

    /// Each rule as dispatched (AVX-512 where the CPU has it) against its loop compiled for
    /// the baseline: the same bits, for every branch of every rule, on values spanning many
    /// magnitudes and signs, and a length that leaves a remainder at any vector width.
    #[test]
    fn every_update_rule_gives_the_baseline_bits_at_any_vector_width() {
        let n = 1000 + 13;
        let val = |i: usize, k: u32| {
            let x = ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(k) >> 8) as f32;
            (x / 16_777_216.0 - 0.5) * 10f32.powi((i % 9) as i32 - 4)
        };
        let fresh = |k| (0..n).map(|i| val(i, k)).collect::<Vec<f32>>();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let g = fresh(1);
        let (mut p1, mut p2) = (fresh(2), fresh(2));
        rules::sgd(&mut p1, &g, 0.03, 1e-4, 0.1);
        rules::sgd_loop(&mut p2, &g, 0.03, 1e-4, 0.1);
        assert_eq!(bits(&p1), bits(&p2), "sgd");
        for (first, nesterov) in [(true, false), (true, true), (false, false), (false, true)] {
            let c = rules::Momentum {
                scale: 0.03,
                wd: 1e-4,
                lr: 0.1,
                momentum: 0.9,
                keep: 0.75,
                first,
                nesterov,
            };
            let (mut p1, mut p2, mut b1, mut b2) = (fresh(2), fresh(2), fresh(3), fresh(3));
            rules::momentum(&mut p1, &g, &mut b1, &c);
            rules::momentum_loop(&mut p2, &g, &mut b2, &c);
            assert_eq!(
                (bits(&p1), bits(&b1)),
                (bits(&p2), bits(&b2)),
                "{first} {nesterov}"
            );
        }
        for decoupled in [false, true] {
            let c = rules::Adam {
                scale: 0.03,
                wd: 1e-2,
                decay: 1.0 - 1e-3 * 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                keep1: 1.0 - 0.9,
                keep2: 1.0 - 0.999,
                eps: 1e-8,
                step_size: 1e-3 / 0.1,
                bias_correction2_sqrt: 0.0316,
                decoupled,
            };
            let v0: Vec<f32> = fresh(5).iter().map(|x| x.abs()).collect();
            let (mut p1, mut p2, mut m1, mut m2) = (fresh(2), fresh(2), fresh(4), fresh(4));
            let (mut v1, mut v2) = (v0.clone(), v0);
            rules::adam(&mut p1, &g, &mut m1, &mut v1, &c);
            rules::adam_loop(&mut p2, &g, &mut m2, &mut v2, &c);
            let all = |p: &[f32], m: &[f32], v: &[f32]| (bits(p), bits(m), bits(v));
            assert_eq!(all(&p1, &m1, &v1), all(&p2, &m2, &v2), "adam {decoupled}");
        }
    }

    #[test]
    fn hyperparameters_show_in_exponent_form_beyond_ordinary_sizes() {
        assert_eq!(show(0.05), "0.05");
        assert_eq!(show(0.9), "0.9");
        assert_eq!(show(0.0), "0");
        assert_eq!(show(1e-30), "1e-30");
        assert_eq!(show(3e7), "3e7");
        assert_eq!(show(-2.5e-6), "-2.5e-6");
    }
}
