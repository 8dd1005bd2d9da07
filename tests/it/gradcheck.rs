//! Every model's analytic gradient against central finite differences of an independent f64
//! reference loss (`common::reference_mean_loss`).
//!
//! The model computes in f32; the reference in f64 with step h = 1e-5, whose truncation error
//! O(h^2 |f'''|) is far below f32 rounding. An f32 gradient sum over r rows of width w has
//! relative rounding error around sqrt(r w) * 6e-8, under 1e-4 here, so we ask
//! |g - g_fd| <= 1e-3 * max(1, |g_fd|), while a wrong derivative is off by O(1).

use minibatch::model::{Activation, Batch, GradInto, Head, Mlp, MlpSpec, Model, Stats};
use minibatch::reduce::tree_reduce;
use ndarray::Array2;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::common::{prepared, random_dataset, reference_mean_loss};

fn check(spec: MlpSpec, n_classes: Option<usize>, param_scale: f32, seed: u64) {
    let n = 7;
    let data = random_dataset(n, spec.d_in, n_classes, seed);
    let model = Mlp::new(spec.clone());
    let mut params = vec![0.0f32; model.layout().n_params()];
    model.init(&mut params, &mut StdRng::seed_from_u64(seed));
    // Non-zero biases, and optionally huge weights to drive the logits to extremes.
    for (i, p) in params.iter_mut().enumerate() {
        *p = *p * param_scale + 0.01 * ((i % 7) as f32 - 3.0);
    }
    let mut ws = model.workspace(n);
    // NaN everywhere: the model must overwrite every element, not add into it.
    let mut grad = vec![f32::NAN; params.len()];
    let batch = Batch::block(data.x(), ndarray::ArrayView1::from(data.targets()));
    let stats = model.loss_grad_sum(
        &params,
        &prepared(&model, &params),
        batch,
        &mut ws,
        &mut grad,
    );

    let p64: Vec<f64> = params.iter().map(|&p| f64::from(p)).collect();
    let reference = reference_mean_loss(&spec, &p64, &data);
    let loss = stats.loss_sum / n as f64;
    assert!(
        (loss - reference).abs() <= 1e-4 * reference.abs().max(1.0),
        "{}: loss {loss} vs reference {reference}",
        spec.describe()
    );
    let h = 1e-5;
    for i in 0..params.len() {
        let mut plus = p64.clone();
        plus[i] += h;
        let mut minus = p64.clone();
        minus[i] -= h;
        let fd = (reference_mean_loss(&spec, &plus, &data)
            - reference_mean_loss(&spec, &minus, &data))
            / (2.0 * h);
        let g = f64::from(grad[i]) / n as f64;
        assert!(
            (g - fd).abs() <= 1e-3 * fd.abs().max(1.0),
            "{}: d loss / d param[{i}] = {g}, finite differences say {fd}",
            spec.describe()
        );
    }
}

fn spec(d_in: usize, hidden: &[usize], activation: Activation, head: Head) -> MlpSpec {
    MlpSpec {
        d_in,
        hidden: hidden.to_vec(),
        activation,
        head,
    }
}

#[test]
fn linear_regression_gradient_matches_central_differences() {
    check(spec(5, &[], Activation::Relu, Head::Mse), None, 1.0, 1);
}

#[test]
fn logistic_regression_gradient_matches_central_differences() {
    check(
        spec(5, &[], Activation::Relu, Head::Logistic),
        Some(2),
        1.0,
        2,
    );
}

#[test]
fn softmax_regression_gradient_matches_central_differences() {
    check(
        spec(5, &[], Activation::Relu, Head::Softmax { n_classes: 4 }),
        Some(4),
        1.0,
        3,
    );
}

#[test]
fn mlp_gradient_matches_central_differences_for_every_activation_and_head() {
    let heads = [
        (Head::Mse, None),
        (Head::Logistic, Some(2)),
        (Head::Softmax { n_classes: 3 }, Some(3)),
    ];
    for (k, activation) in [Activation::Relu, Activation::Tanh, Activation::Sigmoid]
        .into_iter()
        .enumerate()
    {
        for (j, (head, classes)) in heads.into_iter().enumerate() {
            check(
                spec(4, &[6, 5], activation, head),
                classes,
                1.0,
                10 + (3 * k + j) as u64,
            );
        }
    }
}

