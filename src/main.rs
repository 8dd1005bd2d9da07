//! The `minibatch` binary: parse arguments, install the log subscriber, run the command, and
//! turn any error into one message on stderr and an exit code (2: bad input, 1: run failure).

mod cli;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use minibatch::checkpoint::{checkpoint_config, load_checkpoint, save_checkpoint, save_params};
use minibatch::profile::Recorder;
use minibatch::{
    Config, EpochReport, Mlp, Model, Observer, Progress, RawConfig, Result, TrainState, Trainer,
    data,
};

use cli::{
    BenchArgs, Cli, Command, ConfigArgs, DescentArgs, EvalArgs, PredictArgs, ScaleArgs, TrainArgs,
    TuneArgs,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let recorder = match &cli.command {
        Command::Train(args) if args.trace.is_some() || args.profile => Some(Recorder::new()),
        Command::Scale(_) => Some(Recorder::new()),
        _ => None,
    };
    install_subscriber(&cli, recorder.clone());
    let result = match &cli.command {
        Command::Train(args) => train(args, cli.quiet, recorder.as_ref()),
        Command::Layout(args) => layout(args),
        Command::Bench(args) => bench(args, cli.quiet),
        Command::Tune(args) => tune(args, cli.quiet),
        Command::Descent(args) => descent(args, cli.quiet),
        Command::Eval(args) => eval(args),
        Command::Predict(args) => predict(args, cli.quiet),
        Command::Scale(args) => scale(
            args,
            cli.quiet,
            recorder.as_ref().expect("installed for scale"),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("minibatch: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Log lines to stderr, filtered by RUST_LOG or -v/-q; and, for --trace/--profile, the span
/// recorder, which listens to every span of this crate whatever the log filter says.
fn install_subscriber(cli: &Cli, recorder: Option<Recorder>) {
    use tracing_subscriber::prelude::*;
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(|| LogLine(Vec::new()))
        .with_filter(filter);
    let recording = recorder.map(|r| {
        r.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("minibatch", tracing::Level::TRACE),
        )
    });
    tracing_subscriber::registry()
        .with(log)
        .with(recording)
        .init();
}

/// The config as given (file plus flags, kept to record in saved files) and validated.
fn load_config(args: &ConfigArgs) -> Result<(RawConfig, Config)> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    args.overrides.apply(&mut raw);
    let cfg = raw.validate()?;
    Ok((raw, cfg))
}

fn layout(args: &ConfigArgs) -> Result<()> {
    let (_, cfg) = load_config(args)?;
    let model = Mlp::new(cfg.model.clone());
    println!(
        "{} ({} parameters)",
        cfg.model.describe(),
        model.layout().n_params()
    );
    for entry in model.layout().entries() {
        println!(
            "  {:<4} {:<14} offset {}",
            entry.name,
            format!("{:?}", entry.shape),
            entry.offset
        );
    }
    Ok(())
}

fn train(args: &TrainArgs, quiet: bool, recorder: Option<&Recorder>) -> Result<()> {
    let (raw, cfg) = match (&args.resume, &args.config.config) {
        (Some(path), None) => {
            // The checkpoint's own config, with the command line's overrides on top.
            let mut raw = RawConfig::from_toml(&checkpoint_config(path)?, path)?;
            args.config.overrides.apply(&mut raw);
            let cfg = raw.validate()?;
            (raw, cfg)
        }
        _ => load_config(&args.config)?,
    };
    let model = Mlp::new(cfg.model.clone());
    let n_params = model.layout().n_params();
    let mut trainer = Trainer::new(model, cfg.data.d, &cfg.train, cfg.seed)?;
    if let Some(path) = &args.resume {
        let checkpoint = load_checkpoint(path, trainer.model().layout())?;
        trainer.restore(
            &checkpoint.params,
            checkpoint.optimizer,
            checkpoint.position,
            checkpoint.steps,
        )?;
        if !quiet {
            println!(
                "resuming {} at epoch {}, step {} of it ({} steps done)",
                path.display(),
                checkpoint.position.epoch + 1,
                checkpoint.position.step_in_epoch,
                checkpoint.steps
            );
        }
    }
    if let Some(path) = &args.init {
        let params = minibatch::checkpoint::load_params(path, trainer.model().layout())?;
        trainer.set_params(&params)?;
    }
    let config_text = toml::to_string(&raw.recorded()).unwrap_or_default();
    let checkpoints = CheckpointPolicy::new(args, &config_text, trainer.model().layout().clone())?;
    let _ = INTERRUPT_CONTEXT.set((config_text.clone(), trainer.model().layout().clone()));
    interrupt::install();
    let (train, valid) = trainer.install(|| data::load(&cfg.data, cfg.seed));
    let t = &cfg.train;
    let shards = minibatch::shard::n_shards(t.batch_size.get(), t.shard_rows);
    if !quiet {
        println!(
            "{} ({n_params} params) | train {} x {}{} | B {} in {shards} shard{} of {} rows | {} thread{} | {}, {}",
            cfg.model.describe(),
            train.n(),
            train.d(),
            valid
                .as_ref()
                .map(|v| format!(", valid {}", v.n()))
                .unwrap_or_default(),
            t.batch_size,
            if shards == 1 { "" } else { "s" },
            t.shard_rows.get().min(t.batch_size.get()),
            t.threads,
            if t.threads.get() == 1 { "" } else { "s" },
            t.optimizer.describe(),
            t.schedule.describe(),
        );
    }
    let bar = progress_bar(quiet, t.epochs.get() * t.steps_per_epoch.get());
    let mut output = TrainOutput {
        quiet,
        bar: bar.clone(),
        checkpoints,
        steps_per_epoch: t.steps_per_epoch.get(),
        failure: None,
        interrupted: None,
    };
    let report = trainer.fit_observed(&train, valid.as_deref(), &mut output);
    bar.finish_and_clear();
    let report = report?;
    if let Some(err) = output.failure.take() {
        return Err(err);
    }
    if let Some(interrupted) = output.interrupted.take() {
        return Err(interrupted);
    }
    if let Some(policy) = &mut output.checkpoints {
        let state = TrainState {
            params: trainer.params(),
            optimizer: trainer.optimizer(),
            position: trainer.position(),
            steps: report.steps,
        };
        let path = policy.write(&state)?;
        if !quiet {
            println!("checkpoint {}", path.display());
        }
    }
    if !quiet && let Some(last) = report.epochs.last() {
        println!(
            "done: {} epochs, {} steps, {} examples in {:.2} s ({:.0} examples/s); final train loss {:.4}{}",
            report.epochs.len(),
            report.steps,
            report.examples,
            report.seconds,
            report.examples as f64 / report.seconds.max(1e-12),
            last.train.mean_loss(),
            last.valid
                .map(|v| format!(", valid loss {:.4}", v.mean_loss()))
                .unwrap_or_default(),
        );
    }
    if let Some(recorder) = recorder {
        if let Some(path) = &args.trace {
            minibatch::profile::write_chrome_trace(path, recorder)?;
            if !quiet {
                println!(
                    "wrote trace to {} (open in ui.perfetto.dev)",
                    path.display()
                );
            }
        }
        if args.profile {
            minibatch::profile::print_profile(&minibatch::profile::profile(recorder), recorder);
        }
    }
    if let Some(path) = &args.save {
        let config_text = toml::to_string(&raw.recorded()).unwrap_or_default();
        save_params(
            path,
            trainer.model().layout(),
            trainer.params(),
            &[("model", cfg.model.describe()), ("config", config_text)],
        )?;
        if !quiet {
            println!("saved parameters to {}", path.display());
        }
    }
    Ok(())
}

/// The live progress bar of `train`, if any, so log lines can step around it.
static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// A bar over all steps of the run (rate, ETA, current loss) on stderr; hidden with
/// `--quiet` or when stderr is not a terminal.
fn progress_bar(quiet: bool, total_steps: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, {per_sec}, ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let _ = BAR.set(bar.clone());
    bar
}

/// One log event's text, written to stderr in one piece, above the progress bar if one is
/// drawn.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().write_all(&self.0);
        };
        match BAR.get() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

/// Prints epoch lines (around the bar), moves the bar, writes checkpoints and stops the run
/// on SIGINT/SIGTERM after checkpointing.
struct TrainOutput {
    quiet: bool,
    bar: ProgressBar,
    checkpoints: Option<CheckpointPolicy>,
    steps_per_epoch: usize,
    /// A checkpoint that could not be written; the run stops and reports it.
    failure: Option<minibatch::Error>,
    interrupted: Option<minibatch::Error>,
}

impl Observer for TrainOutput {
    fn epoch(&mut self, report: &EpochReport) {
        if !self.quiet {
            self.bar.suspend(|| println!("{}", epoch_line(report)));
        }
    }

    fn after_step(&mut self, state: &TrainState<'_>) -> bool {
        if interrupt::requested() {
            let policy = self
                .checkpoints
                .get_or_insert_with(CheckpointPolicy::interrupted);
            match policy.write(state) {
                Ok(path) => {
                    self.interrupted = Some(minibatch::Error::Interrupted {
                        checkpoint: path,
                        epoch: state.position.epoch + 1,
                        step: state.steps,
                    })
                }
                Err(err) => self.failure = Some(err),
            }
            return true;
        }
        let Some(policy) = &mut self.checkpoints else {
            return false;
        };
        let epoch_end = state.position.step_in_epoch == self.steps_per_epoch;
        let periodic = policy.every.is_some_and(|k| state.steps.is_multiple_of(k));
        if (epoch_end || periodic)
            && let Err(err) = policy.write(state)
        {
            self.failure = Some(err);
            return true;
        }
        false
    }

    fn progress(&mut self, p: Progress) {
        self.bar
            .set_position(((p.epoch - 1) * p.steps_per_epoch + p.step_in_epoch) as u64);
        self.bar.set_message(format!(
            "epoch {}/{} loss {:.4}",
            p.epoch, p.epochs, p.mean_loss
        ));
    }
}

fn epoch_line(r: &EpochReport) -> String {
    let mut line = format!(
        "epoch {:>3}/{}  train loss {:.4}",
        r.epoch,
        r.epochs,
        r.train.mean_loss()
    );
    if r.is_classifier {
        line += &format!(" acc {:5.2}%", 100.0 * r.train.accuracy());
    }
    if let Some(v) = r.valid {
        line += &format!("  valid loss {:.4}", v.mean_loss());
        if r.is_classifier {
            line += &format!(" acc {:5.2}%", 100.0 * v.accuracy());
        }
    }
    line += &format!("  {:>10.0} ex/s  {:.2} s", r.examples_per_sec(), r.seconds);
    line
}

fn bench(args: &BenchArgs, quiet: bool) -> Result<()> {
    let workloads = if args.workload.iter().any(|w| w == "all") {
        minibatch::bench::WORKLOADS
            .iter()
            .map(|(w, _, _)| w.to_string())
            .collect()
    } else {
        args.workload.clone()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if args.threads.is_empty() {
        vec![1, cores]
    } else {
        args.threads.clone()
    };
    let mut thread_counts = Vec::new();
    for t in threads {
        let t = std::num::NonZeroUsize::new(t).ok_or_else(|| {
            minibatch::Error::config("--threads", "thread counts must be at least 1")
        })?;
        if !thread_counts.contains(&t) {
            thread_counts.push(t);
        }
    }
    if let Some(&b) = args.batch_sizes.iter().find(|&&b| b == 0) {
        return Err(minibatch::Error::config(
            "--batch-sizes",
            format!("batch sizes must be at least 1, got {b}"),
        ));
    }
    let plan = minibatch::bench::BenchPlan {
        workloads,
        batch_sizes: args.batch_sizes.clone(),
        threads: thread_counts,
        shard_rows: args.shard_rows,
        n: args.n,
    };
    let report = minibatch::bench::run(&plan, |msg| {
        if !quiet {
            eprintln!("bench: {msg}");
        }
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data serialises")
        );
        return Ok(());
    }
    let limits = &report.limits;
    println!("kernel: {}", limits.isa);
    for ((t, peak), (_, bw)) in limits.peak_gflops.iter().zip(&limits.copy_gb_per_sec) {
        println!("{t} thread(s): peak FMA {peak:.1} GFLOP/s, copy bandwidth {bw:.1} GB/s");
    }
    println!(
        "\n| workload | B | threads | shard rows | examples/s | GFLOP/s | of peak FMA | feature GB/s | of bandwidth | reduce share | speedup |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &report.rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.0}% | {:.2} | {:.0}% | {:.1}% | {} |",
            r.workload,
            r.batch_size,
            r.threads,
            r.shard_rows,
            r.examples_per_sec,
            r.gflops,
            100.0 * r.peak_fraction,
            r.feature_gb_per_sec,
            100.0 * r.bandwidth_fraction,
            100.0 * r.reduce_fraction,
            r.speedup
                .map(|s| format!("{s:.2}x"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let predictions: Vec<_> = report
        .rows
        .iter()
        .filter_map(|r| r.serial_fraction.map(|e| (r, e.max(0.0))))
        .collect();
    if !predictions.is_empty() {
        println!(
            "\nScaling predicted by Amdahl's law from the measured (Karp-Flatt) serial fraction:"
        );
        println!("| workload | B | threads | serial fraction | 16 threads | 64 threads |");
        println!("|---|---|---|---|---|---|");
        for (r, e) in predictions {
            println!(
                "| {} | {} | {} | {:.3} | {:.1}x | {:.1}x |",
                r.workload,
                r.batch_size,
                r.threads,
                e,
                minibatch::bench::amdahl(e, 16),
                minibatch::bench::amdahl(e, 64)
            );
        }
    }
    Ok(())
}

fn scale(args: &ScaleArgs, quiet: bool, recorder: &Recorder) -> Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    raw.train.epochs = Some(args.epochs);
    let threads = if args.threads.is_empty() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut t: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2))
            .take_while(|&t| t < cores)
            .collect();
        t.push(cores);
        t
    } else {
        args.threads.clone()
    };
    if let Some(&b) = args.batch_sizes.iter().find(|&&b| b == 0) {
        return Err(minibatch::Error::config(
            "--batch-sizes",
            format!("batch sizes must be at least 1, got {b}"),
        ));
    }
    let rows = minibatch::scale::run(&raw, &threads, &args.batch_sizes, recorder, |msg| {
        if !quiet {
            eprintln!("scale: {msg}");
        }
    })?;
    minibatch::scale::write_outputs(&args.out, &rows)?;
    println!(
        "| B | threads | examples/s | speedup | efficiency | serial fraction | prepare | shards | reduce | update | workers busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2}x | {:.0}% | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.0}% |",
            r.batch_size,
            r.threads,
            r.examples_per_sec,
            r.speedup,
            100.0 * r.efficiency,
            r.serial_fraction
                .map(|e| format!("{e:.3}"))
                .unwrap_or_else(|| "-".into()),
            100.0 * r.prepare_share,
            100.0 * r.shards_share,
            100.0 * r.reduce_share,
            100.0 * r.update_share,
            100.0 * r.worker_busy_share,
        );
    }
    for (b, e, s16, s64) in minibatch::scale::predictions(&rows) {
        println!(
            "B = {b}: serial fraction {e:.3}; Amdahl's law predicts {s16:.1}x on 16 cores, {s64:.1}x on 64"
        );
    }
    if !quiet {
        println!(
            "wrote {} and {}",
            args.out.join("scale.csv").display(),
            args.out.join("scale.svg").display()
        );
    }
    Ok(())
}

