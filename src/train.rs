//! The training loop: fit -> epoch -> step, and the one place where work runs in parallel.
//!
//! A step takes the batch's row indices and
//! 0. lets the model derive what every shard shares from the parameters (`Model::prepare`:
//!    the built-in MLP packs its weights for the matrix kernel);
//! 1. cuts them into shards (`shard.rs`); on the pool, each shard's model call reads its
//!    rows (in place, or gathered into the running thread's workspace) and writes their
//!    gradient sum into the shard's own gradient row, or a group of shards goes through
//!    the model at once and leaves their sums, added in the tree's order, in the first's
//!    row (`ShardQueue::in_groups`, `Model::loss_grad_group`);
//! 2. sums the shard rows with the fixed tree (`reduce.rs`), parallel over parameter chunks;
//! 3. takes exactly one optimizer step with the sum and the batch length.
//!
//! Shards are indexed by position in the batch, never by thread, and their stats are summed
//! serially in shard order, so the thread count changes the speed and nothing else.
//!
//! The pool is owned by the trainer and entered once per `fit`; every buffer the step touches
//! is sized in `new` (each thread's workspace by running the largest task in it once) or
//! grows the first time a step of its shape runs (the first step, and an epoch's short last
//! batch), so later steps allocate nothing, whichever thread runs which task (tested by
//! tests/alloc.rs over a second epoch, and with one thread held busy through the first
//! steps).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use ndarray::{Array1, Array2, ArrayViewMut2, ShapeBuilder, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;
use tracing::{debug_span, info, info_span, trace_span};

use crate::cluster::{Collective, Exchange, Reduction, SHARD_STATS, even_split};
use crate::config::TrainConfig;
use crate::data::{Dataset, mix, stream};
use crate::error::{Error, Result};
use crate::lines::{LINE, LineBuf, zeros_on_lines};
use crate::model::{Model, PREFETCH_ROWS, Stats, Usage, prefetch_row};
use crate::noise::NoiseScale;
use crate::optim::{Optimizer, OptimizerState};
use crate::reduce::{
    REDUCE_CHUNK, squared_norm, squared_norm_chunked, tree_reduce_above, tree_reduce_with_norm,
};
use crate::sampler::{Sampler, Sampling, default_steps_per_epoch};
use crate::shard::{MAX_GROUP, ShardQueue, group_size, n_shards, shard_range};

/// What one epoch did, handed to `fit`'s callback.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Steps taken since the start of the run.
    pub steps: u64,
    /// Sums over the epoch's batches, each computed with the parameters before its step.
    pub train: Stats,
    pub valid: Option<Stats>,
    /// Training time of the epoch, without evaluation.
    pub seconds: f64,
    pub is_classifier: bool,
    /// The gradient noise scale at the epoch's end, when tracked and measured during the
    /// epoch (an epoch shorter than the measuring period may have no measuring step: its
    /// value would repeat the last epoch's).
    pub noise_scale: Option<f64>,
    /// The run stopped before the epoch's last step (Ctrl-C, or an observer's stop): its
    /// figures cover the steps it took.
    pub cut_short: bool,
}

impl EpochReport {
    pub fn examples_per_sec(&self) -> f64 {
        self.train.rows as f64 / self.seconds.max(1e-12)
    }
}

/// The whole run, returned by `fit`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub epochs: Vec<EpochReport>,
    pub steps: u64,
    pub examples: u64,
    pub seconds: f64,
    /// The run ended before its last step because the observer asked it to (across ranks:
    /// any rank's observer).
    pub stopped: bool,
}

/// Where a running `fit` reports to.
pub trait Observer {
    /// An epoch ended.
    fn epoch(&mut self, report: &EpochReport);
    /// Part of an epoch is done (called about a hundred times per epoch).
    fn progress(&mut self, _progress: Progress) {}
    /// Asked after each `progress`: true ends the run there (the epoch so far is reported).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// After every step, its rows and mean loss (before `after_step`).
    fn batch(&mut self, _rows: usize, _mean_loss: f64) {}
    /// After every step, with the state a checkpoint needs; true ends the run there.
    fn after_step(&mut self, _state: &TrainState<'_>) -> bool {
        false
    }
}

/// Where the run is: the epoch (0-based) of the next step and the steps already taken in
/// it. With the seed, it determines the sampler's state, so it is all a resume needs
/// besides parameters and optimizer state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: usize,
    pub step_in_epoch: usize,
}

/// What a checkpoint holds, borrowed from the trainer between steps.
pub struct TrainState<'a> {
    pub params: &'a [f32],
    pub optimizer: &'a Optimizer,
    pub position: Position,
    /// Steps taken since the start of the run (the schedule's clock).
    pub steps: u64,
}

/// A borrowed observer observes too, so callers can read it after the run.
impl<O: Observer> Observer for &mut O {
    fn epoch(&mut self, report: &EpochReport) {
        (**self).epoch(report)
    }
    fn progress(&mut self, p: Progress) {
        (**self).progress(p)
    }
    fn should_stop(&mut self) -> bool {
        (**self).should_stop()
    }
    fn batch(&mut self, rows: usize, mean_loss: f64) {
        (**self).batch(rows, mean_loss)
    }
    fn after_step(&mut self, state: &TrainState<'_>) -> bool {
        (**self).after_step(state)
    }
}

