//! `minibatch tune`: the batch size with the shortest wall-clock time to a given loss, from
//! measurements on this machine and these data.
//!
//! Two sides (McCandlish et al. 2018). Hardware: the steady-state throughput T(B) of each
//! candidate batch size (and thread count). Statistics: the gradient noise scale B_noise,
//! estimated while training the config. Steps to a loss grow as S_min (1 + B_noise / B), so
//! the time to it is proportional to (B + B_noise) / T(B): the recommendation minimises
//! that. Optionally each candidate also trains to a target loss (or an example budget) with
//! its learning rate scaled, which measures the time directly and, with two or more batch
//! sizes reaching the target, fits the paper's S = S_min (1 + B_crit / B).

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::write_files_in;
use crate::config::{Config, RawConfig};
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::train::{EpochReport, Observer, TrainState, Trainer};

/// How a candidate's learning rate follows from the config's (lr0 at B0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrRule {
    /// lr0 (B / B0) (B0 + B_noise) / (B + B_noise): the paper's rule, linear while B is
    /// well below the noise scale and flat above it.
    NoiseScale,
    Linear,
    Sqrt,
    Constant,
}

impl LrRule {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "noise" => Ok(LrRule::NoiseScale),
            "linear" => Ok(LrRule::Linear),
            "sqrt" => Ok(LrRule::Sqrt),
            "none" => Ok(LrRule::Constant),
            other => Err(Error::config(
                "--lr-rule",
                format!("unknown rule `{other}`; expected noise, linear, sqrt or none"),
            )),
        }
    }

    /// The factor `scale` applies, as the recommendation prints it.
    pub fn formula(self) -> &'static str {
        match self {
            LrRule::NoiseScale => "(B1/B0)(B0 + B_noise)/(B1 + B_noise)",
            LrRule::Linear => "B1/B0",
            LrRule::Sqrt => "sqrt(B1/B0)",
            LrRule::Constant => "1",
        }
    }

    pub fn scale(self, b0: usize, b: usize, b_noise: f64) -> f64 {
        let ratio = b as f64 / b0 as f64;
        match self {
            LrRule::NoiseScale => ratio * (b0 as f64 + b_noise) / (b as f64 + b_noise),
            LrRule::Linear => ratio,
            LrRule::Sqrt => ratio.sqrt(),
            LrRule::Constant => 1.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TunePlan {
    /// Empty: powers of two from 8 to N / 8.
    pub batch_sizes: Vec<usize>,
    /// Empty: the config's thread count.
    pub threads: Vec<usize>,
    pub target_loss: Option<f64>,
    pub budget_examples: Option<u64>,
    pub lr_rule: LrRule,
    /// Seconds of training per throughput measurement.
    pub measure_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TuneRow {
    pub batch_size: usize,
    pub threads: usize,
    pub examples_per_sec: f64,
    pub steps_per_sec: f64,
    /// (B + B_noise) / T(B), relative to the best candidate (1 = fastest to a given loss).
    pub predicted_time: f64,
    pub lr: f64,
    pub steps_to_target: Option<u64>,
    pub examples_to_target: Option<u64>,
    pub seconds_to_target: Option<f64>,
    pub reached_target: Option<bool>,
    pub final_train_loss: Option<f64>,
    pub valid_loss: Option<f64>,
    /// B > 2 B_noise: the large-batch regime the seed warns generalises worse.
    pub above_twice_noise_scale: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    pub rows: Vec<TuneRow>,
    /// (epoch, training loss, B_noise) while training the config, every epoch: B_noise is
    /// none where no step of the epoch measured it (every `NOISE_PERIOD`th step does), or
    /// where the smoothed |G|^2 or tr(Sigma) was not positive (late in a run the gradient
    /// can be small against its noise).
    pub noise_history: Vec<(usize, f64, Option<f64>)>,
    /// The last epoch's B_noise that was estimated, and that epoch.
    pub b_noise: f64,
    pub b_noise_epoch: usize,
    /// Rows per shard in the run that estimated B_noise (`run`: B/8, or the default's).
    pub noise_shard_rows: usize,
    pub base_batch_size: usize,
    pub base_lr: f64,
    pub recommended_batch_size: usize,
    pub recommended_threads: usize,
    pub reason: String,
    /// When a target was asked for and some candidates missed it: how many, and their cap.
    pub missed_target: Option<String>,
    /// The learning rate to use at the recommended B (by the plan's rule, as every row's),
    /// and whether to warm up to it.
    pub suggested_lr: f64,
    #[serde(skip)]
    pub lr_rule: LrRule,
    pub suggest_warmup: bool,
    /// Step time added by the noise-scale estimator at the config's batch size.
    pub estimator_overhead: f64,
    /// (S_min, E_min) fitted to the steps-to-target runs, when at least two reached it.
    pub tradeoff: Option<(f64, f64)>,
}

pub fn run(raw: &RawConfig, plan: &TunePlan, mut progress: impl FnMut(&str)) -> Result<TuneReport> {
    let base = raw.validate()?;
    // The candidates, checked before the data is made and the noise scale estimated.
    let n = base.data.n_train;
    let batch_sizes: Vec<usize> = if plan.batch_sizes.is_empty() {
        std::iter::successors(Some(8usize), |b| Some(b * 2))
            .take_while(|&b| b <= (n / 8).max(8))
            .collect()
    } else {
        plan.batch_sizes.clone()
    };
    if let Some(&b) = batch_sizes.iter().find(|&&b| b == 0 || b > n) {
        return Err(Error::config(
            "--batch-sizes",
            format!("{b} is not in 1..={n} (the training rows)"),
        ));
    }
    let threads = if plan.threads.is_empty() {
        vec![base.train.threads.get()]
    } else {
        plan.threads.clone()
    };
    if threads.contains(&0) {
        return Err(Error::config(
            "--threads",
            "thread counts must be at least 1",
        ));
    }
    // Before loading the data and training: the estimate compares shards within a batch.
    if base.train.batch_size.get() < 2 {
        return Err(Error::config(
            "train.batch_size",
            format!(
                "B = {} is too small to estimate the noise scale (it needs at least 2 rows \
                 per batch)",
                base.train.batch_size
            ),
        ));
    }
    progress(&base.data.load_note());
    let (train, valid) = data::load(&base.data, base.seed);
    let b0 = base.train.batch_size.get();
    let base_lr = f64::from(base.train.schedule.base_lr);

    // Statistics: train the config itself, estimating the noise scale as the loss falls.
    progress(&format!("estimating the gradient noise scale at B = {b0}"));
    // The estimate compares full shards' gradients (b rows) with the batch's (B): its
    // divisor 1/b - 1/B is what conditions it, so b must be small against B whatever the
    // config's shards are (these rows only measure). With b = B/2 the quickstart's B_noise
    // swung 10,700 -> 6,000 between two epochs, and with b = 56 of B = 64 it came out a
    // quarter of the equal-shards figure or not at all. So shards of B/8 rows (rounded
    // down: eight full ones or more), or the default's when smaller.
    let mut stat_raw = raw.clone();
    let eighth = NonZeroUsize::new(b0 / 8).unwrap_or(NonZeroUsize::MIN);
    stat_raw.train.shard_rows = Some(
        eighth
            .min(crate::shard::auto_shard_rows(base.train.batch_size))
            .get(),
    );
    let stat_cfg = stat_raw.validate()?;
    let mut trainer = trainer_for(&stat_cfg)?;
    trainer.track_noise_scale(NOISE_PERIOD, NOISE_DECAY);
    let mut noise_history = Vec::new();
    trainer.fit(&train, None, |r: &EpochReport| {
        noise_history.push((r.epoch, r.train.mean_loss(), r.noise_scale));
    })?;
    let (b_noise_epoch, b_noise) = noise_history
        .iter()
        .rev()
        .find_map(|&(epoch, _, b_noise)| Some((epoch, b_noise?)))
        .ok_or_else(|| {
            Error::config(
                "train.epochs",
                format!(
                    "the noise scale could not be estimated in {} epoch(s) at B = {b0} \
                     (the smoothed |G|^2 or tr(Sigma) stayed at or below zero): train \
                     more epochs, or from a larger B",
                    noise_history.len()
                ),
            )
        })?;

    // Its cost: the noise run's step (the config's, in the noise run's shards) with and
    // without the estimator.
    let stat_rows = Some(stat_cfg.train.shard_rows.get());
    let t0 = base.train.threads.get();
    // Best of three alternating runs each: the machine's noise is larger than the cost.
    let measure = |noise| {
        throughput(
            &base,
            b0,
            t0,
            stat_rows,
            &train,
            plan.measure_seconds,
            noise,
        )
    };
    let (mut plain, mut tracked) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        plain = plain.max(measure(false)?);
        tracked = tracked.max(measure(true)?);
    }
    let estimator_overhead = (plain / tracked - 1.0).max(0.0);

    // Hardware: steady-state throughput per candidate.
    let mut rows = Vec::new();
    for &b in &batch_sizes {
        for &t in &threads {
            progress(&format!("throughput at B = {b}, {t} thread(s)"));
            let examples_per_sec =
                throughput(&base, b, t, None, &train, plan.measure_seconds, false)?;
            rows.push(TuneRow {
                batch_size: b,
                threads: t,
                examples_per_sec,
                steps_per_sec: examples_per_sec / b as f64,
                predicted_time: (b as f64 + b_noise) / examples_per_sec,
                lr: base_lr * plan.lr_rule.scale(b0, b, b_noise),
                steps_to_target: None,
                examples_to_target: None,
                seconds_to_target: None,
                reached_target: None,
                final_train_loss: None,
                valid_loss: None,
                above_twice_noise_scale: b as f64 > 2.0 * b_noise,
            });
        }
    }
    let best_predicted = rows
        .iter()
        .map(|r| r.predicted_time)
        .fold(f64::INFINITY, f64::min);
    for r in &mut rows {
        r.predicted_time /= best_predicted;
    }

    // Optionally, the time to a target loss, measured.
    let mut tradeoff = None;
    if plan.target_loss.is_some() || plan.budget_examples.is_some() {
        for r in rows.iter_mut() {
            progress(&format!(
                "training to target at B = {}, {} thread(s)",
                r.batch_size, r.threads
            ));
            let outcome = to_target(raw, r, plan, base.train.sampling, &train, valid.as_deref())?;
            r.steps_to_target = Some(outcome.steps);
            r.examples_to_target = Some(outcome.examples);
            r.seconds_to_target = Some(outcome.seconds);
            r.reached_target = plan.target_loss.map(|_| outcome.reached);
            r.final_train_loss = Some(outcome.train_loss);
            r.valid_loss = outcome.valid_loss;
        }
        tradeoff = fit_tradeoff(&rows);
    }

    // The recommendation: measured time to target where every candidate reached it, else
    // the prediction.
    let measured =
        plan.target_loss.is_some() && rows.iter().all(|r| r.reached_target == Some(true));
    let key = |r: &TuneRow| {
        if measured {
            r.seconds_to_target.unwrap_or(f64::INFINITY)
        } else {
            r.predicted_time
        }
    };
    let best = rows
        .iter()
        .min_by(|a, b| key(a).total_cmp(&key(b)))
        .expect("at least one candidate");
    let reason = if measured {
        format!(
            "B = {} on {} thread(s) reached loss {} fastest ({} s); the noise scale is {:.0}",
            best.batch_size,
            best.threads,
            plan.target_loss.unwrap_or_default(),
            seconds(best.seconds_to_target.unwrap_or_default()),
            b_noise
        )
    } else {
        format!(
            "B = {} on {} thread(s) minimises (B + B_noise) / throughput with B_noise = {:.0} and {:.0} examples/s",
            best.batch_size, best.threads, b_noise, best.examples_per_sec
        )
    };
    let missed = rows
        .iter()
        .filter(|r| r.reached_target == Some(false))
        .count();
    let missed_target = match plan.target_loss {
        Some(target) if missed > 0 => Some(format!(
            "{missed} of {} candidates did not reach loss {target} within {}, so the \
             prediction decides",
            rows.len(),
            match plan.budget_examples {
                Some(e) => format!("the budget of {e} examples"),
                None => format!("{TARGET_EPOCHS} epochs"),
            }
        )),
        _ => None,
    };
    let suggested_lr = best.lr;
    Ok(TuneReport {
        recommended_batch_size: best.batch_size,
        recommended_threads: best.threads,
        reason,
        missed_target,
        suggested_lr,
        lr_rule: plan.lr_rule,
        suggest_warmup: suggested_lr > 2.0 * base_lr,
        rows,
        noise_history,
        b_noise,
        b_noise_epoch,
        noise_shard_rows: stat_cfg.train.shard_rows.get().min(b0),
        base_batch_size: b0,
        base_lr,
        estimator_overhead,
        tradeoff,
    })
}

/// Steps between noise-scale measurements, and the weight of each in the moving averages:
/// about thirty measurements (260 steps) of smoothing, as single steps' estimates are noisy,
/// and the norms cost about a reduction each time they are taken.
const NOISE_PERIOD: u64 = 8;
const NOISE_DECAY: f64 = 0.03;

fn trainer_for(cfg: &Config) -> Result<Trainer<Mlp>> {
    Trainer::new(
        Mlp::new(cfg.model.clone()),
        cfg.data.d,
        &cfg.train,
        cfg.seed,
    )
}

/// Examples/s of steady training at batch size `b` on `threads` threads (in shards of
/// `shard_rows`, or the default for `b`), tracking the noise scale or not: a few warm-up
/// steps, then about `seconds` of uniformly sampled steps.
fn throughput(
    base: &Config,
    b: usize,
    threads: usize,
    shard_rows: Option<usize>,
    train: &Dataset,
    seconds: f64,
    noise: bool,
) -> Result<f64> {
    let mut cfg = base.clone();
    cfg.train.batch_size = std::num::NonZeroUsize::new(b).expect("checked >= 1");
    cfg.train.threads = std::num::NonZeroUsize::new(threads).expect("checked >= 1");
    cfg.train.shard_rows = match shard_rows.and_then(std::num::NonZeroUsize::new) {
        Some(rows) => rows,
        None => crate::shard::auto_shard_rows(cfg.train.batch_size),
    };
    cfg.train.sampling = crate::sampler::Sampling::Uniform;
    let build = |cfg: &Config| -> Result<Trainer<Mlp>> {
        let mut trainer = trainer_for(cfg)?;
        if noise {
            trainer.track_noise_scale(NOISE_PERIOD, NOISE_DECAY);
        }
        Ok(trainer)
    };
    // A probe sizes the run: about `seconds` of steps, whatever one step costs.
    let mut trainer = build(&cfg)?;
    let idx: Vec<usize> = (0..b)
        .map(|i| i * (train.n() / b).max(1) % train.n())
        .collect();
    let start = Instant::now();
    let mut probes = 0u32;
    while probes < 3 || (start.elapsed().as_secs_f64() < 0.05 && probes < 1000) {
        trainer.step(train, &idx, 0.0)?;
        probes += 1;
    }
    let per_step = start.elapsed().as_secs_f64() / f64::from(probes);
    let steps = ((seconds / per_step) as usize).clamp(5, 10_000_000);
    cfg.train.steps_per_epoch = std::num::NonZeroUsize::new(steps).expect(">= 5");
    cfg.train.epochs = std::num::NonZeroUsize::MIN;
    let mut trainer = build(&cfg)?;
    trainer.step(train, &idx, 0.0)?;
    let report = trainer.fit(train, None, |_| {})?;
    Ok(report.examples as f64 / report.epochs[0].seconds.max(1e-12))
}

struct Outcome {
    steps: u64,
    /// The rows of its steps (an epoch's last batch may be short).
    examples: u64,
    seconds: f64,
    reached: bool,
    train_loss: f64,
    valid_loss: Option<f64>,
}

/// Examples the target watch's moving average spans (for batches up to a third of it).
const SMOOTH_EXAMPLES: f64 = 2048.0;

/// Stops when a moving average of batch losses reaches the target or the budget of
/// examples is spent, looking at every step.
struct TargetWatch {
    target: Option<f64>,
    budget_examples: Option<u64>,
    examples: u64,
    smoothed: Option<f64>,
    reached: bool,
}

impl Observer for TargetWatch {
    fn epoch(&mut self, _report: &EpochReport) {}

    fn batch(&mut self, rows: usize, mean_loss: f64) {
        self.examples += rows as u64;
        // A moving average over about `SMOOTH_EXAMPLES` examples (at least three batches):
        // one over a fixed count of steps would let small batches' noisier losses cross
        // the target early.
        let weight = (rows as f64 / SMOOTH_EXAMPLES).min(0.3);
        let s = self
            .smoothed
            .map_or(mean_loss, |s| (1.0 - weight) * s + weight * mean_loss);
        self.smoothed = Some(s);
        if self.target.is_some_and(|t| s <= t) {
            self.reached = true;
        }
    }

    fn after_step(&mut self, _state: &TrainState<'_>) -> bool {
        self.reached || self.budget_examples.is_some_and(|b| self.examples >= b)
    }
}

/// `sampling`: the config's (with `drop_last`), which sets the steps an epoch has.
fn to_target(
    raw: &RawConfig,
    row: &TuneRow,
    plan: &TunePlan,
    sampling: crate::sampler::Sampling,
    train: &Dataset,
    valid: Option<&Dataset>,
) -> Result<Outcome> {
    let mut raw = raw.clone();
    raw.train.batch_size = Some(row.batch_size);
    raw.train.threads = Some(row.threads);
    raw.train.lr = Some(row.lr);
    raw.train.lr_scaling = None;
    raw.train.reference_batch_size = None;
    raw.train.shard_rows = None;
    if plan.target_loss.is_some() || plan.budget_examples.is_some() {
        // Enough epochs to spend the budget (or a generous cap when only a target is given).
        // An epoch's examples: its steps' rows, the last batch short unless dropped.
        use crate::sampler::{Sampling, default_steps_per_epoch};
        let b = NonZeroUsize::new(row.batch_size).unwrap_or(NonZeroUsize::MIN);
        let steps = match (raw.train.steps_per_epoch, sampling) {
            (Some(steps), Sampling::Uniform) => steps.max(1),
            _ => default_steps_per_epoch(train.n(), b, sampling).get(),
        };
        // Every uniform draw is a whole batch; a shuffled epoch is at most the rows.
        let epoch_examples = match sampling {
            Sampling::Uniform => steps * b.get(),
            Sampling::Shuffle { .. } => (steps * b.get()).min(train.n()),
        } as u64;
        let epochs = plan
            .budget_examples
            .map_or(TARGET_EPOCHS, |e| e.div_ceil(epoch_examples.max(1)).max(1));
        raw.train.epochs = Some(epochs as usize);
    }
    let cfg = raw.validate()?;
    let mut trainer = trainer_for(&cfg)?;
    let mut watch = TargetWatch {
        target: plan.target_loss,
        budget_examples: plan.budget_examples,
        examples: 0,
        smoothed: None,
        reached: false,
    };
    let start = Instant::now();
    let report = trainer.fit_observed(train, None, &mut watch)?;
    let seconds = start.elapsed().as_secs_f64();
    let valid_loss = match valid {
        Some(v) => Some(trainer.evaluate(v)?.mean_loss()),
        None => None,
    };
    Ok(Outcome {
        steps: report.steps,
        examples: report.examples,
        seconds,
        reached: watch.reached,
        train_loss: watch.smoothed.unwrap_or(f64::NAN),
        valid_loss,
    })
}

/// Epochs a candidate trains toward a target loss when no budget caps it.
const TARGET_EPOCHS: u64 = 200;

/// Least squares of S = S_min + (S_min B_crit) / B, in relative error (each point weighted
/// by 1 / S^2), over the candidates that reached the target: returns (S_min, E_min =
/// S_min B_crit), when there are two or more and the fit is physical (both positive). In
/// absolute error the small batches' thousands of steps decide the fit alone: on a real run
/// (B = 16 ... 2048) it put S_min at 115 steps while B = 2048 reached the target in 77, and
/// predicted 1.4-1.9x the steps measured at B >= 512; in relative error every point is
/// within 13% of the curve and S_min is 43.
pub fn fit_tradeoff(rows: &[TuneRow]) -> Option<(f64, f64)> {
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.reached_target == Some(true))
        .filter_map(|r| Some((1.0 / r.batch_size as f64, r.steps_to_target? as f64)))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let weight = |s: f64| 1.0 / (s * s).max(1.0);
    let total: f64 = points.iter().map(|&(_, s)| weight(s)).sum();
    let mean = |f: &dyn Fn(f64, f64) -> f64| {
        points
            .iter()
            .map(|&(x, s)| weight(s) * f(x, s))
            .sum::<f64>()
            / total
    };
    let (mx, my) = (mean(&|x, _| x), mean(&|_, s| s));
    let sxx = mean(&|x, _| (x - mx).powi(2));
    if sxx == 0.0 {
        return None;
    }
    let slope = mean(&|x, s| (x - mx) * (s - my)) / sxx;
    let s_min = my - slope * mx;
    (s_min > 0.0 && slope > 0.0).then_some((s_min, slope))
}

pub const CSV_HEADER: &str = "batch_size,threads,examples_per_sec,steps_per_sec,b_noise,predicted_time,lr,\
steps_to_target,examples_to_target,seconds_to_target,reached_target,final_train_loss,valid_loss,above_twice_noise_scale";

pub fn to_csv(report: &TuneReport) -> String {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in &report.rows {
        let _ = writeln!(
            out,
            "{},{},{:.1},{:.2},{:.3},{:.6},{},{},{},{},{},{},{},{}",
            r.batch_size,
            r.threads,
            r.examples_per_sec,
            r.steps_per_sec,
            report.b_noise,
            r.predicted_time,
            r.lr,
            r.steps_to_target.map(|s| s.to_string()).unwrap_or_default(),
            r.examples_to_target
                .map(|s| s.to_string())
                .unwrap_or_default(),
            opt(r.seconds_to_target),
            r.reached_target.map(|b| b.to_string()).unwrap_or_default(),
            opt(r.final_train_loss),
            opt(r.valid_loss),
            r.above_twice_noise_scale
        );
    }
    out
}

/// Throughput and (predicted or measured) time to target against B on log axes, with the
/// noise scale marked.
pub fn to_svg(report: &TuneReport) -> String {
    // The legend sits between the title and the plot, which starts at `top`.
    let (width, height, margin, top) = (680.0, 460.0, 64.0, 104.0);
    let rows: Vec<&TuneRow> = {
        // One point per batch size: its best thread count.
        let mut best: Vec<&TuneRow> = Vec::new();
        for r in &report.rows {
            match best.iter_mut().find(|b| b.batch_size == r.batch_size) {
                Some(b) if r.examples_per_sec > b.examples_per_sec => *b = r,
                Some(_) => {}
                None => best.push(r),
            }
        }
        best
    };
    let (bmin, bmax) = rows.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
        (lo.min(r.batch_size as f64), hi.max(r.batch_size as f64))
    });
    // One batch size sits in the middle of its axis.
    let (lo, hi) = if bmin < bmax {
        (bmin.log2() - 0.5, bmax.log2().max(bmin.log2() + 1.0) + 0.5)
    } else {
        (bmin.log2() - 1.0, bmin.log2() + 1.0)
    };
    let x = |b: f64| margin + (b.log2() - lo) / (hi - lo) * (width - 2.0 * margin);
    // A series on a log scale of its own: each value's y, and the labelled ticks of its
    // axis (powers of ten inside its range, or its smallest and largest values).
    let series = |values: Vec<f64>| -> (Vec<f64>, Vec<(f64, f64)>) {
        let (vmin, vmax) = values
            .iter()
            .filter(|v| v.is_finite() && **v > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
        // One value (one candidate) sits in the middle of its axis.
        let (l, h) = if vmin < vmax {
            (
                vmin.log10() - 0.1,
                vmax.log10().max(vmin.log10() + 0.2) + 0.1,
            )
        } else {
            (vmin.log10() - 0.2, vmin.log10() + 0.2)
        };
        let y = |v: f64| height - margin - (v.log10() - l) / (h - l) * (height - margin - top);
        let mut ticks: Vec<f64> = (l.ceil() as i32..=h.floor() as i32)
            .map(|k| 10f64.powi(k))
            .collect();
        if ticks.len() < 2 && vmax > 0.0 {
            ticks = if vmin < vmax {
                vec![vmin, vmax]
            } else {
                vec![vmin]
            };
        }
        let ticks = ticks.into_iter().map(|v| (v, y(v))).collect();
        (values.iter().map(|&v| y(v)).collect(), ticks)
    };
    let (throughput, throughput_ticks) = series(rows.iter().map(|r| r.examples_per_sec).collect());
    let measured = rows.iter().all(|r| r.seconds_to_target.is_some());
    let time_values = rows
        .iter()
        .map(|r| {
            if measured {
                r.seconds_to_target.unwrap_or(f64::NAN)
            } else {
                r.predicted_time
            }
        })
        .collect();
    let (time, time_ticks) = series(time_values);
    let (bottom, right) = (height - margin, width - margin);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">Batch size: throughput and time to a loss (log scales)</text>\n\
         <line x1=\"{margin}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"black\"/>\n",
        width / 2.0,
    );
    // Throughput's axis on the left, time's on the right, each in its series' colour.
    for (axis_x, ticks, color, anchor, dx) in [
        (margin, &throughput_ticks, "#1f77b4", "end", -6.0),
        (right, &time_ticks, "#d62728", "start", 6.0),
    ] {
        let _ = writeln!(
            svg,
            "<line x1=\"{axis_x}\" y1=\"{top}\" x2=\"{axis_x}\" y2=\"{bottom}\" stroke=\"{color}\"/>"
        );
        for &(v, y) in ticks {
            let _ = writeln!(
                svg,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{axis_x}\" y2=\"{y:.1}\" stroke=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{color}\">{}</text>",
                axis_x + dx / 2.0,
                axis_x + dx,
                y + 4.0,
                short_number(v)
            );
        }
    }
    for r in &rows {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(r.batch_size as f64),
            bottom + 18.0,
            r.batch_size
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">batch size B</text>",
        width / 2.0,
        height - 14.0
    );
    // Legend lines under the title, above the plot.
    let legend_y = |i: f64| 44.0 + 14.0 * i;
    let line = |ys: &[f64], color: &str, label: &str, row: f64, svg: &mut String| {
        let points: Vec<String> = rows
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite())
            .map(|(r, y)| format!("{:.1},{:.1}", x(r.batch_size as f64), y))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').expect("x,y");
            let _ = writeln!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{margin}\" y=\"{:.1}\" fill=\"{color}\">{label}</text>",
            legend_y(row)
        );
    };
    // Several thread counts: each batch size is drawn at its fastest.
    let several = report
        .rows
        .iter()
        .any(|r| r.threads != report.rows[0].threads);
    let throughput_label = if several {
        "examples/s (left axis; each B at its fastest thread count, every count in tune.csv)"
    } else {
        "examples/s (left axis)"
    };
    line(&throughput, "#1f77b4", throughput_label, 0.0, &mut svg);
    let time_label = if measured {
        "seconds to target (right axis)"
    } else {
        "predicted time to a loss, (B + B_noise) / T(B) (right axis, 1 = the fastest)"
    };
    line(&time, "#d62728", time_label, 1.0, &mut svg);
    let on_axis = report.b_noise > 0.0 && report.b_noise.log2() > lo && report.b_noise.log2() < hi;
    if on_axis {
        let bx = x(report.b_noise);
        let _ = writeln!(
            svg,
            "<line x1=\"{bx:.1}\" y1=\"{top}\" x2=\"{bx:.1}\" y2=\"{bottom:.1}\" stroke=\"gray\" stroke-dasharray=\"6 4\"/>",
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{margin}\" y=\"{:.1}\" fill=\"gray\">B_noise = {:.0}{}</text>",
        legend_y(2.0),
        report.b_noise,
        if on_axis {
            " (dashed)"
        } else {
            " (beyond the axis)"
        }
    );
    let _ = writeln!(
        svg,
        "<text x=\"{margin}\" y=\"{:.1}\" fill=\"black\">recommended: B = {}</text>",
        legend_y(3.0),
        report.recommended_batch_size
    );
    svg.push_str("</svg>\n");
    svg
}