fn tune(args: &TuneArgs, quiet: bool) -> Result<()> {
    let raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(minibatch::Error::config(
            "--seconds",
            "must be a positive number of seconds",
        ));
    }
    if let Some(t) = args.target_loss
        && !t.is_finite()
    {
        return Err(minibatch::Error::config(
            "--target-loss",
            "must be a finite loss",
        ));
    }
    let plan = minibatch::tune::TunePlan {
        batch_sizes: args.batch_sizes.clone(),
        threads: args.threads.clone(),
        target_loss: args.target_loss,
        budget_examples: args.budget,
        lr_rule: minibatch::tune::LrRule::parse(&args.lr_rule)?,
        measure_seconds: args.seconds,
    };
    let report = minibatch::tune::run(&raw, &plan, |msg| {
        if !quiet {
            eprintln!("tune: {msg}");
        }
    })?;
    minibatch::tune::write_outputs(&args.out, &report)?;
    println!(
        "gradient noise scale while training B = {}:",
        report.base_batch_size
    );
    for (epoch, loss, b_noise) in &report.noise_history {
        println!("  epoch {epoch}: train loss {loss:.4}, B_noise {b_noise:.1}");
    }
    println!(
        "(the estimator added {:.1}% to the step time at B = {})\n",
        100.0 * report.estimator_overhead,
        report.base_batch_size
    );
    println!(
        "| B | threads | examples/s | steps/s | predicted time | lr | steps to target | seconds to target | train loss | valid loss | B > 2 B_noise |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    for r in &report.rows {
        let steps = match (r.steps_to_target, r.reached_target) {
            (Some(s), Some(false)) => format!("> {s}"),
            (Some(s), _) => s.to_string(),
            (None, _) => "-".into(),
        };
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.2}x | {:.4} | {} | {} | {} | {} | {} |",
            r.batch_size,
            r.threads,
            r.examples_per_sec,
            r.steps_per_sec,
            r.predicted_time,
            r.lr,
            steps,
            opt(r.seconds_to_target, 2),
            opt(r.final_train_loss, 4),
            opt(r.valid_loss, 4),
            if r.above_twice_noise_scale { "yes" } else { "" },
        );
    }
    if let Some((s_min, e_min)) = report.tradeoff {
        println!(
            "\nfitted S = S_min (1 + B_crit / B): S_min = {s_min:.0} steps, E_min = {e_min:.0} examples, B_crit = {:.0}",
            e_min / s_min
        );
    }
    println!("\nrecommended: {}", report.reason);
    println!(
        "learning rate at B = {}: {:.5} (from {:.5} at B = {}, scaled by (B1/B0)(B0 + B_noise)/(B1 + B_noise)){}",
        report.recommended_batch_size,
        report.suggested_lr,
        report.base_lr,
        report.base_batch_size,
        if report.suggest_warmup {
            "; more than 2x the reference: warm up to it"
        } else {
            ""
        }
    );
    if report.recommended_batch_size as f64 > 2.0 * report.b_noise {
        println!(
            "note: B > 2 B_noise, the large-batch regime where minima tend to be sharp and generalise worse; compare the validation loss column"
        );
    }
    if !quiet {
        println!(
            "wrote {} and {}",
            args.out.join("tune.csv").display(),
            args.out.join("tune.svg").display()
        );
    }
    Ok(())
}

