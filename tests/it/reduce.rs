//! The fixed tree: it sums like the exact sum up to pairwise rounding, and its bits do not
//! depend on how many threads run it.

use minibatch::reduce::{REDUCE_CHUNK, tree_reduce};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_rows(n_rows: usize, n_cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_fn((n_rows, n_cols), |_| {
        rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-3..4))
    })
}

#[test]
fn tree_sum_is_within_pairwise_rounding_of_the_exact_sum() {
    for (seed, n_rows) in [(1, 1), (2, 2), (3, 3), (4, 7), (5, 16), (6, 33)] {
        let rows = random_rows(n_rows, 500, seed);
        let mut tree = rows.clone();
        tree_reduce(tree.view_mut(), n_rows);
        let depth = (n_rows as f64).log2().ceil();
        for c in 0..rows.ncols() {
            let exact: f64 = rows.column(c).iter().map(|&v| f64::from(v)).sum();
            let abs_sum: f64 = rows.column(c).iter().map(|&v| f64::from(v).abs()).sum();
            // Pairwise summation: |error| <= depth * eps * sum |x_i| (eps = 2^-24 for f32).
            let bound = 1.01 * depth * f64::from(f32::EPSILON) / 2.0 * abs_sum;
            let got = f64::from(tree[[0, c]]);
            assert!(
                (got - exact).abs() <= bound,
                "seed {seed}, {n_rows} rows, col {c}: {got} vs {exact}"
            );
        }
    }
}

#[test]
fn tree_bits_are_identical_for_1_2_3_and_8_threads() {
    // Wide enough to take the column-parallel path.
    let rows = random_rows(13, 3 * REDUCE_CHUNK + 17, 9);
    let mut results = Vec::new();
    for threads in [1, 2, 3, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut grads = rows.clone();
        pool.install(|| tree_reduce(grads.view_mut(), 13));
        results.push(grads.row(0).iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    // And the order matters in f32 at all for these numbers, so equality is not automatic.
    let sequential: Vec<u32> = (0..rows.ncols())
        .map(|c| rows.column(c).iter().fold(0.0f32, |s, &v| s + v).to_bits())
        .collect();
    assert_ne!(results[0], sequential);
}