#[test]
fn logistic_and_softmax_stay_exact_with_extreme_logits() {
    // Weights x60 put the logits in the hundreds: a naive exp() would overflow to inf/NaN.
    check(
        spec(5, &[], Activation::Relu, Head::Logistic),
        Some(2),
        60.0,
        20,
    );
    check(
        spec(5, &[], Activation::Relu, Head::Softmax { n_classes: 4 }),
        Some(4),
        60.0,
        21,
    );
    check(
        spec(4, &[6], Activation::Tanh, Head::Softmax { n_classes: 3 }),
        Some(3),
        60.0,
        22,
    );
}

#[test]
fn an_indexed_batch_gives_the_same_bits_as_its_rows_gathered() {
    // The trainer hands models row indices; evaluation and these tests hand contiguous
    // blocks. Both must compute the same thing, for the gathering MLP path and for the
    // in-place single-output path.
    let idx = [5usize, 0, 3, 3, 6];
    for (spec, classes) in [
        (
            spec(4, &[6], Activation::Tanh, Head::Softmax { n_classes: 3 }),
            Some(3),
        ),
        (spec(4, &[], Activation::Relu, Head::Logistic), Some(2)),
    ] {
        let data = random_dataset(7, 4, classes, 30);
        let model = Mlp::new(spec);
        let mut params = vec![0.0f32; model.layout().n_params()];
        model.init(&mut params, &mut StdRng::seed_from_u64(30));
        let shared = prepared(&model, &params);
        let mut ws = model.workspace(idx.len());
        let mut from_idx = vec![0.0f32; params.len()];
        let s1 = model.loss_grad_sum(&params, &shared, data.indexed(&idx), &mut ws, &mut from_idx);
        let x = ndarray::Array2::from_shape_fn((idx.len(), 4), |(r, c)| data.x()[[idx[r], c]]);
        let y = ndarray::Array1::from_shape_fn(idx.len(), |r| data.targets()[idx[r]]);
        let mut from_block = vec![0.0f32; params.len()];
        let s2 = model.loss_grad_sum(
            &params,
            &shared,
            Batch::block(x.view(), y.view()),
            &mut ws,
            &mut from_block,
        );
        assert_eq!(s1, s2);
        assert_eq!(from_idx, from_block);
    }
}

/// Adding a batch's gradient into a buffer (`GradInto::Add`, how `loss_grad_group_apart`
/// puts two shards into one row) gives the bits of the sum formed apart and then added, as the reduction tree
/// would: for products added by the kernel (64 rows), tiny ones, ones deeper than a k-block
/// (300 rows), and the row-by-row linear model.
#[test]
fn adding_into_a_buffer_gives_the_bits_of_adding_the_sum_apart() {
    for (spec, classes, rows) in [
        (
            spec(40, &[72], Activation::Relu, Head::Softmax { n_classes: 5 }),
            Some(5),
            64,
        ),
        (
            spec(4, &[6], Activation::Tanh, Head::Softmax { n_classes: 3 }),
            Some(3),
            7,
        ),
        (spec(12, &[16], Activation::Sigmoid, Head::Mse), None, 300),
        (spec(30, &[], Activation::Relu, Head::Logistic), Some(2), 64),
    ] {
        let data = random_dataset(rows, spec.d_in, classes, 31);
        let model = Mlp::new(spec.clone());
        let mut params = vec![0.0f32; model.layout().n_params()];
        model.init(&mut params, &mut StdRng::seed_from_u64(31));
        let shared = prepared(&model, &params);
        let mut ws = model.workspace(rows);
        let idx: Vec<usize> = (0..rows).rev().collect();
        let mut apart = vec![0.0f32; params.len()];
        let s1 = model.loss_grad_sum(&params, &shared, data.indexed(&idx), &mut ws, &mut apart);
        // A buffer far larger than the sum's terms, so that any other order of additions
        // rounds differently somewhere.
        let held: Vec<f32> = (0..params.len())
            .map(|i| (i % 29) as f32 * 1e3 + 0.123)
            .collect();
        let mut added = held.clone();
        let into = GradInto::Add;
        let batch = data.indexed(&idx);
        let s2 = model.loss_grad_into(&params, &shared, batch, &mut ws, &mut added, into);
        assert_eq!(s1, s2);
        for (i, ((&got, &h), &g)) in added.iter().zip(&held).zip(&apart).enumerate() {
            assert_eq!(
                got.to_bits(),
                (h + g).to_bits(),
                "{}: param {i}",
                spec.describe()
            );
        }
    }
}

