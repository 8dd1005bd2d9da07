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
    // The same mean over only the batches holding row 0: sampling that favours a row is
    // biased, so this one must miss the full gradient (the identity is not a property of
    // any average of batch gradients).
    let mut with_row0 = vec![0.0f64; params.len()];
    for a in 0..8 {
        for b in a + 1..8 {
            for c in b + 1..8 {
                let g = gradient_mean(&[a, b, c], &mut ws);
                for (m, g) in mean.iter_mut().zip(&g) {
                    *m += g;
                }
                if a == 0 {
                    for (m, g) in with_row0.iter_mut().zip(&g) {
                        *m += g / 21.0;
                    }
                }
                n_batches += 1;
            }
        }
    }
    assert_eq!(n_batches, 56);
    let farthest = |v: &[f64]| {
        v.iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    assert!(farthest(&with_row0) > 1e-3, "a biased mean should miss");
    // One batch alone differs too: the noise the mean averages out.
    assert!(farthest(&gradient_mean(&[0, 1, 2], &mut ws)) > 1e-3);
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
