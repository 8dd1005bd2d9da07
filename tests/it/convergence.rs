//! Full-batch gradient descent on linear regression reaches the least-squares solution,
//! which the test solves independently in f64 from the normal equations.

use minibatch::model::Model;
use minibatch::{Mlp, Trainer};
use ndarray::ArrayView1;

use crate::common::{bits, config, prepared, random_dataset};

/// Solves A x = b (A n x n, symmetric positive definite here) by Gaussian elimination with
/// partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col].clone();
            for (dst, src) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *dst -= f * src;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

#[test]
fn full_batch_descent_on_linear_regression_reaches_least_squares() {
    let (n, d) = (50, 3);
    let data = random_dataset(n, d, None, 11);
    // Normal equations for [w; b] with the design matrix [x, 1].
    let mut ata = vec![vec![0.0f64; d + 1]; d + 1];
    let mut atb = vec![0.0f64; d + 1];
    for (row, &y) in data.x().rows().into_iter().zip(data.targets()) {
        let mut a: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        a.push(1.0);
        for i in 0..=d {
            atb[i] += a[i] * f64::from(y);
            for j in 0..=d {
                ata[i][j] += a[i] * a[j];
            }
        }
    }
    let solution = solve(ata, atb);

    let cfg = config(&format!(
        "[data]\nsynthetic = \"linear\"\nn = {n}\nd = {d}\n[train]\nbatch_size = {n}\nepochs = 3000\nlr = 0.3\nthreads = 1\n"
    ));
    let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), d, &cfg.train, 0).unwrap();
    trainer.fit(&data, None, |_| {}).unwrap();
    // Layout: w1 (d, 1) then b1 (1,).
    let params = trainer.params();
    for (i, (&got, &want)) in params.iter().zip(&solution).enumerate() {
        assert!(
            (f64::from(got) - want).abs() < 1e-4,
            "parameter {i}: {got} vs least squares {want}"
        );
    }
}

/// One step is theta - lr * (sum of the shards' gradients) / B, bit for bit: through the
/// one-shard path (one shard of 10 rows) and through the shard queue, the groups and the
/// reduction (shards of 3, 3, 3 and 1 rows, summed by the tree: (s0 + s1) + (s2 + s3)).
#[test]
fn one_step_is_theta_minus_lr_times_the_mean_gradient() {
    for shard_rows in [10, 3] {
        let cfg = config(&format!(
            "[data]\nsynthetic = \"teacher\"\nn = 100\nd = 6\nclasses = 3\n[model]\nhidden = [5]\n[train]\nbatch_size = 10\nshard_rows = {shard_rows}\nlr = 0.7\n"
        ));
        let data = random_dataset(100, 6, Some(3), 12);
        let model = Mlp::new(cfg.model.clone());
        let mut trainer = Trainer::new(model.clone(), 6, &cfg.train, 5).unwrap();
        let before = trainer.params().to_vec();
        let idx = [3, 97, 41, 0, 15, 16, 77, 58, 23, 9];
        let got = trainer.step(&data, &idx, 0.7).unwrap();

        // Each shard's gradient sum on its own, then the tree over the shards.
        let mut ws = model.workspace(10);
        let shared = prepared(&model, &before);
        let mut sums = Vec::new();
        let (mut loss_sum, mut n_correct) = (0.0f64, 0);
        for rows in idx.chunks(shard_rows) {
            let x =
                ndarray::Array2::from_shape_fn((rows.len(), 6), |(r, c)| data.x()[[rows[r], c]]);
            let y: Vec<f32> = rows.iter().map(|&i| data.targets()[i]).collect();
            let mut grad = vec![0.0f32; before.len()];
            let stats = model.loss_grad_sum(
                &before,
                &shared,
                minibatch::Batch::block(x.view(), ArrayView1::from(&y)),
                &mut ws,
                &mut grad,
            );
            loss_sum += stats.loss_sum;
            n_correct += stats.n_correct;
            sums.push(grad);
        }
        let mut stride = 1;
        while stride < sums.len() {
            for i in (0..sums.len()).step_by(2 * stride) {
                if i + stride < sums.len() {
                    let right = sums[i + stride].clone();
                    for (l, r) in sums[i].iter_mut().zip(right) {
                        *l += r;
                    }
                }
            }
            stride *= 2;
        }
        let grad = &sums[0];
        for (i, ((&p0, &g), &p1)) in before.iter().zip(grad).zip(trainer.params()).enumerate() {
            let expected = p0 - 0.7 * (g * (1.0 / 10.0));
            assert_eq!(
                p1.to_bits(),
                expected.to_bits(),
                "shard_rows {shard_rows}, parameter {i}"
            );
        }
        assert_ne!(before, trainer.params());
        // The step's stats are the batch's, once.
        assert_eq!(got.loss_sum.to_bits(), loss_sum.to_bits());
        assert_eq!((got.rows, got.n_correct), (10, n_correct));
        assert_eq!(trainer.optimizer().steps_taken(), 1);
    }
}

#[test]
fn a_step_whose_loss_is_not_finite_changes_neither_parameters_nor_optimizer() {
    // One shard (stepped on its own) and two (through the shard queue and the reduction).
    for shard_rows in [8, 4] {
        let cfg = config(&format!(
            "[data]\nsynthetic = \"linear\"\nn = 64\nd = 3\n[model]\nkind = \"linear\"\n\
             [train]\nbatch_size = 8\nshard_rows = {shard_rows}\nthreads = 1\nlr = 0.01\n\
             optimizer = \"momentum\"\n"
        ));
        let data = random_dataset(64, 3, None, 4);
        let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), 3, &cfg.train, 1).unwrap();
        let idx: Vec<usize> = (0..8).collect();
        trainer.step(&data, &idx, 0.01).unwrap();
        let momentum = trainer.optimizer().buffers().0.to_vec();
        // w = (MAX, MAX, ...): every prediction is at least 1e20 away, its square infinite.
        let mut bad = trainer.params().to_vec();
        bad[..2].fill(f32::MAX);
        trainer.set_params(&bad).unwrap();
        let stats = trainer.step(&data, &idx, 0.01).unwrap();
        assert!(!stats.loss_sum.is_finite(), "{shard_rows}-row shards");
        assert_eq!(
            bits(trainer.params()),
            bits(&bad),
            "{shard_rows}-row shards"
        );
        assert_eq!(bits(trainer.optimizer().buffers().0), bits(&momentum));
        assert_eq!(
            trainer.optimizer().steps_taken(),
            1,
            "{shard_rows}-row shards"
        );
    }
}
