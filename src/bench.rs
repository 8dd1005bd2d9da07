//! `minibatch bench`: training speed of the standard workloads, measured against this
//! machine's own limits in the same run.
//!
//! For each workload (the configs in configs/, embedded), batch size and thread count it
//! trains `--epochs` epochs (`--rounds` times, spread over the run) and reports the fastest
//! epoch's examples/s, the effective GFLOP/s of the model's products,
//! the share of that in the peak FMA rate of as many threads (measured here by a loop of
//! independent fused multiply-adds in registers at the widest vector width), the feature
//! bytes read per second against the memory bandwidth of as many threads (measured here by a
//! large copy), the reduction's share of step time and the speedup over one thread. Because
//! the limits are measured minutes apart from the runs, the ratios survive a noisy machine
//! better than the raw figures.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Instant;

use ndarray::s;
use serde::Serialize;

use crate::config::{Config, RawConfig};
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::lines::{LINE, zeros_on_lines};
use crate::model::Mlp;
use crate::model::gemm::Isa;
use crate::reduce::tree_reduce_above;
use crate::shard::{group_size, n_shards};
use crate::train::Trainer;

/// The standard workloads: name, description and config.
pub const WORKLOADS: &[(&str, &str, &str)] = &[
    (
        "w1",
        "MLP 784-256-256-10, N = 60,000",
        include_str!("../configs/w1_mlp.toml"),
    ),
    (
        "w2",
        "logistic regression d = 1,000, N = 1,000,000",
        include_str!("../configs/w2_logreg.toml"),
    ),
    (
        "w3",
        "linear regression d = 10, N = 100,000",
        include_str!("../configs/w3_sgd1.toml"),
    ),
];

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub workloads: Vec<String>,
    /// Empty: each workload's standard batch sizes.
    pub batch_sizes: Vec<usize>,
    pub threads: Vec<NonZeroUsize>,
    /// Shard sizes to compare; empty: the default for each batch size.
    pub shard_rows: Vec<usize>,
    /// Rows of the dataset; `None` keeps the workload's N.
    pub n: Option<usize>,
    /// Epochs run per configuration and round; the fastest of all is reported.
    pub epochs: NonZeroUsize,
    /// Times every row is measured, in rounds over all of a workload's rows; the fastest
    /// counts. A shared machine's slow stretches last seconds to minutes, longer than a
    /// row's epochs: rounds spread a row's measurements over the run.
    pub rounds: NonZeroUsize,
}

/// One row's measurement before its ratios: the fastest epoch's rate and step time, and the
/// reduction's time for the same trainer.
#[derive(Debug, Clone, Copy)]
struct Measured {
    examples_per_sec: f64,
    step_seconds: f64,
    reduce_seconds: f64,
}

/// One measured configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchRow {
    pub workload: String,
    pub batch_size: usize,
    pub threads: usize,
    pub shard_rows: usize,
    pub examples_per_sec: f64,
    pub gflops: f64,
    /// Effective GFLOP/s over the peak FMA rate of the same thread count.
    pub peak_fraction: f64,
    /// Feature bytes read once per example, per second.
    pub feature_gb_per_sec: f64,
    /// Feature bandwidth over the measured copy bandwidth of the same thread count.
    pub bandwidth_fraction: f64,
    /// Time in the reduction over step time.
    pub reduce_fraction: f64,
    /// Examples/s over the 1-thread row of the same workload, batch size and shard size, if
    /// measured.
    pub speedup: Option<f64>,
    /// Karp-Flatt experimentally determined serial fraction from `speedup` on `threads`.
    pub serial_fraction: Option<f64>,
    /// Amdahl's speedup on 16 and 64 threads from `serial_fraction`, at most the batch's
    /// shards running at once (`amdahl_in_shards`).
    pub predicted_speedup_16: Option<f64>,
    pub predicted_speedup_64: Option<f64>,
}

