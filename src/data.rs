//! Datasets in memory and the three built-in synthetic workloads.
//!
//! A `Dataset` is a dense row-major feature matrix and a target per row (class ids are exact
//! integers stored as f32, so there is one gather path). The generators fill rows in blocks of
//! `BLOCK_ROWS` in parallel; each block has its own RNG seeded from (seed, split, block), so
//! the data do not depend on the thread count and N = 1,000,000 x 1,000 takes seconds.

use std::sync::Arc;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use ndarray_rand::RandomExt;
use ndarray_rand::rand_distr::{Distribution, StandardNormal};
use rand::rngs::{SmallRng, StdRng};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use xxhash_rust::xxh3::Xxh3;

use crate::config::{DataConfig, Synthetic};
use crate::model::{Batch, argmax, sigmoid};

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `(n, d)`, row-major (the trainer gathers rows as slices).
    x: Array2<f32>,
    /// `(n,)`: a real target, or a class id in 0..n_classes.
    y: Array1<f32>,
    /// `None` for regression targets.
    n_classes: Option<usize>,
    /// The feature columns' names, when a file's header gave them.
    feature_names: Option<Vec<String>>,
}

impl Dataset {
    /// Checks what the trainer relies on: one target per row, finite values, class ids that
    /// are integers in 0..n_classes. The message names the first offending row (from 1).
    pub fn new(x: Array2<f32>, y: Array1<f32>, n_classes: Option<usize>) -> Result<Self, String> {
        if x.nrows() != y.len() {
            return Err(format!(
                "{} feature rows but {} targets",
                x.nrows(),
                y.len()
            ));
        }
        if let Some(row) = x
            .rows()
            .into_iter()
            .position(|r| r.iter().any(|v| !v.is_finite()))
        {
            return Err(format!("row {}: features must be finite", row + 1));
        }
        for (i, &t) in y.iter().enumerate() {
            let row = i + 1;
            let ok = match n_classes {
                None => t.is_finite(),
                Some(k) => t >= 0.0 && t.fract() == 0.0 && (t as usize) < k,
            };
            if !ok {
                return Err(match n_classes {
                    None => format!("row {row}: target {t} is not finite"),
                    Some(k) => format!("row {row}: label {t} is not a class id in 0..{k}"),
                });
            }
        }
        // Rows are gathered as slices, so the features must be row-major (no copy if they are).
        let x = if x.is_standard_layout() {
            x
        } else {
            x.as_standard_layout().into_owned()
        };
        Ok(Dataset {
            x,
            y,
            n_classes,
            feature_names: None,
        })
    }

    /// The feature columns' names, as a file's header gave them.
    pub fn with_feature_names(mut self, names: Vec<String>) -> Self {
        self.feature_names = Some(names);
        self
    }

    pub fn feature_names(&self) -> Option<&[String]> {
        self.feature_names.as_deref()
    }

