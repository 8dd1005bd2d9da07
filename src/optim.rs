//! The parameter update: one call per batch, on flat buffers.
//!
//! `Optimizer::step` receives the batch's gradient *sum* and its length and applies the mean
//! once, so models and the reduction never divide. Any state (momentum, moments) is a flat
//! buffer aligned element for element with the parameters. The update is elementwise, so it
//! is split over parameter chunks in parallel when the model is large; the bits do not
//! depend on the split.

use rayon::prelude::*;

/// Parameters per parallel task of the update.
const UPDATE_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimConfig {
    /// theta <- theta - lr * g, g = (1/B) sum_i grad L_i.
    Sgd,
}

#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimConfig,
    /// Steps taken so far.
    t: u64,
}

impl Optimizer {
    pub fn new(config: OptimConfig, _n_params: usize) -> Self {
        Optimizer { config, t: 0 }
    }

    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// theta <- update(theta, grad_sum / batch_len) with learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grad_sum: &[f32], batch_len: usize, lr: f32) {
        debug_assert_eq!(params.len(), grad_sum.len());
        self.t += 1;
        let scale = 1.0 / batch_len as f32;
        match self.config {
            OptimConfig::Sgd => {
                let update = |(p, g): (&mut [f32], &[f32])| {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= lr * (g * scale);
                    }
                };
                if params.len() >= 2 * UPDATE_CHUNK {
                    params
                        .par_chunks_mut(UPDATE_CHUNK)
                        .zip(grad_sum.par_chunks(UPDATE_CHUNK))
                        .for_each(update);
                } else {
                    update((params, grad_sum));
                }
            }
        }
    }
}
