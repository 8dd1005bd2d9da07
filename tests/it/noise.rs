//! The gradient noise scale estimator against the exact value: on linear regression at
//! fixed parameters, B_noise = tr(Sigma) / |G|^2 follows from the per-example gradients
//! g_i = 2 (x_i . w + b - y_i) [x_i, 1], computed here in f64 over the whole dataset.

use minibatch::{Mlp, Trainer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::common::{config, random_dataset};

#[test]
fn estimated_noise_scale_is_within_15_percent_of_the_exact_one() {
    let (n, d) = (4000, 5);
    let data = random_dataset(n, d, None, 40);
    let cfg = config(&format!(
        "[data]\nsynthetic = \"linear\"\nn = {n}\nd = {d}\n[train]\nbatch_size = 128\nshard_rows = 16\nthreads = 2\nlr = 0.1\n"
    ));
    let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), d, &cfg.train, 7).unwrap();
    let params: Vec<f64> = trainer.params().iter().map(|&p| f64::from(p)).collect();

    // Exact: G = mean g_i, tr(Sigma) = mean |g_i - G|^2.
    let grads: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let x = &data.features()[i * d..(i + 1) * d];
            let z: f64 = x
                .iter()
                .zip(&params[..d])
                .map(|(&x, w)| f64::from(x) * w)
                .sum::<f64>()
                + params[d];
            let r = 2.0 * (z - f64::from(data.targets()[i]));
            x.iter().map(|&x| r * f64::from(x)).chain([r]).collect()
        })
        .collect();
    let mean: Vec<f64> = (0..=d)
        .map(|j| grads.iter().map(|g| g[j]).sum::<f64>() / n as f64)
        .collect();
    let g2: f64 = mean.iter().map(|m| m * m).sum();
    let trace: f64 = grads
        .iter()
        .map(|g| {
            g.iter()
                .zip(&mean)
                .map(|(a, m)| (a - m).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64;
    let exact = trace / g2;

    // Estimated: many steps with lr 0, so the parameters stay fixed, each batch a fresh
    // uniform sample; the moving average with a small weight averages about 1,000 steps.
    trainer.track_noise_scale(1, 0.002);
    let mut rng = StdRng::seed_from_u64(41);
    let mut order: Vec<usize> = (0..n).collect();
    for _ in 0..3000 {
        order.shuffle(&mut rng);
        trainer.step(&data, &order[..128], 0.0).unwrap();
    }
    let estimated = trainer.noise_scale().unwrap().b_noise().unwrap();
    assert!(
        (estimated - exact).abs() <= 0.15 * exact,
        "estimated B_noise {estimated:.2}, exact {exact:.2}"
    );
    assert_eq!(
        trainer
            .params()
            .iter()
            .map(|&p| f64::from(p))
            .collect::<Vec<_>>(),
        params
    );
}

/// An epoch reports the noise scale only when a step measured it: with two steps an epoch
/// and a measurement every eighth step, epochs 1 (step 0) and 5 (step 8) have one, epochs
/// 2 to 4 none (they would repeat epoch 1's value as if measured).
#[test]
fn epochs_without_a_measuring_step_report_no_noise_scale() {
    let (n, d) = (64, 3);
    let data = random_dataset(n, d, None, 41);
    let cfg = config(&format!(
        "[data]\nsynthetic = \"linear\"\nn = {n}\nd = {d}\n[train]\nepochs = 6\nbatch_size = 32\nshard_rows = 8\nthreads = 1\nlr = 0.01\n"
    ));
    let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), d, &cfg.train, 7).unwrap();
    trainer.track_noise_scale(8, 0.5);
    let mut measured = Vec::new();
    trainer
        .fit(&data, None, |r| measured.push(r.noise_scale.is_some()))
        .unwrap();
    assert_eq!(measured, [true, false, false, false, true, false]);
}
