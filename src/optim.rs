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
    m: Vec<f32>,
    /// Second moment (Adam); empty otherwise.
    v: Vec<f32>,
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
            m: vec![0.0; m_len],
            v: vec![0.0; v_len],
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
        self.m = state.m;
        self.v = state.v;
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
                let update = |(p, g): (&mut [f32], &[f32])| {
                    for (p, &g) in p.iter_mut().zip(g) {
                        let g = g * scale + wd * *p;
                        *p -= lr * g;
                    }
                };
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
                let first = self.t == 1;
                let update = |((p, g), b): ((&mut [f32], &[f32]), &mut [f32])| {
                    for ((p, &g), b) in p.iter_mut().zip(g).zip(b) {
                        let g = g * scale + wd * *p;
                        *b = if first {
                            g
                        } else {
                            momentum * *b + (1.0 - dampening) * g
                        };
                        let step = if nesterov { g + momentum * *b } else { *b };
                        *p -= lr * step;
                    }
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
                let update = |(((p, g), m), v): AdamChunk| {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                        let mut g = g * scale;
                        if decoupled {
                            *p *= 1.0 - lr * wd;
                        } else {
                            g += wd * *p;
                        }
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        let denom = v.sqrt() / bias_correction2_sqrt + eps;
                        *p -= step_size * *m / denom;
                    }
                };
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

#[cfg(test)]
mod tests {
    use super::show;

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
