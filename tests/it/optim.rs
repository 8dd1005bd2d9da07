//! Each optimizer against trajectories computed independently: closed forms on 1-D problems
//! derived by hand, and a straightforward f64 transcription of PyTorch's update rules on a
//! small model. And where the update's buffers lie: on cache lines, also after a restore.

use minibatch::model::{Batch, Model};
use minibatch::optim::{OptimConfig, OptimKind, Optimizer, OptimizerState};
use minibatch::{Mlp, Trainer};

use crate::common::{config, prepared, random_dataset};

const SGD: OptimKind = OptimKind::Sgd {
    momentum: 0.0,
    dampening: 0.0,
    nesterov: false,
};

fn optimizer(kind: OptimKind, weight_decay: f32) -> Optimizer {
    Optimizer::new(
        OptimConfig {
            kind,
            weight_decay,
            clip_norm: None,
        },
        1,
    )
}

/// Runs `steps` updates on one parameter whose gradient is `grad(theta)` (batch of 1).
fn trajectory(
    mut opt: Optimizer,
    theta0: f32,
    lr: f32,
    steps: usize,
    grad: impl Fn(f32) -> f32,
) -> Vec<f32> {
    let mut theta = [theta0];
    let mut path = vec![theta0];
    for _ in 0..steps {
        let g = [grad(theta[0])];
        opt.step(&mut theta, &g, 1, lr);
        path.push(theta[0]);
    }
    path
}

fn close(got: f32, want: f64, rel: f64, what: &str) {
    assert!(
        (f64::from(got) - want).abs() <= rel * want.abs().max(1e-3),
        "{what}: {got} vs {want}"
    );
}

#[test]
fn sgd_on_a_quadratic_follows_the_geometric_closed_form() {
    // L = a theta^2 / 2, so theta_t = (1 - lr a)^t theta_0.
    let (a, lr) = (3.0f32, 0.1f32);
    let path = trajectory(optimizer(SGD, 0.0), 2.0, lr, 20, |t| a * t);
    for (t, &theta) in path.iter().enumerate() {
        close(
            theta,
            2.0 * (1.0 - 0.3f64).powi(t as i32),
            1e-5,
            &format!("step {t}"),
        );
    }
}

#[test]
fn sgd_weight_decay_adds_wd_theta_to_the_gradient() {
    // Zero loss gradient: theta_t = (1 - lr wd)^t theta_0.
    let path = trajectory(optimizer(SGD, 0.5), 1.0, 0.1, 10, |_| 0.0);
    close(path[10], 0.95f64.powi(10), 1e-5, "decayed");
}

#[test]
fn heavy_ball_and_nesterov_on_a_constant_gradient_follow_their_sums() {
    // Constant gradient c (L = c theta), no dampening: b_t = c (1 - mu^t) / (1 - mu).
    // Heavy ball steps by lr b_t; Nesterov by lr (c + mu b_t).
    let (c, mu, lr) = (2.0f64, 0.9f64, 0.05f64);
    let b = |t: i32| c * (1.0 - mu.powi(t)) / (1.0 - mu);
    let heavy = trajectory(
        optimizer(
            OptimKind::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            },
            0.0,
        ),
        0.0,
        0.05,
        15,
        |_| 2.0,
    );
    let nesterov = trajectory(
        optimizer(
            OptimKind::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
            },
            0.0,
        ),
        0.0,
        0.05,
        15,
        |_| 2.0,
    );
    let (mut h, mut n) = (0.0f64, 0.0f64);
    for t in 1..=15 {
        h -= lr * b(t);
        n -= lr * (c + mu * b(t));
        close(heavy[t as usize], h, 1e-5, &format!("heavy ball step {t}"));
        close(nesterov[t as usize], n, 1e-5, &format!("nesterov step {t}"));
    }
}

#[test]
fn dampening_scales_every_gradient_after_the_first() {
    // b_1 = c; b_t = mu b_{t-1} + (1 - d) c. With mu = 0.5, d = 0.5, c = 1: b = 1, 1, 1, ...
    let path = trajectory(
        optimizer(
            OptimKind::Sgd {
                momentum: 0.5,
                dampening: 0.5,
                nesterov: false,
            },
            0.0,
        ),
        0.0,
        1.0,
        5,
        |_| 1.0,
    );
    for (t, &theta) in path.iter().enumerate() {
        close(theta, -(t as f64), 1e-6, &format!("step {t}"));
    }
}

#[test]
fn adam_bias_correction_makes_every_step_lr_on_a_constant_gradient() {
    // Constant gradient c: m_t = c (1 - b1^t), v_t = c^2 (1 - b2^t), so the corrected
    // moments are exactly c and c^2 and each step is lr c / (|c| + eps): lr, up to eps.
    let kind = OptimKind::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        decoupled: false,
    };
    let path = trajectory(optimizer(kind, 0.0), 1.0, 0.01, 50, |_| -3.0);
    for (t, &theta) in path.iter().enumerate() {
        close(
            theta,
            1.0 + 0.01 * t as f64 * 3.0 / (3.0 + 1e-8),
            1e-5,
            &format!("step {t}"),
        );
    }
}