    /// x <- (x - mean) / std per feature (the statistics of the training rows).
    /// Formed in f64: x - mean can pass f32's range where x and mean do not. With these
    /// rows' own statistics every value stays within sqrt(n) (one term of the variance);
    /// other rows (data given to a saved model) may pass f32's range: the first such row
    /// (0-based) is the error, `past_f32` its message.
    pub fn standardize(&mut self, mean: &[f32], std: &[f32]) -> Result<(), usize> {
        let bad = std::sync::atomic::AtomicUsize::new(usize::MAX);
        self.x
            .axis_chunks_iter_mut(Axis(0), STAT_ROWS)
            .into_par_iter()
            .enumerate()
            .for_each(|(chunk, mut rows)| {
                for (i, mut row) in rows.rows_mut().into_iter().enumerate() {
                    for ((x, &m), &s) in row.iter_mut().zip(mean).zip(std) {
                        *x = ((f64::from(*x) - f64::from(m)) / f64::from(s)) as f32;
                    }
                    if row.iter().any(|x| !x.is_finite()) {
                        bad.fetch_min(chunk * STAT_ROWS + i, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        match bad.into_inner() {
            usize::MAX => Ok(()),
            row => Err(row),
        }
    }

    /// A hash of the shape, features and targets (their bits), for checking that MPI ranks
    /// read the same data: blocks hashed in parallel, combined in block order. XXH3, whose
    /// output is fixed by its specification: ranks built apart (another compiler, another
    /// machine) agree, which the standard library's hasher does not promise.
    pub fn fingerprint(&self) -> u64 {
        let mut blocks = Vec::new();
        self.features()
            .par_chunks(1 << 18)
            .map(hash_f32s)
            .collect_into_vec(&mut blocks);
        let mut h = Xxh3::new();
        // Regression data (no classes) apart from any class count.
        let classes = self.n_classes.map_or(0, |c| c + 1);
        for n in [self.n(), self.d(), classes, blocks.len()] {
            h.update(&(n as u64).to_le_bytes());
        }
        for b in blocks.iter().chain([&hash_f32s(self.targets())]) {
            h.update(&b.to_le_bytes());
        }
        h.digest()
    }

    /// Features as one row-major slice of n * d values.
    pub fn features(&self) -> &[f32] {
        self.x.as_slice().expect("datasets are row-major")
    }

    pub fn targets(&self) -> &[f32] {
        self.y.as_slice().expect("fresh arrays are contiguous")
    }

    pub fn x(&self) -> ndarray::ArrayView2<'_, f32> {
        self.x.view()
    }

    pub fn y(&self) -> ndarray::ArrayView1<'_, f32> {
        self.y.view()
    }

    /// Rows `idx`, in that order, without copying them.
    pub fn indexed<'a>(&'a self, idx: &'a [usize]) -> Batch<'a> {
        Batch::indexed(self.x.view(), self.y.view(), idx)
    }

    pub fn n_classes(&self) -> Option<usize> {
        self.n_classes
    }

    pub fn n(&self) -> usize {
        self.x.nrows()
    }

    pub fn d(&self) -> usize {
        self.x.ncols()
    }

    /// Rows `range` as a batch, without copying.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Batch<'_> {
        Batch::block(
            self.x.slice(ndarray::s![range.clone(), ..]),
            self.y.slice(ndarray::s![range]),
        )
    }
}

/// Datasets read from files by the config: the training rows and, from a separate file or
/// a seeded split, the validation rows, both standardised with the training statistics
/// when asked.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedData {
    pub train: Arc<Dataset>,
    pub valid: Option<Arc<Dataset>>,
    /// Per-feature (mean, standard deviation) of the training rows, when standardised; saved
    /// with the model so that evaluation applies the same transformation.
    pub standardization: Option<(Vec<f32>, Vec<f32>)>,
    /// The classes the labels were read as (class names when they are words); saved with
    /// the model so that other files' labels are read as the same classes.
    pub classes: crate::io::Classes,
    /// For a split of one file (`valid_fraction`), the file's 0-based row of each
    /// validation row, so predictions name the rows as the file has them.
    pub valid_rows: Option<Vec<usize>>,
}

/// The file an error of `LoadedData::new` is about: the training data's (a split's rows
/// included), or the separate validation file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Valid,
}

impl LoadedData {
    pub fn new(
        train: Dataset,
        valid: Option<Dataset>,
        valid_fraction: f64,
        seed: u64,
        standardize: bool,
        classes: crate::io::Classes,
    ) -> Result<Self, (Part, String)> {
        // A split's rows in the file's order: the file's row of each training row, then of
        // each validation row.
        let mut split_rows: Vec<usize> = Vec::new();
        let (mut train, mut valid) = if valid_fraction > 0.0 {
            let n_valid = (train.n() as f64 * valid_fraction).round() as usize;
            if n_valid == 0 || n_valid >= train.n() {
                return Err((
                    Part::Train,
                    format!(
                        "a validation fraction of {valid_fraction} of {} rows leaves an empty \
                         split",
                        train.n()
                    ),
                ));
            }
            let mut order: Vec<usize> = (0..train.n()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(mix(seed, stream::SPLIT)));
            let pick = |rows: &[usize]| {
                let x = train.x.select(Axis(0), rows);
                let y = train.y.select(Axis(0), rows);
                let rows = Dataset::new(x, y, train.n_classes).expect("rows of a valid dataset");
                Dataset {
                    feature_names: train.feature_names.clone(),
                    ..rows
                }
            };
            split_rows = order;
            (
                pick(&split_rows[n_valid..]),
                Some(pick(&split_rows[..n_valid])),
            )
        } else {
            (train, valid)
        };
        let n_valid = valid.as_ref().map_or(0, Dataset::n);
        let mut standardization = None;
        if standardize {
            let (mean, std) = feature_statistics(train.x.view());
            // Rows named as their file has them: a split's through its order.
            let file_row = |row: usize, offset: usize| match split_rows.get(offset + row) {
                Some(&file_row) => file_row + 1,
                None => row + 1,
            };
            train
                .standardize(&mean, &std)
                .map_err(|row| (Part::Train, past_f32(file_row(row, n_valid))))?;
            if let Some(valid) = valid.as_mut() {
                valid
                    .standardize(&mean, &std)
                    .map_err(|row| (Part::Valid, past_f32(file_row(row, 0))))?;
            }
            standardization = Some((mean, std));
        }
        Ok(LoadedData {
            train: Arc::new(train),
            valid: valid.map(Arc::new),
            standardization,
            classes,
            valid_rows: (!split_rows.is_empty()).then(|| split_rows[..n_valid].to_vec()),
        })
    }
}

