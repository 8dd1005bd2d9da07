//! Helpers shared by the integration tests: seeded data, configs from TOML text, and an
//! independent f64 reference of the built-in model's loss.

use std::path::Path;

use minibatch::Mlp;
use minibatch::config::Config;
use minibatch::model::{Activation, Head, MlpShared, MlpSpec, Model};
use minibatch::{Dataset, RawConfig};
use ndarray::{Array1, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn config(toml_text: &str) -> Config {
    RawConfig::from_toml(toml_text, std::path::Path::new("test.toml"))
        .and_then(|raw| raw.validate())
        .unwrap_or_else(|e| panic!("test config is invalid: {e}"))
}

/// Each value's bits, for comparing results exactly.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A seeded dataset of `n` rows: features in [-1, 1), targets real (None) or classes.
pub fn random_dataset(n: usize, d: usize, n_classes: Option<usize>, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0));
    let y = Array1::from_shape_fn(n, |_| match n_classes {
        None => rng.random_range(-2.0f32..2.0),
        Some(k) => rng.random_range(0..k) as f32,
    });
    Dataset::new(x, y, n_classes).expect("valid dataset")
}

/// The mean loss of an MLP computed in f64 by plain loops, written from the definitions:
/// z_l = a_{l-1} w_l + b_l, a_l = act(z_l), then the head's loss on z_L, averaged over rows.
/// Parameters are read in the documented layout order w1, b1, w2, b2, ...
pub fn reference_mean_loss(spec: &MlpSpec, params: &[f64], data: &Dataset) -> f64 {
    let widths = spec.widths();
    let x = data.x();
    let mut total = 0.0;
    for (row, &target) in x.rows().into_iter().zip(data.targets()) {
        let mut a: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let mut offset = 0;
        for l in 0..widths.len() - 1 {
            let (d_in, d_out) = (widths[l], widths[l + 1]);
            let w = &params[offset..offset + d_in * d_out];
            let b = &params[offset + d_in * d_out..offset + d_in * d_out + d_out];
            offset += d_in * d_out + d_out;
            let mut z: Vec<f64> = (0..d_out)
                .map(|j| b[j] + (0..d_in).map(|i| a[i] * w[i * d_out + j]).sum::<f64>())
                .collect();
            if l + 2 < widths.len() {
                for v in &mut z {
                    *v = match spec.activation {
                        Activation::Relu => v.max(0.0),
                        Activation::Tanh => v.tanh(),
                        Activation::Sigmoid => 1.0 / (1.0 + (-*v).exp()),
                    };
                }
            }
            a = z;
        }
        let t = f64::from(target);
        total += match spec.head {
            Head::Mse => (a[0] - t).powi(2),
            // -[t ln s + (1 - t) ln(1 - s)] with s = sigmoid(z), as ln(1 + e^z) - t z.
            Head::Logistic => a[0].max(0.0) + (-a[0].abs()).exp().ln_1p() - t * a[0],
            Head::Softmax { .. } => {
                let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + a.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                lse - a[t as usize]
            }
        };
    }
    total / data.n() as f64
}

/// A fresh empty directory under the target dir, unique per test name.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The model's per-step shared state for `params`, as the trainer prepares it.
pub fn prepared(model: &Mlp, params: &[f32]) -> MlpShared {
    let mut shared = model.shared();
    let usage = minibatch::model::Usage {
        parallel: true,
        rows: 64,
        readers: 2,
    };
    model.prepare(params, &mut shared, usage);
    shared
}

/// Writes a little-endian .npy with `descr` and `shape` (as Python writes them).
pub fn write_npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}