#[test]
fn adamw_decays_the_weight_outside_the_moments_and_adam_does_not() {
    // AdamW, constant gradient c > 0: theta_t = r theta_{t-1} - s with r = 1 - lr wd and
    // s = lr c / (c + eps), so theta_t = r^t theta_0 - s (1 - r^t) / (1 - r).
    let (lr, wd) = (0.01f64, 0.1f64);
    let kind = |decoupled| OptimKind::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        decoupled,
    };
    let adamw = trajectory(optimizer(kind(true), wd as f32), 5.0, lr as f32, 30, |_| {
        1.0
    });
    let (r, s) = (1.0 - lr * wd, lr * 1.0 / (1.0 + 1e-8));
    for (t, &theta) in adamw.iter().enumerate() {
        let rt = r.powi(t as i32);
        close(
            theta,
            rt * 5.0 - s * (1.0 - rt) / (1.0 - r),
            1e-5,
            &format!("adamw step {t}"),
        );
    }
    // Adam folds wd theta into the gradient instead, which changes the moments: the paths differ.
    let adam = trajectory(
        optimizer(kind(false), wd as f32),
        5.0,
        lr as f32,
        30,
        |_| 1.0,
    );
    assert!(
        (adam[30] - adamw[30]).abs() > 1e-3,
        "adam {} vs adamw {}",
        adam[30],
        adamw[30]
    );
}

#[test]
fn clipping_scales_the_mean_gradient_to_the_max_norm() {
    // Gradient sum (6, 8) over a batch of 2: mean (3, 4), norm 5; clip to 1 -> (0.6, 0.8)
    // times 5 / (5 + 1e-6).
    let mut opt = Optimizer::new(
        OptimConfig {
            kind: SGD,
            weight_decay: 0.0,
            clip_norm: Some(1.0),
        },
        2,
    );
    let mut theta = [0.0f32, 0.0];
    opt.step(&mut theta, &[6.0, 8.0], 2, 1.0);
    let coef = 1.0 / (5.0 + 1e-6);
    close(theta[0], -3.0 * coef, 1e-6, "x");
    close(theta[1], -4.0 * coef, 1e-6, "y");
    // Below the threshold nothing changes.
    let mut theta = [0.0f32, 0.0];
    opt.step(&mut theta, &[0.6, 0.8], 2, 1.0);
    close(theta[0], -0.3, 1e-6, "unclipped x");
}

/// PyTorch's rules, transcribed in f64 on plain vectors (no chunks, no f32).
struct Reference {
    kind: &'static str,
    lr: f64,
    wd: f64,
    b: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Reference {
    fn step(&mut self, theta: &mut [f64], grad: &[f64]) {
        self.t += 1;
        let (mu, b1, b2, eps) = (0.9, 0.9, 0.999, 1e-8);
        for i in 0..theta.len() {
            let mut g = grad[i];
            match self.kind {
                "sgd" => theta[i] -= self.lr * (g + self.wd * theta[i]),
                "momentum" | "nesterov" => {
                    g += self.wd * theta[i];
                    self.b[i] = if self.t == 1 { g } else { mu * self.b[i] + g };
                    let d = if self.kind == "nesterov" {
                        g + mu * self.b[i]
                    } else {
                        self.b[i]
                    };
                    theta[i] -= self.lr * d;
                }
                _ => {
                    if self.kind == "adamw" {
                        theta[i] *= 1.0 - self.lr * self.wd;
                    } else {
                        g += self.wd * theta[i];
                    }
                    self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
                    let m_hat = self.m[i] / (1.0 - b1.powi(self.t));
                    let v_hat = self.v[i] / (1.0 - b2.powi(self.t));
                    theta[i] -= self.lr * m_hat / (v_hat.sqrt() + eps);
                }
            }
        }
    }
}

#[test]
fn every_optimizer_follows_an_f64_reference_on_a_small_mlp() {
    // Each step: the trainer's f32 parameters give an f32 gradient (the same for both sides),
    // the reference updates its own f64 parameters and state, and the two parameter vectors
    // must agree. Six steps of f32 updates drift by a few ulps of the step sizes, so 2e-5 of
    // max(|theta|, 0.01) is loose for rounding yet far below any wrong rule (off by lr |g|).
    for (kind, lr, wd) in [
        ("sgd", 0.1, 0.01),
        ("momentum", 0.05, 0.01),
        ("nesterov", 0.05, 0.0),
        ("adam", 0.01, 0.01),
        ("adamw", 0.01, 0.1),
    ] {
        let cfg = config(&format!(
            "[data]\nsynthetic = \"teacher\"\nn = 40\nd = 5\nclasses = 3\n[model]\nhidden = [4]\nactivation = \"tanh\"\n\
             [train]\nbatch_size = 40\nshard_rows = 40\nthreads = 1\nlr = {lr}\noptimizer = \"{kind}\"\nweight_decay = {wd}\n"
        ));
        let data = random_dataset(40, 5, Some(3), 21);
        let model = Mlp::new(cfg.model.clone());
        let mut trainer = Trainer::new(model.clone(), 5, &cfg.train, 3).unwrap();
        let n = model.layout().n_params();
        let mut theta: Vec<f64> = trainer.params().iter().map(|&p| f64::from(p)).collect();
        let mut reference = Reference {
            kind,
            lr,
            wd,
            b: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        };
        let idx: Vec<usize> = (0..40).collect();
        let mut ws = model.workspace(40);
        for step in 1..=6 {
            let mut grad = vec![0.0f32; n];
            model.loss_grad_sum(
                trainer.params(),
                &prepared(&model, trainer.params()),
                Batch::block(data.x(), ndarray::ArrayView1::from(data.targets())),
                &mut ws,
                &mut grad,
            );
            let mean: Vec<f64> = grad.iter().map(|&g| f64::from(g) / 40.0).collect();
            reference.step(&mut theta, &mean);
            trainer.step(&data, &idx, lr as f32).unwrap();
            for (i, (&got, &want)) in trainer.params().iter().zip(&theta).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() <= 2e-5 * want.abs().max(0.01),
                    "{kind}, step {step}, parameter {i}: {got} vs reference {want}"
                );
            }
        }
    }
}