/// An `Observer` that only wants epoch reports.
struct OnEpoch<F>(F);

impl<F: FnMut(&EpochReport)> Observer for OnEpoch<F> {
    fn epoch(&mut self, report: &EpochReport) {
        (self.0)(report)
    }
}

/// How far the current epoch has come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub step_in_epoch: usize,
    pub steps_per_epoch: usize,
    /// Mean training loss of the epoch's batches so far.
    pub mean_loss: f64,
    /// Mean loss of the latest batch.
    pub batch_loss: f64,
    /// Steps since the start of the run.
    pub steps: u64,
}

/// The squared norms of a batch's full shards, for the noise-scale estimate.
#[derive(Default)]
struct NoiseSample {
    count: usize,
    sum: f64,
}

impl NoiseSample {
    fn add(&mut self, full: bool, grad_sq: f64) {
        if full {
            self.count += 1;
            self.sum += grad_sq;
        }
    }
}

/// What one shard leaves for the step to sum after it.
#[derive(Default)]
struct ShardSlot {
    /// |shard gradient sum|^2, on steps that estimate the noise scale.
    grad_sq: f64,
    stats: Stats,
}

/// Owns a run's model, flat parameter, gradient and optimizer buffers, its thread pool
/// and every workspace, all made in `new` so that steps allocate nothing. `fit` and
/// `fit_observed` run epochs (entering the pool once); each batch goes to `step_on_pool`,
/// or to `step_one_shard` when it is one shard. `step` is the same step for callers that
/// drive the loop themselves (benches, tests); `evaluate` sums the loss over a dataset.
pub struct Trainer<M: Model> {
    model: M,
    params: LineBuf,
    optimizer: Optimizer,
    /// Shared so that `fit` can enter it while borrowing `self` mutably.
    pool: Arc<rayon::ThreadPool>,
    slots: Vec<ShardSlot>,
    /// One per thread of the pool (`shard::ShardQueue` says why), each for the most rows a
    /// task passes and sized by running that task once (`size_workspaces`): reused every
    /// step, so the hot path allocates nothing. (Evaluation, not on the hot path, runs its
    /// blocks a round at a time, block i of a round in workspace i, whichever thread.)
    workspaces: Vec<M::Workspace>,
    /// Derived from `params` by `Model::prepare` before each step and evaluation.
    shared: M::Shared,
    /// Row i (its first n_params values) is shard i's gradient sum; row 0 ends as the
    /// batch's. Rows are padded to whole cache lines and start on one (`zeros_on_lines`).
    grads: Array2<f32>,
    cfg: TrainConfig,
    /// Input width the model was built for.
    d: usize,
    seed: u64,
    steps_taken: u64,
    /// The gradient noise scale estimate, when tracked.
    noise: Option<NoiseTracker>,
    /// Per-chunk norms of the reduced gradient, reused by noise-scale steps.
    norm_partials: Vec<f64>,
    /// Where the next `fit` starts.
    position: Position,
    /// The other ranks, when training across processes.
    exchange: Option<Exchange>,
}

/// How and how often steps feed the noise-scale estimate.
struct NoiseTracker {
    estimate: NoiseScale,
    /// Measure every `period` steps: the norms cost about as much as the reduction.
    period: u64,
}

