//! The learning rate at each step: a linear warmup composed with a decay.
//!
//! Schedules count steps (0-based: `lr(t)` is the rate for the t-th update); durations given
//! in epochs are converted with the run's steps per epoch when the config is validated. With
//! W warmup steps, base rate `lr` and t' = t - W:
//!
//! - warmup, t < W: lr (t + 1) / W, so the first step already moves and step W - 1 uses lr;
//! - constant: lr;
//! - step: lr gamma^floor(t' / every);
//! - exponential: lr gamma^(t' / every), the smooth version of step decay;
//! - cosine: min_lr + (lr - min_lr) (1 + cos(pi t' / T')) / 2 with T' = total - W, falling
//!   from lr right after warmup to min_lr at the end of the run.

use crate::optim::show;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    Constant,
    Step { every: u64, gamma: f32 },
    Exponential { every: u64, gamma: f32 },
    Cosine { min_lr: f32 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub base_lr: f32,
    pub decay: Decay,
    pub warmup_steps: u64,
    /// Steps in the whole run (the cosine's end).
    pub total_steps: u64,
}

impl Schedule {
    pub fn constant(base_lr: f32) -> Self {
        Schedule {
            base_lr,
            decay: Decay::Constant,
            warmup_steps: 0,
            total_steps: 1,
        }
    }

    /// The learning rate of update `t` (0-based).
    pub fn lr(&self, t: u64) -> f32 {
        let base = f64::from(self.base_lr);
        if t < self.warmup_steps {
            return (base * (t + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let after = (t - self.warmup_steps) as f64;
        let lr = match self.decay {
            Decay::Constant => base,
            Decay::Step { every, gamma } => {
                base * f64::from(gamma).powf((after / every as f64).floor())
            }
            Decay::Exponential { every, gamma } => {
                base * f64::from(gamma).powf(after / every as f64)
            }
            Decay::Cosine { min_lr } => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let min_lr = f64::from(min_lr);
                min_lr
                    + (base - min_lr)
                        * (1.0 + (std::f64::consts::PI * after.min(span) / span).cos())
                        / 2.0
            }
        };
        lr as f32
    }

    /// "cosine to 0.001 after 100 warmup steps", for run headers.
    pub fn describe(&self) -> String {
        let lr = show(self.base_lr);
        let mut text = match self.decay {
            Decay::Constant => format!("lr {lr}"),
            Decay::Step { every, gamma } => {
                format!("lr {lr} x{} every {every} steps", show(gamma))
            }
            Decay::Exponential { every, gamma } => {
                format!("lr {lr} x{} per {every} steps", show(gamma))
            }
            Decay::Cosine { min_lr } => format!("lr {lr} cosine to {}", show(min_lr)),
        };
        if self.warmup_steps > 0 {
            text += &format!(
                " after {} warmup step{}",
                self.warmup_steps,
                if self.warmup_steps == 1 { "" } else { "s" }
            );
        }
        text
    }
}