/// Seconds as the tables print them: two decimals, or two significant digits below 0.1 s
/// (a small run's candidates all reached their target in "0.00 s").
pub fn seconds(v: f64) -> String {
    if v >= 0.1 || v <= 0.0 || !v.is_finite() {
        format!("{v:.2}")
    } else {
        let decimals = (1.0 - v.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

/// A learning rate as the tables print it: four significant digits, in exponent form below
/// 1e-4 or from 1e6 (fixed decimals printed a rate of 1e-7 as 0.0000).
pub fn rate(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        format!("{v}")
    } else if (1e-4..1e6).contains(&v.abs()) {
        let decimals = (3 - v.abs().log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.3e}")
    }
}

/// A tick label: 3 significant digits at most, with K and M for thousands and millions.
fn short_number(v: f64) -> String {
    let (scaled, suffix) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "K")
    } else {
        (v, "")
    };
    let digits = if scaled >= 100.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else if scaled >= 0.01 {
        2
    } else {
        return format!("{v:.1e}");
    };
    let text = format!("{scaled:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{suffix}")
}

/// The files `write_outputs` writes into its directory (checked before the work).
pub const OUTPUT_FILES: [&str; 2] = ["tune.csv", "tune.svg"];

/// Writes `OUTPUT_FILES` into `dir` (created if missing), both or neither.
pub fn write_outputs(dir: &Path, report: &TuneReport) -> Result<()> {
    write_files_in(
        dir,
        &[
            (OUTPUT_FILES[0], to_csv(report).as_bytes()),
            (OUTPUT_FILES[1], to_svg(report).as_bytes()),
        ],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_keep_four_significant_digits() {
        let cases = [
            (0.1, "0.1000"),
            (0.05, "0.05000"),
            (1.5, "1.500"),
            (1234.5, "1234"),
            (1e-7, "1.000e-7"),
            (2.5e-5, "2.500e-5"),
            (0.0, "0"),
        ];
        for (v, text) in cases {
            assert_eq!(super::rate(v), text, "{v}");
        }
    }

    #[test]
    fn seconds_keep_two_significant_digits_when_small() {
        let cases = [
            (1.234, "1.23"),
            (0.3, "0.30"),
            (0.0123, "0.012"),
            (0.00456, "0.0046"),
            (0.0, "0.00"),
        ];
        for (v, text) in cases {
            assert_eq!(super::seconds(v), text, "{v}");
        }
    }

    #[test]
    fn tick_labels_are_short() {
        let cases = [
            (1_234_567.0, "1.23M"),
            (100_000.0, "100K"),
            (12_500.0, "12.5K"),
            (1000.0, "1K"),
            (0.5, "0.5"),
            (0.001, "1.0e-3"),
            (42.0, "42"),
        ];
        for (v, text) in cases {
            assert_eq!(super::short_number(v), text, "{v}");
        }
    }

    use super::*;

    fn row(batch_size: usize, steps: u64) -> TuneRow {
        TuneRow {
            batch_size,
            threads: 1,
            examples_per_sec: 1.0,
            steps_per_sec: 1.0,
            predicted_time: 1.0,
            lr: 0.1,
            steps_to_target: Some(steps),
            examples_to_target: Some(steps * batch_size as u64),
            seconds_to_target: Some(1.0),
            reached_target: Some(true),
            final_train_loss: None,
            valid_loss: None,
            above_twice_noise_scale: false,
        }
    }

    #[test]
    fn tradeoff_fit_recovers_s_min_and_e_min_from_exact_steps() {
        // S = S_min (1 + B_crit / B) with S_min = 100, B_crit = 50: E_min = 5000.
        let rows: Vec<TuneRow> = [10, 25, 50, 200]
            .iter()
            .map(|&b| row(b, (100.0 * (1.0 + 50.0 / b as f64)) as u64))
            .collect();
        let (s_min, e_min) = fit_tradeoff(&rows).unwrap();
        assert!((s_min - 100.0).abs() < 1.0, "{s_min}");
        assert!((e_min - 5000.0).abs() < 50.0, "{e_min}");
        assert_eq!(fit_tradeoff(&rows[..1]), None);
    }

    #[test]
    fn tradeoff_fit_weighs_every_batch_size_alike() {
        // S_min = 40, B_crit = 1600, every count 10% off the curve, alternately up and down.
        // Least squares in absolute error is led by B = 16's 4,444 steps and gives a
        // negative S_min here; in relative error the fit stays near the curve.
        let rows: Vec<TuneRow> = [16, 32, 64, 128, 256, 512, 1024, 2048]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let off = if i % 2 == 0 { 1.1 } else { 0.9 };
                row(b, (40.0 * (1.0 + 1600.0 / b as f64) * off).round() as u64)
            })
            .collect();
        let (s_min, e_min) = fit_tradeoff(&rows).unwrap();
        assert!((s_min / 40.0 - 1.0).abs() < 0.15, "{s_min}");
        assert!(
            (e_min / s_min / 1600.0 - 1.0).abs() < 0.15,
            "{}",
            e_min / s_min
        );
    }

    #[test]
    fn noise_rule_is_linear_below_the_noise_scale_and_flat_above() {
        // (B1/B0)(B0 + Bn)/(B1 + Bn): Bn -> infinity gives B1/B0; Bn = 0 gives 1.
        assert!((LrRule::NoiseScale.scale(64, 256, 1e12) - 4.0).abs() < 1e-6);
        assert!((LrRule::NoiseScale.scale(64, 256, 0.0) - 1.0).abs() < 1e-12);
        // By hand: B0 = 100, B1 = 300, Bn = 200: 3 * 300 / 500 = 1.8.
        assert!((LrRule::NoiseScale.scale(100, 300, 200.0) - 1.8).abs() < 1e-12);
        assert!((LrRule::Sqrt.scale(100, 400, 7.0) - 2.0).abs() < 1e-12);
        assert!((LrRule::Linear.scale(100, 400, 7.0) - 4.0).abs() < 1e-12);
    }
}