impl BenchRow {
    /// Whether several threads ran this row's shards slower than one: not what the engine
    /// does on a quiet machine (a batch of two or more shards ran 1.4-2x as fast on two
    /// threads in every quiet run), so `bench` says what else can cause it rather than leave
    /// the figure to be trusted. A row of one shard runs on one thread by design and is
    /// never reported; the margin keeps run-to-run noise out.
    pub fn ran_slower_than_on_one_thread(&self) -> bool {
        const BELOW: f64 = 0.9;
        self.threads > 1 && self.shards() > 1 && self.speedup.is_some_and(|s| s < BELOW)
    }

    /// Shards per batch: the most threads the row's shards can keep busy.
    pub fn shards(&self) -> usize {
        self.batch_size.div_ceil(self.shard_rows.max(1))
    }
}

/// Karp-Flatt: e = (1/S - 1/p) / (1 - 1/p), the serial fraction that explains speedup S on p
/// threads under Amdahl's law. `None` for p = 1.
pub fn karp_flatt(speedup: f64, threads: usize) -> Option<f64> {
    (threads > 1).then(|| {
        let p = threads as f64;
        (1.0 / speedup - 1.0 / p) / (1.0 - 1.0 / p)
    })
}

/// Amdahl's law: the speedup on `threads` threads of a run whose serial fraction is `e`.
/// A measured fraction outside [0, 1] is taken at the nearer end: above 1 (more threads
/// ran slower) predicts no gain, below 0 (a superlinear measurement) a linear one.
pub fn amdahl(serial_fraction: f64, threads: usize) -> f64 {
    let e = serial_fraction.clamp(0.0, 1.0);
    1.0 / (e + (1.0 - e) / threads as f64)
}

/// `amdahl` for a step whose shards, most of it, run at most `shards` at once: past that
/// many threads the others have no shard to run (B = 32's two shards gain nothing from a
/// third core, where the plain law predicted 2.7x on 16), though the reduction and update,
/// split by parameter chunks, still spread. So an estimate, not a bound, of what more cores
/// give.
pub fn amdahl_in_shards(serial_fraction: f64, threads: usize, shards: usize) -> f64 {
    amdahl(serial_fraction, threads.min(shards.max(1)))
}

/// Karp-Flatt's serial fraction of a speedup measured on `threads` threads, counting no
/// more of them than the batch has shards (the rest had none to run, and counting them
/// made the fraction, and the predictions from it, fall below what was measured). None for
/// one shard or one thread.
pub fn serial_fraction_in_shards(speedup: f64, threads: usize, shards: usize) -> Option<f64> {
    karp_flatt(speedup, threads.min(shards))
}

/// The machine's limits, measured in this process.
#[derive(Debug, Clone, Serialize)]
pub struct MachineLimits {
    pub isa: String,
    /// Per thread count: peak f32 GFLOP/s (FMA = 2 flops) with that many threads.
    pub peak_gflops: Vec<(usize, f64)>,
    /// Per thread count: copy bandwidth in GB/s (bytes read + written).
    pub copy_gb_per_sec: Vec<(usize, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub limits: MachineLimits,
    pub rows: Vec<BenchRow>,
}

fn standard_batch_sizes(workload: &str) -> &'static [usize] {
    match workload {
        "w1" => &[32, 128, 512, 2048],
        "w2" => &[256, 4096],
        _ => &[1],
    }
}

/// A workload's config with the plan's data size; its own batch size gives way to the
/// plan's (it is 1 here, so that only the data is checked until a batch size is set).
fn workload_config(name: &str, toml_text: &str, plan: &BenchPlan) -> Result<RawConfig> {
    let mut raw = RawConfig::from_toml(toml_text, std::path::Path::new(name))?;
    if let Some(n) = plan.n {
        raw.data.n = Some(n);
        raw.mark_overridden("data.n", "--n");
    }
    raw.train.batch_size = Some(1);
    Ok(raw)
}

/// The batch sizes the plan runs for a workload: its own or the standard ones.
fn batch_sizes(name: &str, plan: &BenchPlan) -> Vec<usize> {
    if plan.batch_sizes.is_empty() {
        standard_batch_sizes(name).to_vec()
    } else {
        plan.batch_sizes.clone()
    }
}

