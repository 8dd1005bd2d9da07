//! The seed's Step 4, by exact enumeration: for N = 8 and B = 3 the mean of the mini-batch
//! gradient g_B = (1/B) sum_{i in B} grad L_i over all C(8, 3) = 56 batches equals the full
//! gradient (1/N) sum_i grad L_i. Each index lies in C(7, 2) = 21 of the 56 batches, so the
//! identity is exact in real arithmetic; in f32 the two sides differ by rounding only.

use minibatch::model::{Activation, Batch, Head, Mlp, MlpSpec, Model};
use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::common::{prepared, random_dataset};

#[test]
fn minibatch_mean_over_all_batches_is_the_full_gradient() {
    let spec = MlpSpec {
        d_in: 3,
        hidden: vec![4],
        activation: Activation::Tanh,
        head: Head::Softmax { n_classes: 3 },
    };
    let model = Mlp::new(spec);
    let data = random_dataset(8, 3, Some(3), 7);
    let mut params = vec![0.0f32; model.layout().n_params()];
    model.init(&mut params, &mut StdRng::seed_from_u64(7));
    let mut ws = model.workspace(8);

    let gradient_mean = |rows: &[usize], ws: &mut _| -> Vec<f64> {
        let x = Array2::from_shape_fn((rows.len(), 3), |(r, c)| data.x()[[rows[r], c]]);
        let y = Array1::from_shape_fn(rows.len(), |r| data.targets()[rows[r]]);
        let mut grad = vec![0.0f32; params.len()];
        model.loss_grad_sum(
            &params,
            &prepared(&model, &params),
            Batch::block(x.view(), y.view()),
            ws,
            &mut grad,
        );
        grad.iter()
            .map(|&g| f64::from(g) / rows.len() as f64)
            .collect()
    };

    let full = gradient_mean(&(0..8).collect::<Vec<_>>(), &mut ws);
    let mut mean = vec![0.0f64; params.len()];
    let mut n_batches = 0;
    for a in 0..8 {
        for b in a + 1..8 {
            for c in b + 1..8 {
                for (m, g) in mean.iter_mut().zip(gradient_mean(&[a, b, c], &mut ws)) {
                    *m += g;
                }
                n_batches += 1;
            }
        }
    }
    assert_eq!(n_batches, 56);
    let mut max_full = 0.0f64;
    for (i, (m, f)) in mean.iter().zip(&full).enumerate() {
        let m = m / n_batches as f64;
        max_full = max_full.max(f.abs());
        // f32 sums of at most 8 terms: relative error well under 1e-5.
        assert!(
            (m - f).abs() <= 1e-5 * f.abs().max(1e-3),
            "param {i}: batch mean {m} vs full {f}"
        );
    }
    assert!(max_full > 1e-3, "the gradient should not be trivially zero");
}

#[test]
fn a_single_batch_is_not_the_full_gradient() {
    // The identity above is about the mean: one batch alone differs (the noise), which is
    // what makes the previous test able to fail.
    let spec = MlpSpec {
        d_in: 3,
        hidden: vec![],
        activation: Activation::Relu,
        head: Head::Mse,
    };
    let model = Mlp::new(spec);
    let data = random_dataset(8, 3, None, 8);
    let mut params = vec![0.0f32; model.layout().n_params()];
    model.init(&mut params, &mut StdRng::seed_from_u64(8));
    let mut ws = model.workspace(8);
    let mut full = vec![0.0f32; params.len()];
    model.loss_grad_sum(
        &params,
        &prepared(&model, &params),
        data.rows(0..8),
        &mut ws,
        &mut full,
    );
    let mut part = vec![0.0f32; params.len()];
    model.loss_grad_sum(
        &params,
        &prepared(&model, &params),
        data.rows(0..3),
        &mut ws,
        &mut part,
    );
    let differs = full
        .iter()
        .zip(&part)
        .any(|(f, p)| (f / 8.0 - p / 3.0).abs() > 1e-3);
    assert!(differs);
}