fn descent(args: &DescentArgs, quiet: bool) -> Result<()> {
    if !(args.noise.is_finite() && args.noise >= 0.0) {
        return Err(minibatch::Error::config(
            "--noise",
            "must be finite and >= 0",
        ));
    }
    let plan = minibatch::descent::DescentPlan {
        n: args.n,
        batch_size: args.batch_size,
        steps: args.steps,
        lr: args.lr,
        seed: args.seed,
        seeds: args.seeds,
        shown_seeds: args.show_seeds,
        noise: args.noise,
    };
    let descent = minibatch::descent::run(&plan)?;
    minibatch::descent::write_outputs(&args.out, &descent)?;
    if args.text {
        print!("{}", minibatch::descent::to_text(&descent, 64, 24));
    }
    if !quiet {
        let (w, b) = descent.bowl.minimum();
        let end = descent.full_batch.last().copied().unwrap_or(descent.start);
        println!(
            "least squares at w = {w:.4}, b = {b:.4}; full batch ended at w = {:.4}, b = {:.4} after {} steps",
            end.0, end.1, plan.steps
        );
        println!(
            "wrote {} and {} (open the page in a browser; it needs no network)",
            args.out.join("descent.svg").display(),
            args.out.join("descent.html").display()
        );
    }
    Ok(())
}