/// One row's config: the workload's with the row's batch size, shards and threads.
fn run_config(
    raw: &RawConfig,
    plan: &BenchPlan,
    batch_size: usize,
    shard_rows: Option<usize>,
    threads: NonZeroUsize,
) -> RawConfig {
    let mut raw = raw.clone();
    raw.train.batch_size = Some(batch_size);
    raw.mark_overridden(
        "train.batch_size",
        if plan.batch_sizes.is_empty() {
            "the workload's standard sizes; --batch-sizes gives others"
        } else {
            "--batch-sizes"
        },
    );
    raw.train.threads = Some(threads.get());
    raw.train.shard_rows = shard_rows;
    raw.train.epochs = Some(plan.epochs.get());
    raw
}

pub fn run(plan: &BenchPlan, mut progress: impl FnMut(&str)) -> Result<BenchReport> {
    for name in &plan.workloads {
        if !WORKLOADS.iter().any(|(w, _, _)| w == name) {
            return Err(Error::config(
                "--workload",
                format!("unknown workload `{name}`; expected w1, w2 or w3"),
            ));
        }
    }
    // Every config the plan will run, checked before the minutes of measuring.
    let selected = || {
        WORKLOADS
            .iter()
            .filter(|(w, _, _)| plan.workloads.iter().any(|p| p == w))
    };
    for &(name, _, toml_text) in selected() {
        let raw = workload_config(name, toml_text, plan)?;
        for &batch_size in &batch_sizes(name, plan) {
            for shard_rows in shard_sizes(&plan.shard_rows, batch_size) {
                for &threads in &plan.threads {
                    run_config(&raw, plan, batch_size, shard_rows, threads).validate()?;
                }
            }
        }
    }
    progress("measuring peak FMA rate and copy bandwidth");
    let measure_limits = || MachineLimits {
        isa: format!("{:?}", Isa::detect()),
        peak_gflops: plan
            .threads
            .iter()
            .map(|t| (t.get(), peak_gflops(t.get())))
            .collect(),
        copy_gb_per_sec: plan
            .threads
            .iter()
            .map(|t| (t.get(), copy_bandwidth(t.get())))
            .collect(),
    };
    let before = measure_limits();
    let mut rows = Vec::new();
    for &(name, _, toml_text) in selected() {
        let raw = workload_config(name, toml_text, plan)?;
        let base = raw.validate()?;
        progress(&format!(
            "{name}: generating {} x {} features",
            base.data.n_train, base.data.d
        ));
        let (train, _) = data::synthetic(&base.data, base.seed);
        // Every row of this workload, in the order they print.
        let mut grid = Vec::new();
        for &batch_size in &batch_sizes(name, plan) {
            for shard_rows in shard_sizes(&plan.shard_rows, batch_size) {
                for &threads in &plan.threads {
                    let cfg = run_config(&raw, plan, batch_size, shard_rows, threads).validate()?;
                    grid.push((batch_size, threads, cfg));
                }
            }
        }
        let rows_per_shard = |b: usize, cfg: &Config| cfg.train.shard_rows.get().min(b);
        let mut best: Vec<Option<Measured>> = vec![None; grid.len()];
        let rounds = plan.rounds.get();
        for round in 1..=rounds {
            for ((batch_size, threads, cfg), best) in grid.iter().zip(&mut best) {
                let per_shard = rows_per_shard(*batch_size, cfg);
                progress(&format!(
                    "{name}: B = {batch_size}, {threads} thread(s), shards of {per_shard} row{}{}",
                    if per_shard == 1 { "" } else { "s" },
                    if rounds > 1 {
                        format!(", round {round} of {rounds}")
                    } else {
                        String::new()
                    }
                ));
                let measured = measure(cfg, &train, *batch_size)?;
                if best.is_none_or(|b| measured.examples_per_sec > b.examples_per_sec) {
                    *best = Some(measured);
                }
            }
        }
        let best: Vec<Measured> = best
            .into_iter()
            .map(|b| b.expect("every row measured at least once"))
            .collect();
        // The speedup is over the 1-thread row of the same batch and shard size, if asked for.
        let one_thread = |batch_size: usize, shard_rows: usize| {
            grid.iter()
                .zip(&best)
                .find(|((b, t, cfg), _)| {
                    (*b, t.get(), rows_per_shard(*b, cfg)) == (batch_size, 1, shard_rows)
                })
                .map(|(_, m)| m.examples_per_sec)
        };
        for ((batch_size, threads, cfg), best) in grid.iter().zip(&best) {
            let batch_size = *batch_size;
            let Measured {
                examples_per_sec,
                step_seconds,
                reduce_seconds,
            } = *best;
            let flops = cfg.model.flops_per_example();
            let gflops = examples_per_sec * flops / 1e9;
            let feature_gb_per_sec = examples_per_sec * (cfg.data.d * 4) as f64 / 1e9;
            let shard_rows = rows_per_shard(batch_size, cfg);
            let one = one_thread(batch_size, shard_rows);
            // A batch of one shard runs on one thread by design (see
            // `Trainer::step_one_shard`): no fraction of it is parallel.
            let shards = n_shards(batch_size, cfg.train.shard_rows);
            let serial_fraction = one.and_then(|one| {
                serial_fraction_in_shards(examples_per_sec / one, threads.get(), shards)
            });
            rows.push(BenchRow {
                workload: name.to_string(),
                batch_size,
                threads: threads.get(),
                shard_rows,
                examples_per_sec,
                gflops,
                peak_fraction: 0.0,
                feature_gb_per_sec,
                bandwidth_fraction: 0.0,
                reduce_fraction: reduce_seconds / step_seconds,
                speedup: one.map(|one| examples_per_sec / one),
                serial_fraction,
                predicted_speedup_16: serial_fraction.map(|e| amdahl_in_shards(e, 16, shards)),
                predicted_speedup_64: serial_fraction.map(|e| amdahl_in_shards(e, 64, shards)),
            });
        }
    }
    // The limits again after the runs, the higher of the two kept: one measurement taken
    // while the machine was busy put training at up to 136% of a "peak".
    progress("measuring peak FMA rate and copy bandwidth again");
    let after = measure_limits();
    let higher = |a: &[(usize, f64)], b: &[(usize, f64)]| -> Vec<(usize, f64)> {
        a.iter()
            .zip(b)
            .map(|(&(t, x), &(_, y))| (t, x.max(y)))
            .collect()
    };
    let limits = MachineLimits {
        isa: before.isa,
        peak_gflops: higher(&before.peak_gflops, &after.peak_gflops),
        copy_gb_per_sec: higher(&before.copy_gb_per_sec, &after.copy_gb_per_sec),
    };
    for r in &mut rows {
        r.peak_fraction = r.gflops / lookup(&limits.peak_gflops, r.threads);
        r.bandwidth_fraction = r.feature_gb_per_sec / lookup(&limits.copy_gb_per_sec, r.threads);
    }
    Ok(BenchReport { limits, rows })
}

