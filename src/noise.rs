//! The gradient noise scale B_noise = tr(Sigma) / |G|^2 (McCandlish et al. 2018, "An
//! Empirical Model of Large-Batch Training", appendix A), estimated from what a step already
//! holds: each shard's gradient (a batch of b rows) and the whole batch's (B rows).
//!
//! For a batch of size b, E|g_b|^2 = |G|^2 + tr(Sigma) / b. With the two sizes,
//!   |G|^2   ~ (B |g_B|^2 - b |g_b|^2) / (B - b),
//!   tr(S)   ~ (|g_b|^2 - |g_B|^2) / (1/b - 1/B),
//! both unbiased; as in the paper, each is smoothed by an exponential moving average and
//! B_noise is the ratio of the averages. A step gives an estimate when its batch has two
//! shards or more, at least one of them full (a short last shard is left out, so that
//! every small batch has the same b).

/// Running estimate of the gradient noise scale.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseScale {
    /// Weight of the newest estimate in the moving averages.
    pub decay: f64,
    g2: f64,
    trace: f64,
    /// Estimates folded in so far (for the averages' bias correction).
    n: u64,
}

impl NoiseScale {
    pub fn new(decay: f64) -> Self {
        NoiseScale {
            decay,
            g2: 0.0,
            trace: 0.0,
            n: 0,
        }
    }

    /// Folds in one step: `small_sq` = mean over full shards of |g_b|^2 (shard means of b
    /// rows), `big_sq` = |g_B|^2 (the batch mean).
    pub fn update(&mut self, small_sq: f64, b: usize, big_sq: f64, batch: usize) {
        if b >= batch || b == 0 {
            return;
        }
        let (b, batch) = (b as f64, batch as f64);
        let g2 = (batch * big_sq - b * small_sq) / (batch - b);
        let trace = (small_sq - big_sq) / (1.0 / b - 1.0 / batch);
        self.g2 = self.decay * g2 + (1.0 - self.decay) * self.g2;
        self.trace = self.decay * trace + (1.0 - self.decay) * self.trace;
        self.n += 1;
    }

    /// Steps folded in so far.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// |G|^2 and tr(Sigma), bias-corrected like Adam's moments.
    pub fn estimates(&self) -> Option<(f64, f64)> {
        (self.n > 0).then(|| {
            let correction = 1.0 - (1.0 - self.decay).powf(self.n as f64);
            (self.g2 / correction, self.trace / correction)
        })
    }

    /// B_noise, when both |G|^2 and tr(Sigma) are estimated positive (early in a noisy run
    /// either can come out negative, and then there is no estimate yet).
    pub fn b_noise(&self) -> Option<f64> {
        self.estimates()
            .and_then(|(g2, trace)| (g2 > 0.0 && trace > 0.0).then(|| trace / g2))
    }
}