/// Where and how often `train` writes checkpoints, and which it keeps.
struct CheckpointPolicy {
    dir: PathBuf,
    every: Option<u64>,
    keep: usize,
    config: String,
    layout: minibatch::ParamLayout,
}

impl CheckpointPolicy {
    fn new(args: &TrainArgs, config: &str, layout: minibatch::ParamLayout) -> Result<Option<Self>> {
        let Some(dir) = &args.checkpoint else {
            if args.checkpoint_every.is_some() {
                return Err(minibatch::Error::config(
                    "--checkpoint-every",
                    "needs --checkpoint DIR",
                ));
            }
            return Ok(None);
        };
        if args.checkpoint_every == Some(0) || args.keep == 0 {
            return Err(minibatch::Error::config(
                "--checkpoint-every",
                "--checkpoint-every and --keep must be at least 1",
            ));
        }
        std::fs::create_dir_all(dir).map_err(|source| minibatch::Error::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Some(CheckpointPolicy {
            dir: dir.clone(),
            every: args.checkpoint_every,
            keep: args.keep,
            config: config.to_string(),
            layout,
        }))
    }

    /// For a Ctrl-C without --checkpoint: one file in the current directory.
    fn interrupted() -> Self {
        let (config, layout) = INTERRUPT_CONTEXT.get().cloned().unwrap_or_default();
        CheckpointPolicy {
            dir: PathBuf::from("."),
            every: None,
            keep: usize::MAX,
            config,
            layout,
        }
    }