#[test]
fn momentum_and_adam_reach_a_lower_loss_than_sgd_on_the_quickstart_mlp() {
    // The quickstart's model and data, shrunk to 6,000 rows and 2 epochs to keep the test short.
    let quickstart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/quickstart.toml"
    ))
    .unwrap();
    let final_loss = |optimizer: &str, lr: f64| {
        let text = quickstart
            .replace("n = 60000", "n = 6000")
            .replace("epochs = 5", "epochs = 2")
            .replace(
                "lr = 0.1",
                &format!("lr = {lr}\noptimizer = \"{optimizer}\""),
            );
        let cfg = config(&text);
        let (train, _) = minibatch::data::synthetic(&cfg.data, cfg.seed);
        let mut trainer = Trainer::new(
            Mlp::new(cfg.model.clone()),
            cfg.data.d,
            &cfg.train,
            cfg.seed,
        )
        .unwrap();
        let report = trainer.fit(&train, None, |_| {}).unwrap();
        report.epochs.last().unwrap().train.mean_loss()
    };
    let sgd = final_loss("sgd", 0.1);
    let momentum = final_loss("momentum", 0.02);
    let adam = final_loss("adam", 0.001);
    assert!(momentum < sgd, "momentum {momentum} vs sgd {sgd}");
    assert!(adam < sgd, "adam {adam} vs sgd {sgd}");
}

#[test]
fn parameters_and_optimizer_state_start_on_cache_lines_also_after_a_restore() {
    // The update streams these with 16-wide loads and stores, each split over two lines
    // when a buffer starts 16 bytes off (the allocator's alignment for large blocks).
    let cfg = config(
        "[data]\nsynthetic = \"teacher\"\nn = 40\nd = 5\nclasses = 3\n[model]\nhidden = [10000]\n\
         [train]\nbatch_size = 8\noptimizer = \"adam\"\n",
    );
    let on_line = |b: &[f32]| b.is_empty() || (b.as_ptr() as usize).is_multiple_of(64);
    let model = Mlp::new(cfg.model.clone());
    let n = model.layout().n_params();
    let mut trainer = Trainer::new(model, 5, &cfg.train, 3).unwrap();
    let where_they_lie = |trainer: &Trainer<Mlp>| {
        let (m, v) = trainer.optimizer().buffers();
        assert_eq!((trainer.params().len(), m.len(), v.len()), (n, n, n));
        assert!(on_line(trainer.params()), "parameters");
        assert!(on_line(m) && on_line(v), "optimizer state");
        [trainer.params().as_ptr(), m.as_ptr(), v.as_ptr()]
    };
    let before = where_they_lie(&trainer);
    let state = |len: usize| OptimizerState {
        m: vec![0.5; len],
        v: vec![0.25; len],
        t: 7,
    };
    let position = trainer.position();
    // A state of the wrong length is refused before anything is copied.
    let err = trainer.restore(&vec![1.0; n], state(n - 1), position, 7);
    assert!(err.is_err());
    assert!(
        trainer.params().iter().any(|&x| x != 1.0),
        "parameters copied"
    );
    trainer
        .restore(&vec![1.0; n], state(n), position, 7)
        .unwrap();
    // Restored in place: the same lines, now holding the checkpoint's values.
    assert_eq!(where_they_lie(&trainer), before);
    let (m, v) = trainer.optimizer().buffers();
    assert!(m.iter().all(|&x| x == 0.5) && v.iter().all(|&x| x == 0.25));
    assert!(trainer.params().iter().all(|&x| x == 1.0));
}