/// Trains one row's config for its epochs on a fresh trainer, after a warm-up.
fn measure(cfg: &Config, train: &Dataset, batch_size: usize) -> Result<Measured> {
    let model = Mlp::new(cfg.model.clone());
    let mut trainer = Trainer::new(model, cfg.data.d, &cfg.train, cfg.seed)?;
    // Warm-up: the first steps size every buffer.
    let warm: Vec<usize> = (0..batch_size).collect();
    for _ in 0..3 {
        trainer.step(train, &warm, 0.0)?;
    }
    let report = trainer.fit(train, None, |_| {})?;
    // The fastest epoch: others were slowed by whatever else ran.
    let mut steps_before = 3; // the warm-up's, counted in `steps`
    let mut fastest = (0.0, 0.0);
    for epoch in &report.epochs {
        let steps = epoch.steps.saturating_sub(steps_before).max(1);
        steps_before = epoch.steps;
        if epoch.examples_per_sec() > fastest.0 {
            fastest = (epoch.examples_per_sec(), epoch.seconds / steps as f64);
        }
    }
    let (examples_per_sec, step_seconds) = fastest;
    Ok(Measured {
        examples_per_sec,
        step_seconds,
        reduce_seconds: time_reduce(&trainer, batch_size, &cfg.train),
    })
}