/// Rows per parallel block of `feature_statistics` and `Dataset::standardize`.
const STAT_ROWS: usize = 4096;

/// Each feature's mean and standard deviation (population, as numpy's `std`), summed in f64
/// over fixed blocks of rows added in block order (the same bits on any thread count): an f32
/// running sum drifts far off for a feature with a large offset (1e6 + N(0, 1) over 20,000
/// rows came out 90 standard deviations off), and f32 squares of 1e20 and more overflow. A
/// constant feature's deviation is taken as 1, so it standardises to 0.
pub fn feature_statistics(x: ArrayView2<f32>) -> (Vec<f32>, Vec<f32>) {
    let n = x.nrows();
    let mean: Vec<f64> = column_sums(x, |_, v| f64::from(v))
        .iter()
        .map(|s| s / n as f64)
        .collect();
    let var = column_sums(x, |j, v| (f64::from(v) - mean[j]).powi(2));
    // At most half the range of f32 values, so within f32's range; below its smallest
    // value the feature is constant as f32 sees it.
    let std = var
        .iter()
        .map(|v| match (v / n as f64).sqrt() as f32 {
            s if s > 0.0 => s,
            _ => 1.0,
        })
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

/// Per column, the sum of `f(column, value)` over the rows, in f64: block sums in block order.
fn column_sums(x: ArrayView2<f32>, f: impl Fn(usize, f32) -> f64 + Sync) -> Vec<f64> {
    let d = x.ncols();
    let mut blocks = Vec::new();
    x.axis_chunks_iter(Axis(0), STAT_ROWS)
        .into_par_iter()
        .map(|rows| {
            let mut sum = vec![0.0f64; d];
            for row in rows.rows() {
                for (j, (s, &v)) in sum.iter_mut().zip(row).enumerate() {
                    *s += f(j, v);
                }
            }
            sum
        })
        .collect_into_vec(&mut blocks);
    let mut total = vec![0.0f64; d];
    for block in blocks {
        for (t, s) in total.iter_mut().zip(block) {
            *t += s;
        }
    }
    total
}

/// The training and validation sets a config describes: read from files at validation
/// (shared, not copied), or generated now.
pub fn load(cfg: &DataConfig, seed: u64) -> (Arc<Dataset>, Option<Arc<Dataset>>) {
    match &cfg.file {
        Some(loaded) => (Arc::clone(&loaded.train), loaded.valid.clone()),
        None => {
            let (train, valid) = synthetic(cfg, seed);
            (Arc::new(train), valid.map(Arc::new))
        }
    }
}

/// Rows per generator block: the unit of parallel work and of seeding.
const BLOCK_ROWS: usize = 2048;

/// The training and (possibly empty) validation sets of a synthetic config, generated in
/// parallel on the current rayon pool. The ground truth (teacher or weights) comes from
/// `seed`; the two splits use different row streams of the same truth.
pub fn synthetic(cfg: &DataConfig, seed: u64) -> (Dataset, Option<Dataset>) {
    let truth = Truth::new(cfg, seed);
    let train = generate(cfg, &truth, cfg.n_train, mix(seed, stream::TRAIN_ROWS));
    let valid = (cfg.n_valid > 0)
        .then(|| generate(cfg, &truth, cfg.n_valid, mix(seed, stream::VALID_ROWS)));
    (train, valid)
}

/// The fixed model that labels the rows.
enum Truth {
    /// labels = argmax(tanh(x t1 * scale) t2): nonlinear, so an MLP beats a linear model.
    Teacher {
        t1: Array2<f32>,
        t2: Array2<f32>,
        scale: f32,
    },
    /// P(y = 1) = sigmoid(x . w).
    Logistic { w: Array1<f32> },
    /// y = x . w + bias + noise * N(0, 1).
    Linear {
        w: Array1<f32>,
        bias: f32,
        noise: f32,
    },
}

/// Width of the teacher's hidden layer.
const TEACHER_HIDDEN: usize = 32;

impl Truth {
    fn new(cfg: &DataConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(mix(seed, stream::TRUTH));
        let d = cfg.d;
        match cfg.synthetic {
            Synthetic::Teacher => Truth::Teacher {
                t1: Array2::random_using((d, TEACHER_HIDDEN), StandardNormal, &mut rng),
                t2: Array2::random_using(
                    (TEACHER_HIDDEN, cfg.n_classes.unwrap_or(2)),
                    StandardNormal,
                    &mut rng,
                ),
                // Features have variance 1/12, so this gives the hidden units unit variance.
                scale: (12.0 / d as f32).sqrt(),
            },
            Synthetic::Logistic => Truth::Logistic {
                // Logits with standard deviation 3: labels are learnable but noisy.
                w: Array1::random_using(d, StandardNormal, &mut rng) * (3.0 / (d as f32).sqrt()),
            },
            Synthetic::Linear => Truth::Linear {
                w: Array1::random_using(d, StandardNormal, &mut rng),
                bias: 0.5,
                noise: cfg.noise,
            },
        }
    }

    /// Features of one block: centred U[-0.5, 0.5) for the teacher (the scale of normalised
    /// pixels: |x|^2 is about d / 12), else unit-variance uniform.
    fn fill_features(&self, x: &mut [f32], rng: &mut SmallRng) {
        match self {
            Truth::Teacher { .. } => x.iter_mut().for_each(|v| *v = rng.random::<f32>() - 0.5),
            _ => {
                let half_width = 3.0f32.sqrt();
                x.iter_mut()
                    .for_each(|v| *v = (rng.random::<f32>() * 2.0 - 1.0) * half_width);
            }
        }
    }

    fn fill_targets(&self, x: ArrayView2<f32>, y: &mut [f32], rng: &mut SmallRng) {
        match self {
            Truth::Teacher { t1, t2, scale } => {
                let mut h = Array2::<f32>::zeros((x.nrows(), TEACHER_HIDDEN));
                general_mat_mul(*scale, &x, t1, 0.0, &mut h);
                h.mapv_inplace(f32::tanh);
                let logits = h.dot(t2);
                for (target, row) in y.iter_mut().zip(logits.axis_iter(Axis(0))) {
                    *target = argmax(row.as_slice().expect("fresh arrays are row-major")) as f32;
                }
            }
            Truth::Logistic { w } => {
                for (target, row) in y.iter_mut().zip(x.axis_iter(Axis(0))) {
                    let p = sigmoid(row.dot(w));
                    *target = f32::from(rng.random::<f32>() < p);
                }
            }
            Truth::Linear { w, bias, noise } => {
                for (target, row) in y.iter_mut().zip(x.axis_iter(Axis(0))) {
                    let eps: f32 = StandardNormal.sample(rng);
                    *target = row.dot(w) + bias + noise * eps;
                }
            }
        }
    }
}

fn generate(cfg: &DataConfig, truth: &Truth, n: usize, stream: u64) -> Dataset {
    let d = cfg.d;
    let mut x = feature_matrix(n, d);
    let mut y = Array1::<f32>::zeros(n);
    x.as_slice_mut()
        .expect("fresh arrays are contiguous")
        .par_chunks_mut(BLOCK_ROWS * d)
        .zip(
            y.as_slice_mut()
                .expect("contiguous")
                .par_chunks_mut(BLOCK_ROWS),
        )
        .enumerate()
        .for_each(|(block, (x_block, y_block))| {
            let mut rng = SmallRng::seed_from_u64(mix(stream, block as u64));
            truth.fill_features(x_block, &mut rng);
            let view = ArrayView2::from_shape((y_block.len(), d), x_block).expect("block shape");
            truth.fill_targets(view, y_block, &mut rng);
        });
    Dataset {
        x,
        y,
        feature_names: None,
        n_classes: cfg.n_classes,
    }
}

/// The random streams a run derives from its one seed, each `mix(seed, stream)`: the data
/// set's truth and rows, the split, the initial weights, the sampler, the descent picture's
/// data and paths. They are part of every saved file's bits: changing a number here changes
/// every run's results.
pub mod stream {
    /// The synthetic set's hidden truth (teacher weights, true coefficients).
    pub const TRUTH: u64 = 0;
    /// Synthetic training rows (each block of rows mixes its index in).
    pub const TRAIN_ROWS: u64 = 1;
    /// Synthetic validation rows.
    pub const VALID_ROWS: u64 = 2;
    /// The sampler; each epoch mixes `EPOCH + epoch` into it.
    pub const SAMPLER: u64 = 3;
    /// The model's initial parameters.
    pub const INIT: u64 = 4;
    /// The validation split of a data file (`valid_fraction`).
    pub const SPLIT: u64 = 5;
    /// The descent picture's data set.
    pub const DESCENT_DATA: u64 = 7;
    /// The descent picture's full-batch path.
    pub const DESCENT_FULL: u64 = 100;
    /// The descent picture's mini-batch paths, one per seed from here on.
    pub const DESCENT_PATHS: u64 = 1000;
    /// An epoch's permutation or draws, within the sampler's stream.
    pub const EPOCH: u64 = 0x5A3B_1E00;
}

/// SplitMix64 of `a` and `b`: independent-looking seeds for derived streams.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x6A09_E667_F3BC_C909);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A zeroed `(n, d)` matrix whose pages, on Linux, are requested as 2 MB huge pages.
/// Training reads rows in shuffled order, and with 4 KB pages nearly every row costs a TLB
/// miss; kernels that grant the request (not every one does) save those.
pub fn feature_matrix(n: usize, d: usize) -> Array2<f32> {
    let mut values = vec![0.0f32; n * d];
    advise_huge_pages(&mut values);
    Array2::from_shape_vec((n, d), values).expect("length is n * d")
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(values: &mut [f32]) {
    const HUGE: usize = 2 << 20;
    let start = values.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(values);
    let aligned = start.next_multiple_of(HUGE);
    if end > aligned + HUGE {
        // SAFETY: the range lies inside `values`, which we own; MADV_HUGEPAGE only changes
        // how the kernel backs untouched pages, never their contents. Failure is harmless.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                (end - aligned) / HUGE * HUGE,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_values: &mut [f32]) {}

/// Why a header's feature columns are not the `expected` ones (as many): read by position,
/// they would feed one feature's values in as another's. `whose` names where the expected
/// names come from ("the model's training data"). For eval and predict's data, a
/// validation file, and the data a `--resume`/`--init` run continues on.
pub fn feature_mismatch(expected: &[String], given: &[String], whose: &str) -> String {
    let list = |names: &[String]| {
        let mut text = names
            .iter()
            .take(8)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > 8 {
            text += &format!(", ... ({} in all)", names.len());
        }
        text
    };
    if expected.len() != given.len() {
        return format!(
            "has {} feature columns ({}); {whose} has {} ({})",
            given.len(),
            list(given),
            expected.len(),
            list(expected)
        );
    }
    let (mut a, mut b) = (expected.to_vec(), given.to_vec());
    a.sort();
    b.sort();
    if a == b {
        return format!(
            "has the feature columns of {whose} in another order ({}; {whose}: {}): put them \
             in that order",
            list(given),
            list(expected)
        );
    }
    let i = expected
        .iter()
        .zip(given)
        .position(|(e, g)| e != g)
        .unwrap_or(0);
    format!(
        "feature column {} is `{}`, where {whose} has `{}` ({whose}: {}); if these are the \
         same features under other names, name them alike",
        i + 1,
        given[i],
        expected[i],
        list(expected)
    )
}

/// The error of a row (1-based, as its file counts data rows) that `Dataset::standardize`
/// took past f32's range.
pub fn past_f32(row: usize) -> String {
    format!(
        "row {row}: a standardised feature is past f32's range (a feature less the training \
         mean, over the training standard deviation)"
    )
}

/// XXH3 of the values' bits, little-endian whatever the machine.
fn hash_f32s(values: &[f32]) -> u64 {
    let mut h = Xxh3::new();
    let mut bytes = [0u8; 4096];
    for chunk in values.chunks(bytes.len() / 4) {
        for (b, v) in bytes.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&v.to_bits().to_le_bytes());
        }
        h.update(&bytes[..chunk.len() * 4]);
    }
    h.digest()
}