/// A group of shards through the model at once (`loss_grad_group`: the MLP's one pass over
/// the group's rows, the shards' weight gradients summed tile by tile) gives the bits of
/// each shard's gradient in a row of its own summed by the reduction tree, and each
/// shard's stats: at 2, 3, 4, 5 and 8 shards, within one k-block of the kernel (4 x 64
/// rows) and across two (8 shards, the last of 37 rows), products too small to block
/// (8-row shards), shards deeper than a k-block (300 rows), indexed and contiguous rows,
/// and the row-by-row linear model.
#[test]
fn a_group_in_one_pass_gives_the_bits_of_its_shards_summed_by_the_tree() {
    let relu = || {
        spec(
            40,
            &[72, 24],
            Activation::Relu,
            Head::Softmax { n_classes: 5 },
        )
    };
    let tanh = spec(
        12,
        &[8, 6],
        Activation::Tanh,
        Head::Softmax { n_classes: 3 },
    );
    let mse = spec(12, &[16], Activation::Sigmoid, Head::Mse);
    let logistic = spec(30, &[], Activation::Relu, Head::Logistic);
    for (spec, classes, shard_rows, shards, last) in [
        (relu(), Some(5), 64, 4, 64),
        (relu(), Some(5), 64, 8, 37),
        (relu(), Some(5), 64, 2, 64),
        (relu(), Some(5), 100, 3, 100),
        (tanh, Some(3), 8, 5, 8),
        (mse, None, 300, 2, 300),
        (logistic, Some(2), 64, 3, 20),
    ] {
        let rows = shard_rows * (shards - 1) + last;
        let data = random_dataset(rows + 5, spec.d_in, classes, 37);
        let model = Mlp::new(spec.clone());
        let mut params = vec![0.0f32; model.layout().n_params()];
        model.init(&mut params, &mut StdRng::seed_from_u64(37));
        let shared = prepared(&model, &params);
        let mut ws = model.workspace(rows);
        let idx: Vec<usize> = (0..rows).map(|i| (i * 7 + 3) % (rows + 5)).collect();
        let targets = ndarray::ArrayView1::from(data.targets());
        let x = data.x();
        let block = Batch::block(
            x.slice(ndarray::s![..rows, ..]),
            targets.slice(ndarray::s![..rows]),
        );
        let case = format!("{} in {shards} shards of {shard_rows}", spec.describe());
        for batch in [data.indexed(&idx), block] {
            let mut apart = Array2::from_elem((shards, params.len()), f32::NAN);
            let mut want_stats = Vec::new();
            let mut rest = batch;
            for mut row in apart.rows_mut() {
                let (shard, after) = rest.split_at(shard_rows.min(rest.rows()));
                rest = after;
                let grad = row.as_slice_mut().unwrap();
                want_stats.push(model.loss_grad_sum(&params, &shared, shard, &mut ws, grad));
            }
            tree_reduce(apart.view_mut(), shards);
            let mut grouped = Array2::from_elem((shards, params.len()), f32::NAN);
            let mut stats = vec![Stats::default(); shards];
            let view = grouped.view_mut();
            model.loss_grad_group(
                &params, &shared, batch, shard_rows, &mut ws, view, &mut stats,
            );
            assert_eq!(stats, want_stats, "{case}");
            for (i, (&got, &want)) in grouped.row(0).iter().zip(apart.row(0)).enumerate() {
                assert_eq!(got.to_bits(), want.to_bits(), "{case}: param {i}");
            }
        }
    }
}