/// The shard sizes to run at `batch_size`: `None` (the default) when none are asked for,
/// else each asked size, capped at the batch, once.
fn shard_sizes(asked: &[usize], batch_size: usize) -> Vec<Option<usize>> {
    if asked.is_empty() {
        return vec![None];
    }
    let mut sizes = Vec::new();
    for &rows in asked {
        let rows = Some(rows.min(batch_size));
        if !sizes.contains(&rows) {
            sizes.push(rows);
        }
    }
    sizes
}

fn lookup(table: &[(usize, f64)], threads: usize) -> f64 {
    table
        .iter()
        .find(|(t, _)| *t == threads)
        .map(|(_, v)| *v)
        .unwrap_or(f64::NAN)
}

/// Seconds of the reduction a step of a full batch runs after its shards, on the trainer's
/// pool: the tree's levels above those summed inside groups of shards (`group_size`).
fn time_reduce<M: crate::model::Model>(
    trainer: &Trainer<M>,
    batch_size: usize,
    cfg: &crate::config::TrainConfig,
) -> f64 {
    let n_shards = n_shards(batch_size, cfg.shard_rows);
    if n_shards <= 1 {
        return 0.0;
    }
    // Rows laid out as the trainer's.
    let n_params = trainer.params().len();
    let mut grads = zeros_on_lines(n_shards, n_params.next_multiple_of(LINE));
    let mut grads = grads.slice_mut(s![.., ..n_params]);
    let done = group_size(n_shards, cfg.shard_rows.get(), cfg.threads.get()).ilog2();
    // The fastest of twenty, as the fastest epoch is taken: a mean let one stalled
    // repetition (a neighbour's burst, a worker woken late) put the reduction at 213% of a
    // step in an outside run.
    trainer.install(|| {
        tree_reduce_above(grads.view_mut(), n_shards, done);
        (0..20)
            .map(|_| {
                let start = Instant::now();
                tree_reduce_above(black_box(grads.view_mut()), n_shards, done);
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    })
}

/// Peak f32 GFLOP/s of `threads` threads running independent FMA chains in registers.
pub fn peak_gflops(threads: usize) -> f64 {
    let per_thread_flops = 2e9; // about 10 ms per thread at AVX-512 speed
    // Total work over wall time (not the best thread's own rate), best of several rounds so
    // that frequency ramp-up and a neighbour's burst do not count as the machine's limit.
    (0..7)
        .map(|_| {
            let start = Instant::now();
            let total: f64 = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| scope.spawn(move || fma_loop(per_thread_flops)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("FMA loop thread"))
                    .sum()
            });
            total / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Runs about `flops` flops of independent FMAs; returns the flops done.
fn fma_loop(flops: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        match Isa::detect() {
            // SAFETY: the CPU has the instruction set, as just detected.
            Isa::Avx512 => return unsafe { fma_loop_avx512(flops) },
            Isa::Avx2 => return unsafe { fma_loop_avx2(flops) },
            Isa::Baseline => {}
        }
    }
    fma_loop_scalar(flops)
}

/// Twelve independent accumulator chains hide the 4-cycle FMA latency on two ports.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(flops: f64) -> f64 {
    use std::arch::x86_64::*;
    let per_iter = 12.0 * 16.0 * 2.0;
    let iters = (flops / per_iter) as usize;
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for v in acc {
        sum = _mm512_add_ps(sum, v);
    }
    black_box(_mm512_reduce_add_ps(sum));
    iters as f64 * per_iter
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(flops: f64) -> f64 {
    use std::arch::x86_64::*;
    let per_iter = 12.0 * 8.0 * 2.0;
    let iters = (flops / per_iter) as usize;
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    for v in acc {
        // SAFETY: `out` holds 8 f32s.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        black_box(out);
    }
    iters as f64 * per_iter
}

fn fma_loop_scalar(flops: f64) -> f64 {
    let per_iter = 8.0 * 2.0;
    let iters = (flops / per_iter) as usize;
    let mut acc = [1.0f32; 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * 0.999_999 + 1e-7;
        }
    }
    black_box(acc);
    iters as f64 * per_iter
}

/// GB/s (read + write) of `threads` threads each copying its own 128 MB buffer.
pub fn copy_bandwidth(threads: usize) -> f64 {
    let len = 32 * 1024 * 1024; // f32s: 128 MB per thread, far beyond the caches
    let mut buffers: Vec<(Vec<f32>, Vec<f32>)> = (0..threads)
        .map(|_| (vec![1.0f32; len], vec![0.0f32; len]))
        .collect();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (src, dst) in buffers.iter_mut() {
                scope.spawn(move || {
                    dst.copy_from_slice(src);
                    black_box(&dst);
                });
            }
        });
        let bytes = (threads * len * 4 * 2) as f64;
        best = best.max(bytes / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_of_several_shards_on_several_threads_are_reported_slower() {
        let row = |batch_size, threads, shard_rows, speedup| BenchRow {
            batch_size,
            threads,
            shard_rows,
            speedup,
            ..BenchRow::default()
        };
        assert!(row(32, 2, 16, Some(0.47)).ran_slower_than_on_one_thread());
        assert!(row(33, 2, 32, Some(0.89)).ran_slower_than_on_one_thread());
        // Within the noise, one shard (on one thread by design), one thread, no baseline.
        assert!(!row(32, 2, 16, Some(0.9)).ran_slower_than_on_one_thread());
        assert!(!row(32, 2, 32, Some(0.5)).ran_slower_than_on_one_thread());
        assert!(!row(1, 2, 1, Some(0.5)).ran_slower_than_on_one_thread());
        assert!(!row(32, 1, 16, Some(0.5)).ran_slower_than_on_one_thread());
        assert!(!row(32, 2, 16, None).ran_slower_than_on_one_thread());
    }

    #[test]
    fn shard_sizes_are_capped_at_the_batch_and_run_once() {
        assert_eq!(shard_sizes(&[], 512), vec![None]);
        assert_eq!(
            shard_sizes(&[64, 256, 512, 64], 256),
            vec![Some(64), Some(256)]
        );
    }

    #[test]
    fn predictions_on_more_threads_than_shards_do_not_fall_below_the_measurement() {
        // Two shards measured at 1.9x on four threads, two of which had none to run.
        let e = serial_fraction_in_shards(1.9, 4, 2).unwrap();
        assert!((e - karp_flatt(1.9, 2).unwrap()).abs() < 1e-12);
        assert!((amdahl_in_shards(e, 16, 2) - 1.9).abs() < 1e-9);
        // Counting the idle threads would predict less than was measured.
        assert!(amdahl_in_shards(karp_flatt(1.9, 4).unwrap(), 16, 2) < 1.8);
        // Eight shards on sixteen threads at 6x: the fraction of 6x on eight.
        let e = serial_fraction_in_shards(6.0, 16, 8).unwrap();
        assert!((amdahl_in_shards(e, 64, 8) - 6.0).abs() < 1e-9);
        assert_eq!(serial_fraction_in_shards(1.0, 4, 1), None);
    }

    #[test]
    fn karp_flatt_and_amdahl_invert_each_other() {
        // Serial fraction 0.1 on 2 threads: S = 1 / (0.1 + 0.9 / 2) = 1 / 0.55.
        let speedup = 1.0 / 0.55;
        assert!((amdahl(0.1, 2) - speedup).abs() < 1e-12);
        assert!((karp_flatt(speedup, 2).unwrap() - 0.1).abs() < 1e-12);
        // Perfect scaling has no serial part; one thread has no estimate.
        assert!(karp_flatt(4.0, 4).unwrap().abs() < 1e-12);
        assert_eq!(karp_flatt(1.0, 1), None);
        // 16 threads at e = 0.05: 1 / (0.05 + 0.95 / 16) = 9.14...
        assert!((amdahl(0.05, 16) - 1.0 / (0.05 + 0.95 / 16.0)).abs() < 1e-12);
        // Two threads at 0.46x of one: Karp-Flatt gives 1/0.46 * 2 - 1 = 3.35, past 1; the
        // prediction is then no gain, and a superlinear measurement (e < 0) a linear one.
        let slower = karp_flatt(0.46, 2).unwrap();
        assert!((slower - (2.0 / 0.46 - 1.0)).abs() < 1e-12);
        assert_eq!(amdahl(slower, 16), 1.0);
        assert_eq!(amdahl(karp_flatt(2.2, 2).unwrap(), 16), 16.0);
    }
}