    /// Writes `step-NNNNNNNNN.safetensors` atomically and removes the oldest beyond `keep`.
    fn write(&mut self, state: &TrainState<'_>) -> Result<PathBuf> {
        let path = self
            .dir
            .join(format!("step-{:09}.safetensors", state.steps));
        save_checkpoint(&path, &self.layout, state, &self.config)?;
        if self.keep != usize::MAX
            && let Ok(entries) = std::fs::read_dir(&self.dir)
        {
            let mut steps: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
                })
                .collect();
            steps.sort();
            let excess = steps.len().saturating_sub(self.keep);
            for old in &steps[..excess] {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(path)
    }
}

/// Config and layout for a checkpoint written on Ctrl-C when no --checkpoint was given.
static INTERRUPT_CONTEXT: OnceLock<(String, minibatch::ParamLayout)> = OnceLock::new();

/// SIGINT and SIGTERM set a flag that the training loop checks after every step, so the
/// current step finishes and a checkpoint is written before the process exits with 130.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        // Only an atomic store: async-signal-safe.
        REQUESTED.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        }
    }

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::Relaxed)
    }
}

/// The saved model, its parameters and the rows to evaluate on.
fn saved_model(args: &EvalArgs) -> Result<(Mlp, Vec<f32>, std::sync::Arc<minibatch::Dataset>)> {
    let model_raw = RawConfig::from_toml(
        &minibatch::checkpoint::model_config(&args.model)?,
        &args.model,
    )?;
    let model_cfg = model_raw.validate()?;
    let model = Mlp::new(model_cfg.model.clone());
    let params = minibatch::checkpoint::load_params(&args.model, model.layout())?;
    let data_cfg = match &args.config {
        Some(path) => RawConfig::load(path)?.validate()?,
        None => model_cfg,
    };
    if data_cfg.data.d != model.spec().d_in {
        return Err(minibatch::Error::Shape {
            name: "features".into(),
            expected: vec![model.spec().d_in],
            got: vec![data_cfg.data.d],
        });
    }
    let (train, valid) = data::load(&data_cfg.data, data_cfg.seed);
    Ok((model, params, valid.unwrap_or(train)))
}