impl<M: Model> Trainer<M> {
    /// Builds the pool and every buffer the steps will use, and initialises the parameters
    /// from `seed`. `d` is the input width of the data to come.
    pub fn new(model: M, d: usize, cfg: &TrainConfig, seed: u64) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.get())
            .thread_name(worker_name)
            .build()
            .map_err(|e| {
                Error::config(
                    "train.threads",
                    format!("cannot start {} threads: {e}", cfg.threads),
                )
            })?;
        let n_params = model.layout().n_params();
        let max_shards = n_shards(cfg.batch_size.get(), cfg.shard_rows);
        // The buffers as long as the parameters: themselves, a gradient row per shard, the
        // optimizer's state and (for the MLP) a packed copy of the weights per thread.
        let copies = 1 + max_shards + cfg.optimizer.state_buffers() + cfg.threads.get();
        crate::memory::check(
            "model",
            &format!("{n_params} parameters with their gradient rows and optimizer state"),
            crate::memory::bytes(n_params, copies, 4),
        )?;
        let mut params = LineBuf::zeroed(n_params);
        model.init(
            &mut params,
            &mut StdRng::seed_from_u64(mix(seed, stream::INIT)),
        );
        // Evaluation keeps a block's stats in a slot; give it one per thread even when
        // batches need fewer.
        let n_slots = max_shards.max(cfg.threads.get());
        let rows = cfg.shard_rows.get().min(cfg.batch_size.get());
        // The most rows a task passes: a shard's, or the largest group's.
        let largest_group = (1..=max_shards)
            .map(|n| group_size(n, rows, cfg.threads.get()))
            .max()
            .unwrap_or(1);
        let task_rows = rows.saturating_mul(largest_group).min(cfg.batch_size.get());
        let slots = (0..n_slots).map(|_| ShardSlot::default()).collect();
        let workspaces = (0..cfg.threads.get())
            .map(|_| model.workspace(task_rows))
            .collect();
        let mut trainer = Trainer {
            optimizer: Optimizer::new(cfg.optimizer, n_params),
            grads: zeros_on_lines(max_shards, n_params.next_multiple_of(LINE)),
            shared: model.shared(),
            model,
            params,
            pool: Arc::new(pool),
            slots,
            workspaces,
            cfg: cfg.clone(),
            d,
            seed,
            steps_taken: 0,
            noise: None,
            norm_partials: Vec::with_capacity(n_params.div_ceil(REDUCE_CHUNK)),
            position: Position::default(),
            exchange: None,
        };
        trainer.size_workspaces(rows, task_rows);
        Ok(trainer)
    }

    /// Runs the largest task a step hands out (`rows` rows in shards of `shard_rows`) once in
    /// every thread's workspace, on zeros, so that what a workspace grows on first use (the
    /// matrix kernel's packing space) has its full size before training: tasks land on
    /// threads at run time, and a thread might first get the largest task many steps in,
    /// and allocate there. Its spans go nowhere: to `Dispatch::none`, which, unlike a
    /// subscriber set for the scope, is not registered with the spans' callsites (with a
    /// `NoSubscriber` there, the global subscriber built every trace span of the run after
    /// it, although nothing listened: a W3 step (d = 10, B = 1) 20 times slower). A callsite
    /// first reached inside the scope caches the scope's "never", so the cache is rebuilt
    /// after it, or `--profile` would miss the model's spans (tests/spans.rs counts the
    /// spans built when nothing listens, tests/it/profile.rs looks for every span).
    fn size_workspaces(&mut self, shard_rows: usize, rows: usize) {
        let group = rows.div_ceil(shard_rows);
        let data = Dataset::new(Array2::zeros((rows, self.d)), Array1::zeros(rows), None)
            .expect("zeros are valid regression data");
        let idx: Vec<usize> = (0..rows).collect();
        let usage = Usage {
            parallel: false,
            rows,
            readers: 1,
        };
        tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
            self.model.prepare(&self.params, &mut self.shared, usage);
            let row_stride = self.grads.ncols();
            let n_params = self.params.len();
            let rows_len = (group - 1) * row_stride + n_params;
            let grads = self.grads.as_slice_mut().expect("grads are contiguous");
            for ws in &mut self.workspaces {
                run_task(
                    &self.model,
                    &self.params,
                    &self.shared,
                    &data,
                    &idx,
                    shard_rows,
                    &mut self.slots[..group],
                    ws,
                    &mut grads[..rows_len],
                    (row_stride, n_params),
                );
            }
        });
        tracing_core::callsite::rebuild_interest_cache();
    }

    /// Refuses to go on across ranks that read different inputs: `fingerprint` hashes what
    /// this rank read (config, data, files it starts from). A stale copy on one machine
    /// would otherwise mix two data sets into one run's parameters, or leave a rank waiting
    /// forever for steps the others never take. Every rank gets the same answer, so all
    /// stop together. Nothing to check in one process.
    pub fn check_same_inputs(&self, fingerprint: u64) -> Result<()> {
        match self
            .exchange
            .as_ref()
            .and_then(|x| x.first_differing(fingerprint))
        {
            None => Ok(()),
            Some(rank) => Err(Error::RanksDiffer(format!(
                "rank {rank} read other inputs than rank 0 (its config, data, or --resume or \
                 --init file differ, or it runs another build): every rank must read the same, \
                 or the run would mix them"
            ))),
        }
    }

    /// Trains as one rank of `comm` from now on: each step computes this rank's run of the
    /// batch's shards and combines it with the other ranks' (see `cluster`), and evaluation
    /// splits its blocks among the ranks; so every rank must call `fit`, `step` and
    /// `evaluate` alike. With `Reduction::Exact` the parameters are the same bits as a
    /// single process's.
    pub fn join(&mut self, comm: Box<dyn Collective>, reduction: Reduction) -> Result<()> {
        if comm.size() <= 1 {
            self.exchange = None;
            return Ok(());
        }
        let max_shards = self.grads.nrows();
        self.exchange = Some(Exchange::new(
            comm,
            reduction,
            max_shards,
            self.params.len(),
        )?);
        Ok(())
    }

    /// This process's rank and the number of ranks: (0, 1) unless `join`ed.
    pub fn rank(&self) -> (usize, usize) {
        self.exchange
            .as_ref()
            .map_or((0, 1), |x| (x.rank(), x.size()))
    }

    /// Estimates the gradient noise scale every `period` steps from then on, smoothed with
    /// moving-average weight `decay` (see `noise.rs`). Needs batches of two shards or more,
    /// one of them full.
    pub fn track_noise_scale(&mut self, period: u64, decay: f64) {
        self.noise = Some(NoiseTracker {
            estimate: NoiseScale::new(decay),
            period: period.max(1),
        });
    }

    /// The current noise-scale estimate, if tracked and estimable.
    pub fn noise_scale(&self) -> Option<&NoiseScale> {
        self.noise.as_ref().map(|n| &n.estimate)
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Continues a run from a checkpoint: parameters, optimizer state, and where the next
    /// `fit` starts. Training then gives the same bits as the run that was interrupted.
    pub fn restore(
        &mut self,
        params: &[f32],
        optimizer: OptimizerState,
        position: Position,
        steps: u64,
    ) -> Result<()> {
        // Every check before any copy: a refused checkpoint leaves the trainer as it was.
        self.check_params_len(params)?;
        self.optimizer.restore(optimizer)?;
        self.params.copy_from_slice(params);
        self.position = position;
        self.steps_taken = steps;
        Ok(())
    }

    /// Where the next `fit` starts.
    pub fn position(&self) -> Position {
        self.position
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Replaces the initial parameters (e.g. to start from given values).
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        self.check_params_len(params)?;
        self.params.copy_from_slice(params);
        Ok(())
    }

    fn check_params_len(&self, params: &[f32]) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(Error::Shape {
                name: "parameters".into(),
                expected: vec![self.params.len()],
                got: vec![params.len()],
            });
        }
        Ok(())
    }

    /// Runs `f` on the trainer's pool (e.g. to generate data with the same threads). A
    /// `fit` waits for every thread of the pool, so work `f` leaves running there (a
    /// `rayon::spawn`) holds up a `fit` started before it ends.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Trains for the configured epochs. `on_epoch` sees each epoch's report as it ends.
    pub fn fit(
        &mut self,
        train: &Dataset,
        valid: Option<&Dataset>,
        on_epoch: impl FnMut(&EpochReport) + Send,
    ) -> Result<RunReport> {
        self.fit_observed(train, valid, OnEpoch(on_epoch))
    }

    /// `fit`, reporting epochs and progress within epochs to `observer`.
    pub fn fit_observed(
        &mut self,
        train: &Dataset,
        valid: Option<&Dataset>,
        mut observer: impl Observer + Send,
    ) -> Result<RunReport> {
        self.check_data(train)?;
        if let Some(valid) = valid {
            self.check_data(valid)?;
        }
        let run_span = info_span!(
            "run",
            n = train.n(),
            d = train.d(),
            batch_size = self.cfg.batch_size.get(),
            threads = self.cfg.threads.get(),
            shard_rows = self.cfg.shard_rows.get()
        );
        let _run = run_span.enter();
        let pool = Arc::clone(&self.pool);
        let threads = self.cfg.threads.get();
        pool.install(|| {
            keep_workers_awake(threads, || self.fit_on_pool(train, valid, &mut observer))
        })
    }

    fn fit_on_pool(
        &mut self,
        train: &Dataset,
        valid: Option<&Dataset>,
        observer: &mut (impl Observer + Send),
    ) -> Result<RunReport> {
        let cfg = self.cfg.clone();
        if cfg.batch_size.get() > train.n() {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "{} is larger than the training set ({} rows)",
                    cfg.batch_size,
                    train.n()
                ),
            ));
        }
        // A shuffled epoch is one pass over the rows given here, whatever the config assumed.
        let epoch_steps = match cfg.sampling {
            Sampling::Shuffle { .. } => {
                default_steps_per_epoch(train.n(), cfg.batch_size, cfg.sampling)
            }
            Sampling::Uniform => cfg.steps_per_epoch,
        };
        let mut sampler = Sampler::new(
            train.n(),
            cfg.batch_size,
            cfg.sampling,
            epoch_steps,
            mix(self.seed, stream::SAMPLER),
        );
        let run_start = Instant::now();
        let steps_per_epoch = epoch_steps.get();
        // About a hundred progress calls per epoch, whatever its length.
        let progress_stride = (steps_per_epoch / 100).max(1);
        // Reserved (up to a bound) so that recording an epoch's report allocates nothing.
        let mut reports = Vec::with_capacity(cfg.epochs.get().min(1024));
        let mut last_finite = None;
        let mut stopped = false;
        // A checkpoint taken at an epoch's end resumes at the next epoch's start.
        let resume = if self.position.step_in_epoch >= steps_per_epoch {
            Position {
                epoch: self.position.epoch + 1,
                step_in_epoch: 0,
            }
        } else {
            self.position
        };
        for epoch in resume.epoch..cfg.epochs.get() {
            let _epoch = info_span!("epoch", epoch = epoch + 1).entered();
            sampler.start_epoch(epoch);
            let noise_samples = self.noise.as_ref().map(|n| n.estimate.samples());
            let mut step_in_epoch = 0usize;
            if epoch == resume.epoch {
                // Resuming mid-epoch: replay the sampler to the next batch. Its state is a
                // function of (seed, epoch, batches drawn), so this gives the same batches.
                while step_in_epoch < resume.step_in_epoch && sampler.next_batch().is_some() {
                    step_in_epoch += 1;
                }
            }
            let start = Instant::now();
            let mut stats = Stats::default();
            loop {
                let sample = trace_span!("sample").entered();
                let Some((idx, upcoming)) = sampler.next_batch_and_upcoming() else {
                    break;
                };
                // Batches shorter than the model's own prefetch distance start fetching the
                // next batch's rows now, and one row further, since such a step is shorter
                // than a memory access. Larger batches leave it to the model, which
                // prefetches its rows as it reads them: prefetching the next batch's first
                // rows here cost the other threads a wait (W2, B = 256, 2 threads: 3.4-3.7 M
                // examples/s with it, 3.8-3.9 M without, five alternating runs).
                let batch_len = idx.len();
                if batch_len < PREFETCH_ROWS {
                    let far = upcoming.get(PREFETCH_ROWS - 1);
                    for &row in upcoming.iter().take(batch_len).chain(far) {
                        prefetch_row(&train.features()[row * train.d()..(row + 1) * train.d()]);
                    }
                }
                drop(sample);
                let lr = cfg.schedule.lr(self.steps_taken);
                let batch_stats = self.step_on_pool(train, idx, lr);
                if !batch_stats.loss_sum.is_finite() {
                    return Err(Error::NonFinite {
                        value: batch_stats.loss_sum,
                        epoch: epoch + 1,
                        step: self.steps_taken + 1,
                        lr,
                        last_finite,
                    });
                }
                let mean_loss = batch_stats.mean_loss();
                last_finite = Some(mean_loss);
                stats.add(&batch_stats);
                observer.batch(batch_len, mean_loss);
                step_in_epoch += 1;
                self.position = Position {
                    epoch,
                    step_in_epoch,
                };
                let state = TrainState {
                    params: &self.params,
                    optimizer: &self.optimizer,
                    position: self.position,
                    steps: self.steps_taken,
                };
                if self.agree(observer.after_step(&state)) {
                    stopped = true;
                    break;
                }
                if step_in_epoch.is_multiple_of(progress_stride) {
                    observer.progress(Progress {
                        epoch: epoch + 1,
                        epochs: cfg.epochs.get(),
                        step_in_epoch,
                        steps_per_epoch,
                        mean_loss: stats.mean_loss(),
                        batch_loss: last_finite.unwrap_or(f64::NAN),
                        steps: self.steps_taken,
                    });
                    if self.agree(observer.should_stop()) {
                        stopped = true;
                        break;
                    }
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            // A step whose loss was finite may still overflow in its update; the next
            // step's loss would show it, but the epoch's end (checkpoint, report, the
            // run's saved parameters) comes first. Once an epoch, so it costs nothing.
            let steps = self.steps_taken;
            let overflow = |what| Error::Overflow {
                what,
                epoch: epoch + 1,
                step: steps,
            };
            if !self.params.iter().all(|v| v.is_finite()) {
                return Err(overflow("the parameters"));
            }
            let valid_stats = valid.map(|v| self.evaluate_on_pool(v));
            if valid_stats.is_some_and(|v| !v.loss_sum.is_finite()) {
                return Err(overflow("the validation loss"));
            }
            let report = EpochReport {
                epoch: epoch + 1,
                epochs: cfg.epochs.get(),
                steps: self.steps_taken,
                train: stats,
                valid: valid_stats,
                seconds,
                is_classifier: self.model.is_classifier(),
                noise_scale: self
                    .noise
                    .as_ref()
                    .filter(|n| Some(n.estimate.samples()) != noise_samples)
                    .and_then(|n| n.estimate.b_noise()),
                cut_short: stopped && step_in_epoch < steps_per_epoch,
            };
            info!(
                epoch = report.epoch,
                train_loss = report.train.mean_loss(),
                examples_per_sec = report.examples_per_sec(),
                "epoch done"
            );
            if !stopped {
                self.position = Position {
                    epoch: epoch + 1,
                    step_in_epoch: 0,
                };
            }
            observer.epoch(&report);
            reports.push(report);
            if stopped {
                break;
            }
        }
        Ok(RunReport {
            stopped,
            steps: self.steps_taken,
            examples: reports.iter().map(|r| r.train.rows).sum(),
            seconds: run_start.elapsed().as_secs_f64(),
            epochs: reports,
        })
    }

    /// One synchronized step: theta <- theta - lr * (1/B) * sum_i grad L_i over the rows
    /// `idx`, and the batch's stats. When the batch's loss is not finite the parameters are
    /// left as they were, so the caller can stop with the last good ones. A batch that is
    /// one shard runs on the calling thread (a model's own rayon calls then use the
    /// caller's pool); larger ones on the trainer's pool.
    pub fn step(&mut self, data: &Dataset, idx: &[usize], lr: f32) -> Result<Stats> {
        self.check_data(data)?;
        if idx.is_empty()
            || idx.len() > self.cfg.batch_size.get()
            || idx.iter().any(|&i| i >= data.n())
        {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "a step takes 1..={} row indices below {}",
                    self.cfg.batch_size,
                    data.n()
                ),
            ));
        }
        if self.is_one_shard(idx.len()) {
            // Nothing runs in parallel, so no hop onto the pool and back: that costs more
            // than the whole step at B = 1 (`cargo bench --bench step -- w3_sgd1/step`).
            return Ok(self.step_one_shard(data, idx, lr));
        }
        let pool = Arc::clone(&self.pool);
        Ok(pool.install(|| self.step_on_pool(data, idx, lr)))
    }

    /// Whether a batch of `batch_len` rows is one shard computed by this process alone.
    fn is_one_shard(&self, batch_len: usize) -> bool {
        self.exchange.is_none() && n_shards(batch_len, self.cfg.shard_rows) == 1
    }

    /// Whether this process or, across ranks, any rank wants to stop: all leave together.
    fn agree(&self, stop: bool) -> bool {
        match &self.exchange {
            Some(exchange) => exchange.any(stop),
            None => stop,
        }
    }

    /// `step` once the caller is on the pool and the inputs are checked.
    fn step_on_pool(&mut self, data: &Dataset, idx: &[usize], lr: f32) -> Stats {
        let batch_len = idx.len();
        let shard_rows = self.cfg.shard_rows;
        if self.is_one_shard(batch_len) {
            return self.step_one_shard(data, idx, lr);
        }
        let n_shards = n_shards(batch_len, shard_rows);
        assert!(
            n_shards <= self.grads.nrows(),
            "batch of {batch_len} exceeds the configured batch size"
        );
        // The shards this process computes: all, or its rank's run of them.
        let mine = match &mut self.exchange {
            Some(exchange) => exchange.plan(n_shards),
            None => 0..n_shards,
        };
        let n_local = mine.len();
        // One shard runs on this thread alone: keep the other phases here too.
        let parallel = n_local > 1 && self.cfg.threads.get() > 1;
        self.optimizer.set_parallel(parallel);
        let step_span = debug_span!("step", step = self.steps_taken + 1, batch_len, n_shards);
        let _step = step_span.enter();
        let n_params = self.params.len();
        let measure_noise = n_shards >= 2
            && self
                .noise
                .as_ref()
                .is_some_and(|n| self.steps_taken.is_multiple_of(n.period));
        let threads = self.cfg.threads.get().min(n_local);
        // Groups of shards share a gradient row (the tree's bottom levels summed as they
        // run); not when each shard's own norm is wanted, nor across ranks, whose exchange
        // starts from the shards' rows.
        let group = if self.exchange.is_none() && !measure_noise {
            group_size(n_local, shard_rows.get(), threads)
        } else {
            1
        };
        {
            let _prepare = trace_span!("prepare").entered();
            // The rows one model call passes: a group's.
            let rows = shard_rows.get().saturating_mul(group).min(batch_len);
            let readers = if parallel {
                self.cfg.threads.get().min(n_local)
            } else {
                1
            };
            let usage = Usage {
                parallel,
                rows,
                readers,
            };
            self.model.prepare(&self.params, &mut self.shared, usage);
        }
        let (model, params, shared) = (&self.model, &self.params[..], &self.shared);
        let row_stride = self.grads.ncols();
        let grads = self.grads.as_slice_mut().expect("grads are contiguous");
        let first = mine.start;
        // A task: one shard, or a group of shards passed through the model at once.
        let task =
            |local: usize, grad: &mut [f32], slots: &mut [ShardSlot], ws: &mut M::Workspace| {
                let shard_idx = first + local;
                let range = shard_range(shard_idx, batch_len, shard_rows);
                let end = shard_range(shard_idx + slots.len() - 1, batch_len, shard_rows).end;
                let rows = &idx[range.start..end];
                let _shard =
                    trace_span!(parent: &step_span, "shard", shard = shard_idx, rows = rows.len())
                        .entered();
                let stride = (row_stride, n_params);
                run_task(
                    model,
                    params,
                    shared,
                    data,
                    rows,
                    range.len(),
                    slots,
                    ws,
                    grad,
                    stride,
                );
                if measure_noise {
                    // Never in groups: each shard's own norm is wanted.
                    debug_assert_eq!(slots.len(), 1);
                    slots[0].grad_sq = squared_norm(grad);
                }
            };
        let shards_span = trace_span!("shards", n_shards = n_local).entered();
        let slots = &mut self.slots[..n_local];
        let mut queue = ShardQueue::new(grads, row_stride, n_params, slots, &mut self.workspaces);
        if group > 1 {
            queue.in_groups(group);
        }
        // One shard, or one thread: no dispatch to the pool.
        queue.run(threads.saturating_sub(1), &task);
        drop(shards_span);
        // The batch's stats and each shard's |gradient|^2, summed in shard order.
        let mut stats = Stats::default();
        let mut small = NoiseSample::default();
        let full_shard = |s: usize| shard_range(s, batch_len, shard_rows).len() == shard_rows.get();
        match &mut self.exchange {
            None => {
                for (s, slot) in self.slots[..n_shards].iter().enumerate() {
                    stats.add(&slot.stats);
                    small.add(full_shard(s), slot.grad_sq);
                }
            }
            Some(exchange) => {
                let local = self.slots[..n_local].iter().map(|slot| {
                    let [loss_sum, n_correct, rows] = slot.stats.to_f64s();
                    [loss_sum, n_correct, rows, slot.grad_sq]
                });
                let all = {
                    let _exchange = trace_span!("exchange", what = "stats").entered();
                    exchange.gather_stats(local)
                };
                for (s, g) in all.chunks_exact(SHARD_STATS).enumerate() {
                    stats.add(&Stats::from_f64s(g));
                    small.add(full_shard(s), g[3]);
                }
            }
        }
        if !stats.loss_sum.is_finite() {
            return stats;
        }
        let mut total_sq = 0.0;
        let grad_sum: &[f32] = {
            let _reduce = trace_span!("reduce", n_shards).entered();
            match &mut self.exchange {
                Some(exchange) => {
                    let sum = exchange.reduce(self.grads.slice_mut(s![.., ..n_params]));
                    if measure_noise {
                        total_sq = squared_norm_chunked(sum, &mut self.norm_partials, true);
                    }
                    sum
                }
                None => {
                    // Two shards or more: one is `step_one_shard`'s.
                    let rows = self.grads.slice_mut(s![.., ..n_params]);
                    if measure_noise {
                        total_sq = tree_reduce_with_norm(rows, n_shards, &mut self.norm_partials);
                    } else {
                        tree_reduce_above(rows, n_shards, group.ilog2());
                    }
                    &self.grads.as_slice().expect("grads are contiguous")[..n_params]
                }
            }
        };
        if measure_noise
            && small.count > 0
            && let Some(noise) = &mut self.noise
        {
            // Only full shards count, so every small batch has the same size b.
            let b = shard_rows.get();
            let small_sq = small.sum / small.count as f64 / (b * b) as f64;
            let big_sq = total_sq / (batch_len * batch_len) as f64;
            noise.estimate.update(small_sq, b, big_sq, batch_len);
        }
        {
            let _update = trace_span!("update").entered();
            self.optimizer
                .step(&mut self.params, grad_sum, batch_len, lr);
        }
        self.steps_taken += 1;
        stats
    }

    /// `step_on_pool` for a batch that is one shard, in one process: the model's sum is the
    /// batch's gradient, so there is nothing to hand out, group or reduce, and the step is
    /// the model call and the update with the same spans around them. The shard queue, the
    /// grouping and the stats loop cost about a quarter of a B = 1 step: W3 (d = 10, one
    /// thread, `bench -w w3 -t 1`, three alternating runs) 10.8-11.2 M -> 14.7-15.0 M
    /// steps/s. Same calls on the same buffers as the general path, so the same bits. Nothing
    /// in it uses the pool, so `step` runs it on the calling thread.
    fn step_one_shard(&mut self, data: &Dataset, idx: &[usize], lr: f32) -> Stats {
        let batch_len = idx.len();
        let _step =
            debug_span!("step", step = self.steps_taken + 1, batch_len, n_shards = 1).entered();
        self.optimizer.set_parallel(false);
        {
            let _prepare = trace_span!("prepare").entered();
            let usage = Usage {
                parallel: false,
                rows: batch_len,
                readers: 1,
            };
            self.model.prepare(&self.params, &mut self.shared, usage);
        }
        let n_params = self.params.len();
        let grad = &mut self.grads.as_slice_mut().expect("grads are contiguous")[..n_params];
        let slot = &mut self.slots[..1];
        // This thread's workspace (as the shard queue hands it, but clamped: `step` may be
        // called from another pool's thread).
        let last = self.workspaces.len() - 1;
        let ws = &mut self.workspaces[rayon::current_thread_index().unwrap_or(0).min(last)];
        {
            let _shards = trace_span!("shards", n_shards = 1).entered();
            let _shard = trace_span!("shard", shard = 0, rows = batch_len).entered();
            let (model, params, shared) = (&self.model, &self.params[..], &self.shared);
            let stride = (n_params, n_params);
            run_task(
                model, params, shared, data, idx, batch_len, slot, ws, grad, stride,
            );
        }
        let mut stats = Stats::default();
        stats.add(&slot[0].stats);
        if !stats.loss_sum.is_finite() {
            return stats;
        }
        {
            let _update = trace_span!("update").entered();
            self.optimizer.step(&mut self.params, grad, batch_len, lr);
        }
        self.steps_taken += 1;
        stats
    }

    /// Loss (and correct answers) summed over every row of `data` with the current
    /// parameters, in parallel blocks of `shard_rows` summed in block order.
    pub fn evaluate(&mut self, data: &Dataset) -> Result<Stats> {
        self.check_data(data)?;
        let pool = Arc::clone(&self.pool);
        Ok(pool.install(|| self.evaluate_on_pool(data)))
    }

    fn evaluate_on_pool(&mut self, data: &Dataset) -> Stats {
        let _eval = debug_span!("eval", rows = data.n()).entered();
        let block_rows = self.cfg.shard_rows.get().min(self.cfg.batch_size.get());
        let n_blocks = data.n().div_ceil(block_rows);
        let usage = Usage {
            parallel: true,
            rows: block_rows,
            readers: self.cfg.threads.get(),
        };
        self.model.prepare(&self.params, &mut self.shared, usage);
        let (model, params, shared) = (&self.model, &self.params[..], &self.shared);
        // Across ranks each evaluates a run of the blocks, and the blocks' stats are gathered
        // (when their count fits one MPI message; else every rank evaluates them all).
        let split = self
            .exchange
            .as_ref()
            .filter(|_| i32::try_from(n_blocks * 3).is_ok());
        let mine = split.map_or(0..n_blocks, |x| even_split(n_blocks, x.rank(), x.size()));
        let mut total = Stats::default();
        let mut per_block = Vec::new();
        let per_round = self.workspaces.len();
        for round_start in mine.clone().step_by(per_round) {
            let round_blocks = (mine.end - round_start).min(per_round);
            self.slots[..round_blocks]
                .par_iter_mut()
                .zip(&mut self.workspaces[..round_blocks])
                .enumerate()
                .for_each(|(i, (slot, ws))| {
                    let start = (round_start + i) * block_rows;
                    let batch = data.rows(start..(start + block_rows).min(data.n()));
                    slot.stats = model.loss_sum(params, shared, batch, ws);
                });
            for slot in &self.slots[..round_blocks] {
                match split {
                    Some(_) => per_block.push(slot.stats),
                    None => total.add(&slot.stats),
                }
            }
        }
        if let Some(exchange) = split {
            // Summed in block order, as one process sums them.
            for stats in exchange.gather_block_stats(&per_block, n_blocks) {
                total.add(&stats);
            }
        }
        total
    }

    fn check_data(&self, data: &Dataset) -> Result<()> {
        let d = self.d;
        if data.d() != d {
            return Err(Error::Shape {
                name: "features".into(),
                expected: vec![data.n(), d],
                got: vec![data.n(), data.d()],
            });
        }
        Ok(())
    }
}