fn eval(args: &EvalArgs) -> Result<()> {
    let (model, params, data) = saved_model(args)?;
    let m = minibatch::metrics::evaluate(&model, &params, &data);
    println!(
        "{} on {} rows: mean loss {:.4}",
        model.spec().describe(),
        m.rows,
        m.mean_loss
    );
    if let (Some(mse), Some(r2)) = (m.mse, m.r2) {
        println!("MSE {mse:.4}, R^2 {r2:.4}");
    }
    if let (Some(accuracy), Some(confusion)) = (m.accuracy, &m.confusion) {
        println!(
            "accuracy {:.2}%\nconfusion matrix (rows: target class, columns: predicted):",
            100.0 * accuracy
        );
        print!("      ");
        for p in 0..confusion.len() {
            print!("{p:>7}");
        }
        println!();
        for (t, row) in confusion.iter().enumerate() {
            print!("{t:>5} ");
            for count in row {
                print!("{count:>7}");
            }
            println!();
        }
    }
    Ok(())
}

fn predict(args: &PredictArgs, quiet: bool) -> Result<()> {
    let (model, params, data) = saved_model(&args.eval)?;
    let head = model.spec().head;
    let outputs = model.outputs(&params, data.x());
    let mut csv = String::from("row,target,prediction");
    let n_classes = match head {
        minibatch::model::Head::Softmax { n_classes } => n_classes,
        minibatch::model::Head::Logistic => 2,
        minibatch::model::Head::Mse => 0,
    };
    for c in 0..n_classes {
        csv += &format!(",p{c}");
    }
    csv.push('\n');
    for (i, (z, &y)) in outputs.rows().into_iter().zip(data.targets()).enumerate() {
        let z = z.as_slice().expect("row-major");
        match head {
            minibatch::model::Head::Mse => csv += &format!("{i},{y},{}\n", z[0]),
            minibatch::model::Head::Logistic => {
                let p1 = minibatch::model::sigmoid(z[0]);
                csv += &format!("{i},{y},{},{},{}\n", usize::from(z[0] > 0.0), 1.0 - p1, p1);
            }
            minibatch::model::Head::Softmax { .. } => {
                let lse = minibatch::model::log_sum_exp(ndarray::ArrayView1::from(z));
                csv += &format!("{i},{y},{}", minibatch::metrics::predicted_class(head, z));
                for v in z {
                    csv += &format!(",{}", (v - lse).exp());
                }
                csv.push('\n');
            }
        }
    }
    minibatch::checkpoint::write_atomic(&args.out, csv.as_bytes())?;
    if !quiet {
        println!(
            "wrote {} predictions to {}",
            outputs.nrows(),
            args.out.display()
        );
    }
    Ok(())
}