/// The name of the trainer's pool thread `i`: its track in a trace, its row in a profile.
pub fn worker_name(i: usize) -> String {
    format!("minibatch-worker-{i}")
}

/// Runs `run` on the calling pool worker while the pool's other workers poll for work
/// instead of sleeping. A step hands work to the other workers several times (packing,
/// shards, reduction, update), and waking a sleeping thread takes 20-100 us on a virtual
/// machine: at B = 128 on W1 that was 10-20% of a step. So, like an OpenMP runtime with an
/// active wait policy, the workers spin on `rayon::yield_now` for the length of a run,
/// yielding the core to the OS now and then so an oversubscribed machine still makes
/// progress. The poller is broadcast, one to each worker, rather than spawned once per
/// other worker for them to steal: with many workers, some still waking up, a caller that
/// waits inside its first step runs its own pending jobs, a spawned poller among them, and
/// the worker meant to take it would then sleep for the whole run. The caller's own copy
/// returns at once, so the caller never waits on itself.
fn keep_workers_awake<R: Send>(threads: usize, run: impl FnOnce() -> R + Send) -> R {
    pollers_counted(threads, &AtomicUsize::new(0), run)
}

/// `keep_workers_awake`, counting the workers that start polling in `polling`.
fn pollers_counted<R: Send>(
    threads: usize,
    polling: &AtomicUsize,
    run: impl FnOnce() -> R + Send,
) -> R {
    if threads <= 1 {
        return run();
    }
    let stop = AtomicBool::new(false);
    rayon::scope(|scope| {
        // Inside the scope, so a worker of the pool whose threads poll.
        let caller = rayon::current_thread_index();
        let stop = &stop;
        scope.spawn_broadcast(move |_, _| {
            if rayon::current_thread_index() == caller {
                return;
            }
            polling.fetch_add(1, Ordering::Relaxed);
            let mut idle = 0u32;
            while !stop.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle = 0;
                    continue;
                }
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(256) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        // Stops the pollers however `run` ends (a panic included), so the scope can close.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(stop);
        run()
    })
}

/// One task's model call: a shard's gradient sum into `grad`, or a group's (of shards of
/// `shard_rows` rows from `idx`; `grad` holds their rows, `stride.0` apart and `stride.1`
/// long) through `Model::loss_grad_group`; the stats into the shards' slots; `ws` is the
/// running thread's. The model reads the rows `idx` where they lie or gathers them, as suits
/// it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn run_task<M: Model>(
    model: &M,
    params: &[f32],
    shared: &M::Shared,
    data: &Dataset,
    idx: &[usize],
    shard_rows: usize,
    slots: &mut [ShardSlot],
    ws: &mut M::Workspace,
    grad: &mut [f32],
    (row_stride, row_len): (usize, usize),
) {
    let _fwd_bwd = trace_span!("fwd_bwd").entered();
    let batch = data.indexed(idx);
    if let [slot] = slots {
        slot.stats = model.loss_grad_sum(params, shared, batch, ws, grad);
        return;
    }
    let shards = slots.len();
    assert!(shards <= MAX_GROUP, "a group of {shards} shards");
    let shape = (shards, row_len).strides((row_stride, 1));
    let rows = ArrayViewMut2::from_shape(shape, grad).expect("the group's rows");
    let mut stats = [Stats::default(); MAX_GROUP];
    model.loss_grad_group(
        params,
        shared,
        batch,
        shard_rows,
        ws,
        rows,
        &mut stats[..shards],
    );
    for (slot, stats) in slots.iter_mut().zip(stats) {
        slot.stats = stats;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every worker but the caller polls for the length of a run, even when the caller runs
    /// the jobs pending on its own thread before the others have woken (as it does when it
    /// waits inside a step): a poller the caller takes must not leave a worker asleep.
    #[test]
    fn every_other_worker_polls_through_a_run() {
        let threads = 6;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let polling = AtomicUsize::new(0);
        let seen = pool.install(|| {
            pollers_counted(threads, &polling, || {
                while rayon::yield_local() == Some(rayon::Yield::Executed) {}
                let start = Instant::now();
                while polling.load(Ordering::Relaxed) < threads - 1
                    && start.elapsed() < std::time::Duration::from_secs(20)
                {
                    std::thread::yield_now();
                }
                polling.load(Ordering::Relaxed)
            })
        });
        assert_eq!(seen, threads - 1);
    }
}
