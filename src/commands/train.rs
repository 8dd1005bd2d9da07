//! `minibatch train`: runs a config (or resumes a checkpoint), prints epochs around a progress
//! bar, writes checkpoints, and stops cleanly on Ctrl-C.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use minibatch::checkpoint::{
    RunRecord, checkpoint_config, load_checkpoint, save_checkpoint, save_params,
};
use minibatch::cluster::Collective;
use minibatch::profile::Recorder;
use minibatch::{
    EpochReport, Mlp, Model, Observer, Progress, RawConfig, Result, TrainState, Trainer, data,
};

use crate::cli::TrainArgs;
use crate::{BAR, load_config};

/// Trains alone, or as one rank of `comm`: then every rank trains and rank 0 alone prints,
/// checkpoints and saves.
pub fn train(
    args: &TrainArgs,
    quiet: bool,
    recorder: Option<&Recorder>,
    comm: Option<Box<dyn Collective>>,
) -> Result<()> {
    // From the start: a data file is read while the config is checked, and Ctrl-C then
    // stops the run before its first step (checked once the data is in) instead of
    // killing it.
    interrupt::install();
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
    if let Some(comm) = comm {
        trainer.join(comm, args.reduction.unwrap_or_default())?;
    }
    let (rank, ranks) = trainer.rank();
    let leader = rank == 0;
    // What the user asked for, for what every rank reports (its trace file).
    let asked_quiet = quiet;
    let quiet = quiet || !leader;
    check_outputs(args, &raw, (rank, ranks), quiet)?;
    // Steps the run had taken before this process, and where in an epoch it resumed.
    let mut steps_before = 0;
    let mut resumed_mid_epoch = None;
    for (flag, path) in [("--resume", &args.resume), ("--init", &args.init)] {
        if let Some(path) = path {
            check_standardization(flag, path, &cfg)?;
            check_feature_names(flag, path, &cfg, raw.data.path.as_deref())?;
            check_model_and_classes(flag, path, &cfg)?;
        }
    }
    if let Some(path) = &args.resume {
        let checkpoint = load_checkpoint(path, trainer.model().layout())?;
        steps_before = checkpoint.steps;
        if let Some(was) = &checkpoint.run {
            check_resume_shape(path, was, &run_shape(&cfg))?;
        }
        // A checkpoint at an epoch's end records the epoch with all its steps taken.
        let position = checkpoint.position;
        let per_epoch = cfg.train.steps_per_epoch.get();
        if position.step_in_epoch > per_epoch {
            return Err(minibatch::Error::Parse {
                path: path.clone(),
                msg: format!(
                    "is at step {} of an epoch, and this run's epochs have {per_epoch} steps",
                    position.step_in_epoch
                ),
            });
        }
        let counted = (position.epoch as u64)
            .checked_mul(per_epoch as u64)
            .and_then(|n| n.checked_add(position.step_in_epoch as u64));
        if counted != Some(checkpoint.steps) {
            return Err(minibatch::Error::Parse {
                path: path.clone(),
                msg: format!(
                    "records epoch {}, step {} of it, of {per_epoch}-step epochs, but {} steps \
                     taken: its position does not add up",
                    position.epoch.saturating_add(1),
                    position.step_in_epoch,
                    checkpoint.steps
                ),
            });
        }
        if (1..per_epoch).contains(&position.step_in_epoch) {
            resumed_mid_epoch = Some((position.epoch + 1, position.step_in_epoch));
        }
        let done = position.epoch + usize::from(position.step_in_epoch >= per_epoch);
        if done >= cfg.train.epochs.get() {
            return Err(minibatch::Error::config(
                "train.epochs",
                format!(
                    "the run in {} has done {done} epoch{} of {}; set more (--epochs {}) to train further",
                    path.display(),
                    super::s(done),
                    cfg.train.epochs,
                    done + 1
                ),
            ));
        }
        trainer.restore(
            &checkpoint.params,
            checkpoint.optimizer,
            checkpoint.position,
            checkpoint.steps,
        )?;
        if !quiet {
            outln!(
                "resuming {} at epoch {}, step {} of it ({} step{} done)",
                path.display(),
                checkpoint.position.epoch + 1,
                checkpoint.position.step_in_epoch,
                checkpoint.steps,
                super::s(checkpoint.steps)
            );
            let recorded_rows = checkpoint.run.as_ref().map_or(0, |run| run.shard_rows);
            resume_notes(path, &raw, &cfg, recorded_rows);
        }
    }
    if let Some(path) = &args.init {
        let params = minibatch::checkpoint::load_params(path, trainer.model().layout())?;
        trainer.set_params(&params)?;
    }
    let config_text = toml::to_string(&raw.recorded()).unwrap_or_default();
    let context = RunRecord {
        model: cfg.model.describe(),
        config: config_text.clone(),
        run: run_shape(&cfg),
        layout: trainer.model().layout().clone(),
        standardization: cfg
            .data
            .file
            .as_ref()
            .and_then(|f| f.standardization.clone()),
        class_names: cfg
            .data
            .file
            .as_ref()
            .and_then(|f| f.classes.names().map(<[String]>::to_vec)),
        feature_names: cfg
            .data
            .file
            .as_ref()
            .and_then(|f| f.train.feature_names().map(<[String]>::to_vec)),
    };
    let checkpoints = if leader {
        CheckpointPolicy::new(args, context.clone(), steps_before)?
    } else {
        None
    };
    let _ = INTERRUPT_CONTEXT.set(context);
    let (train, valid) = trainer.install(|| data::load(&cfg.data, cfg.seed));
    // Ctrl-C while the data was read or generated: stop before the first step.
    if interrupt::requested() {
        return Err(minibatch::Error::InterruptedBeforeTraining);
    }
    if ranks > 1 {
        let fingerprint = inputs_fingerprint(args, &config_text, &train, valid.as_deref())?;
        trainer.check_same_inputs(fingerprint)?;
    }
    let t = &cfg.train;
    // Bits that depend on the rank count: said in the header and the saved file.
    let fast = ranks > 1 && args.reduction == Some(minibatch::cluster::Reduction::Fast);
    let shards = minibatch::shard::n_shards(t.batch_size.get(), t.shard_rows);
    let shard_rows = t.shard_rows.get().min(t.batch_size.get());
    // Across ranks the shards run one by one (the exchange starts from their rows).
    let group = match ranks {
        1 => minibatch::shard::group_size(shards, shard_rows, t.threads.get()),
        _ => 1,
    };
    if !quiet {
        outln!(
            "{} ({n_params} params) | train {} x {}{} | B {} in {shards} shard{} of {} row{}{}{} | {}{} thread{} | {}, {}",
            cfg.model.describe(),
            train.n(),
            train.d(),
            valid
                .as_ref()
                .map(|v| format!(", valid {}", v.n()))
                .unwrap_or_default(),
            t.batch_size,
            super::s(shards),
            shard_rows,
            super::s(shard_rows),
            match t.batch_size.get() % shard_rows {
                0 => String::new(),
                last => format!(" (the last {last})"),
            },
            if group > 1 {
                format!(", {group} to a task")
            } else {
                String::new()
            },
            if ranks > 1 {
                format!(
                    "{ranks} MPI ranks{} x ",
                    if fast { " (fast reduction)" } else { "" }
                )
            } else {
                String::new()
            },
            t.threads,
            super::s(t.threads.get()),
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
        leader,
        failure: None,
        interrupted: None,
        again: resume_flags(args),
        program: resume_program(ranks),
        resumed_mid_epoch,
    };
    let report = trainer.fit_observed(&train, valid.as_deref(), &mut output);
    bar.finish_and_clear();
    // The run's error, or an observer's (a checkpoint it could not write).
    let report = report.and_then(|r| output.failure.take().map_or(Ok(r), Err));
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            // The trace and profile of what ran still help to see why; the failure is the
            // error to report.
            let threads = cfg.train.threads.get();
            let _ = write_trace_and_profile(args, recorder, (rank, ranks), asked_quiet, threads);
            return Err(err);
        }
    };
    if output.interrupted.is_none() && report.stopped {
        // Across ranks: another rank saw Ctrl-C (or this one, not the leader), and every
        // rank stopped after the same step. Rank 0 writes the checkpoint.
        let state = TrainState {
            params: trainer.params(),
            optimizer: trainer.optimizer(),
            position: trainer.position(),
            steps: report.steps,
        };
        let checkpoint = if leader {
            let policy = output
                .checkpoints
                .get_or_insert_with(CheckpointPolicy::interrupted);
            policy.write(&state)?
        } else {
            PathBuf::new()
        };
        output.interrupted = Some(minibatch::Error::Interrupted {
            checkpoint,
            epoch: state.position.epoch + 1,
            step: state.steps,
            program: output.program.clone(),
            again: output.again.clone(),
        });
    }
    // An interrupted run skips its end-of-run checkpoint and summary, but still writes the
    // trace and profile of what it ran.
    let interrupted = output.interrupted.take();
    if interrupted.is_none()
        && let Some(policy) = &mut output.checkpoints
    {
        let state = TrainState {
            params: trainer.params(),
            optimizer: trainer.optimizer(),
            position: trainer.position(),
            steps: report.steps,
        };
        let path = policy.write(&state)?;
        if !quiet {
            outln!("checkpoint {}", path.display());
        }
    }
    if !quiet
        && interrupted.is_none()
        && let Some(last) = report.epochs.last()
    {
        outln!(
            "done: {} epoch{}, {} step{}{}, {} example{} in {:.2} s ({:.0} examples/s); final train loss {}{}",
            report.epochs.len(),
            super::s(report.epochs.len()),
            report.steps.saturating_sub(steps_before),
            super::s(report.steps.saturating_sub(steps_before)),
            if steps_before > 0 {
                format!(" ({} in all)", report.steps)
            } else {
                String::new()
            },
            report.examples,
            super::s(report.examples),
            report.seconds,
            report.examples as f64 / report.seconds.max(1e-12),
            super::loss(last.train.mean_loss()),
            last.valid
                .map(|v| format!(", valid loss {}", super::loss(v.mean_loss())))
                .unwrap_or_default(),
        );
    }
    write_trace_and_profile(
        args,
        recorder,
        (rank, ranks),
        asked_quiet,
        cfg.train.threads.get(),
    )?;
    if let Some(interrupted) = interrupted {
        return Err(interrupted);
    }
    if !leader {
        return Ok(());
    }
    if let Some(path) = &args.save {
        make_checkpoint_dir_for(args, path)?;
        let file = cfg.data.file.as_ref();
        interrupt::writing(path, || {
            save_params(
                path,
                trainer.model().layout(),
                trainer.params(),
                file.and_then(|f| f.standardization.as_ref()),
                file.and_then(|f| f.classes.names()),
                &[("model", cfg.model.describe()), ("config", config_text)]
                    .into_iter()
                    .chain(minibatch::checkpoint::names_entry(
                        minibatch::checkpoint::FEATURES,
                        file.and_then(|f| f.train.feature_names()),
                    ))
                    .chain(fast.then(|| {
                        let how = format!(
                            "fast across {ranks} MPI ranks (bits depend on the rank count)"
                        );
                        ("reduction", how)
                    }))
                    .collect::<Vec<_>>(),
            )
        })?;
        if !quiet {
            outln!("saved parameters to {}", path.display());
        }
    }
    Ok(())
}

/// A bar over all steps of the run (rate, ETA, current loss) on stderr; hidden with
/// `--quiet` or when stderr is not a terminal.
fn progress_bar(quiet: bool, total_steps: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps, {steps_per_sec} steps/s, ETA {eta}",
        )
        .expect("static template")
        // Whole steps per second: indicatif's own {per_sec} prints four decimals.
        .with_key(
            "steps_per_sec",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    let _ = BAR.set(bar.clone());
    bar
}

/// Prints epoch lines (around the bar), moves the bar, writes checkpoints and stops the run
/// on SIGINT/SIGTERM after checkpointing.
struct TrainOutput {
    quiet: bool,
    bar: ProgressBar,
    checkpoints: Option<CheckpointPolicy>,
    steps_per_epoch: usize,
    /// Rank 0 (or the only process): the one that writes checkpoints.
    leader: bool,
    /// A checkpoint that could not be written; the run stops and reports it.
    failure: Option<minibatch::Error>,
    interrupted: Option<minibatch::Error>,
    /// The output flags a resumed run repeats (`resume_flags`).
    again: String,
    /// How to start the resumed run (`resume_program`).
    program: String,
    /// The 1-based epoch a resumed run started inside, and its step there.
    resumed_mid_epoch: Option<(usize, usize)>,
}

/// Notes on settings a resumed run changed that it may change, though the bits from the
/// checkpoint on then differ from the uninterrupted run's.
fn resume_notes(
    path: &std::path::Path,
    raw: &RawConfig,
    cfg: &minibatch::Config,
    recorded_rows: u64,
) {
    // (The checkpoint's config was read before, for the run's own settings.) A checkpoint
    // without one has nothing to compare.
    let Some(saved_raw) = checkpoint_config(path)
        .ok()
        .and_then(|text| RawConfig::from_toml(&text, path).ok())
    else {
        return;
    };
    let saved = &saved_raw.train;
    // Rows a shard takes: at most the batch (past it, one shard either way). As the
    // checkpoint records them; a file from before that, as its config gives them, by the
    // default rule the builds that wrote such files had (B / 16 within [64, 256]: a batch
    // of 32-127 rows is cut in two now). A best guess: the few builds between the two rules
    // wrote halves without the record.
    let b = cfg.train.batch_size;
    let saved_rows = match recorded_rows {
        0 => saved
            .shard_rows
            .unwrap_or(minibatch::shard::sixteenth_rows(b.get()))
            .min(b.get()),
        rows => rows as usize,
    };
    let rows = cfg.train.shard_rows.get().min(b.get());
    if saved_rows != rows {
        outln!(
            "note: shards of {rows} rows, the checkpoint's run {saved_rows}: the sums' \
             order changes, so the bits from here differ from the uninterrupted run's"
        );
    }
    // The update rule, defaults filled in (a changed one is allowed: a run may continue
    // with another learning rate; but say so). The cosine's span is compared below.
    let total = cfg.train.schedule.total_steps;
    let per_epoch = cfg.train.steps_per_epoch.get();
    let rule = |raw: &RawConfig| raw.update_rule(cfg.train.batch_size, per_epoch, total).ok();
    if let (Some((was, was_schedule)), Some((now, now_schedule))) = (rule(&saved_raw), rule(raw)) {
        let mut changed = Vec::new();
        let mut compare = |what: &str, a: String, b: String| {
            if a != b {
                changed.push(format!("{what} {a} -> {b}"));
            }
        };
        compare(
            "learning rate",
            was_schedule.base_lr.to_string(),
            now_schedule.base_lr.to_string(),
        );
        // The rest as the run header writes them (`cosine to 0 after 5 warmup steps`,
        // `momentum 0.9`), each without what is compared on its own.
        let shape = |s: &minibatch::schedule::Schedule| {
            minibatch::schedule::Schedule { base_lr: 1.0, ..*s }.describe()
        };
        compare("schedule", shape(&was_schedule), shape(&now_schedule));
        let optimizer = |o: &minibatch::optim::OptimConfig| {
            minibatch::optim::OptimConfig {
                weight_decay: 0.0,
                clip_norm: None,
                ..*o
            }
            .describe()
        };
        compare("optimizer", optimizer(&was), optimizer(&now));
        compare(
            "weight decay",
            was.weight_decay.to_string(),
            now.weight_decay.to_string(),
        );
        let clip = |c: Option<f32>| c.map_or("none".into(), |c| c.to_string());
        compare("clip_norm", clip(was.clip_norm), clip(now.clip_norm));
        if !changed.is_empty() {
            outln!(
                "note: {} (from the checkpoint's run): the bits from here differ from the \
                 uninterrupted run's",
                changed.join(", ")
            );
        }
    }
    // A cosine schedule spans the whole run: more (or fewer) epochs than the
    // checkpoint's run stretch the rest of it.
    let saved_epochs = saved.epochs.unwrap_or(minibatch::config::DEFAULT_EPOCHS);
    if let minibatch::schedule::Decay::Cosine { .. } = cfg.train.schedule.decay
        && saved_epochs != cfg.train.epochs.get()
    {
        let per_epoch = cfg.train.steps_per_epoch.get();
        outln!(
            "note: the cosine schedule now spans {} steps ({} epochs), the checkpoint's \
             run {} ({saved_epochs}): the learning rate from here differs from both \
             uninterrupted runs",
            cfg.train.schedule.total_steps,
            cfg.train.epochs,
            saved_epochs * per_epoch,
        );
    }
}

/// A hash of what this rank read, which every rank must have read alike: the config as
/// given (flags included), the data, and the file the run starts from.
fn inputs_fingerprint(
    args: &TrainArgs,
    config_text: &str,
    train: &minibatch::Dataset,
    valid: Option<&minibatch::Dataset>,
) -> Result<u64> {
    // XXH3, fixed by its specification: ranks built apart still agree. Each part is
    // marked present or absent and preceded by its length, so that no two different
    // inputs run together alike.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut part = |bytes: Option<&[u8]>| match bytes {
        Some(bytes) => {
            h.update(&[1]);
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        None => h.update(&[0]),
    };
    part(Some(config_text.as_bytes()));
    part(Some(&train.fingerprint().to_le_bytes()));
    part(
        valid
            .map(|v| v.fingerprint().to_le_bytes())
            .as_ref()
            .map(|b| &b[..]),
    );
    for path in [&args.resume, &args.init] {
        let bytes = match path {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| minibatch::Error::Read {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        part(bytes.as_deref());
    }
    Ok(h.digest())
}

/// The command that starts the resumed run: this binary's name, under `mpirun -n R` when
/// the run spans ranks.
fn resume_program(ranks: usize) -> String {
    // The name this binary was started by (`minibatch`, or a build under another name).
    let name = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "minibatch".into());
    let name = minibatch::checkpoint::shell_word(std::path::Path::new(&name));
    match ranks {
        1 => name,
        r => format!("mpirun -n {r} {name}"),
    }
}

/// The flags saying where a run's results go, as a resumed run must repeat them: the
/// checkpoint holds the config and the state, not the command line's outputs.
fn resume_flags(args: &TrainArgs) -> String {
    use minibatch::checkpoint::shell_word;
    let mut flags = String::new();
    for (flag, path) in [
        ("--save", &args.save),
        ("--checkpoint", &args.checkpoint),
        ("--trace", &args.trace),
    ] {
        if let Some(path) = path {
            flags += &format!(" {flag} {}", shell_word(path));
        }
    }
    if let Some(every) = args.checkpoint_every {
        flags += &format!(" --checkpoint-every {every}");
    }
    if args.checkpoint.is_some() && args.keep != 3 {
        flags += &format!(" --keep {}", args.keep);
    }
    if args.profile {
        flags += " --profile";
    }
    flags
}

impl Observer for TrainOutput {
    fn epoch(&mut self, report: &EpochReport) {
        if !self.quiet {
            let mut line = epoch_line(report);
            // A resumed epoch's figures are over its remaining steps only.
            if let Some((epoch, step)) = self.resumed_mid_epoch
                && epoch == report.epoch
            {
                line += &format!("  (resumed at step {step}: the steps after it)");
            }
            if report.cut_short {
                line += "  (stopped inside the epoch: its steps so far)";
            }
            self.bar.suspend(|| outln!("{line}"));
        }
    }

    fn after_step(&mut self, state: &TrainState<'_>) -> bool {
        if interrupt::requested() {
            if !self.leader {
                return true;
            }
            let policy = self
                .checkpoints
                .get_or_insert_with(CheckpointPolicy::interrupted);
            match policy.write(state) {
                Ok(path) => {
                    self.interrupted = Some(minibatch::Error::Interrupted {
                        checkpoint: path,
                        epoch: state.position.epoch + 1,
                        step: state.steps,
                        program: self.program.clone(),
                        again: self.again.clone(),
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
            "epoch {}/{} loss {}",
            p.epoch,
            p.epochs,
            super::loss(p.mean_loss)
        ));
    }
}

fn epoch_line(r: &EpochReport) -> String {
    let mut line = format!(
        "epoch {:>3}/{}  train loss {}",
        r.epoch,
        r.epochs,
        super::loss(r.train.mean_loss())
    );
    if r.is_classifier {
        line += &format!(" acc {:5.2}%", 100.0 * r.train.accuracy());
    }
    if let Some(v) = r.valid {
        line += &format!("  valid loss {}", super::loss(v.mean_loss()));
        if r.is_classifier {
            line += &format!(" acc {:5.2}%", 100.0 * v.accuracy());
        }
    }
    line += &format!("  {:>10.0} ex/s  {:.2} s", r.examples_per_sec(), r.seconds);
    line
}

/// The outputs of a run, checked before it starts rather than found unwritable after it:
/// writable, not over a file the run reads, and not one over the other. The leader saves,
/// every rank writes its own trace beside the path given.
fn check_outputs(
    args: &TrainArgs,
    raw: &RawConfig,
    (rank, ranks): (usize, usize),
    quiet: bool,
) -> Result<()> {
    // `predict -o -` means standard output; here it would be a file named `-` (or, across
    // ranks, `-.rank0.json`).
    for (flag, path) in [("--save", &args.save), ("--trace", &args.trace)] {
        if path.as_ref().is_some_and(|p| p.as_os_str() == "-") {
            return Err(minibatch::Error::config(
                flag,
                "`-` is no file here (train prints its progress on standard output); give a \
                 file, or /dev/stdout with -q",
            ));
        }
    }
    let trace = trace_path(args, rank, ranks);
    let outputs = [
        ("--save", args.save.as_ref().filter(|_| rank == 0)),
        ("--trace", trace.as_ref()),
    ];
    // The same file however spelt (`x`, `./x`, absolute, through a link).
    let resolved = |p: &Option<PathBuf>| p.as_deref().map(minibatch::checkpoint::resolved);
    if let (Some(save), Some(trace)) = (resolved(&args.save), resolved(&args.trace))
        && same_path(&save, &trace)
    {
        return Err(minibatch::Error::config(
            "--trace",
            "names the --save file; one would overwrite the other",
        ));
    }
    let d = &raw.data;
    let inputs: Vec<&std::path::Path> = [
        &args.config.config,
        &args.resume,
        &args.init,
        &d.path,
        &d.labels,
        &d.valid_path,
        &d.valid_labels,
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .collect();
    for (flag, path) in outputs {
        let Some(path) = path else {
            continue;
        };
        // The run's own lines go to standard output too.
        if !quiet && minibatch::checkpoint::is_stdout(path) {
            return Err(minibatch::Error::config(
                flag,
                format!(
                    "{} is standard output, where the run prints its progress: add -q",
                    path.display()
                ),
            ));
        }
        if let Some(dir) = &args.checkpoint {
            let example = || {
                let name = if flag == "--trace" {
                    "trace.json"
                } else {
                    "final.safetensors"
                };
                dir.join(name).display().to_string()
            };
            if same_path(path, dir) {
                return Err(minibatch::Error::config(
                    flag,
                    format!(
                        "names the --checkpoint directory; give a file, such as {}",
                        example()
                    ),
                ));
            }
            // A checkpoint's name there (the file a link leads to, too): the run would
            // write one file over the other.
            let target = minibatch::checkpoint::resolved(path);
            let checkpoint_name = target
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"));
            if checkpoint_name && same_path(directory_of(&target), dir) {
                return Err(minibatch::Error::config(
                    flag,
                    format!(
                        "is named as the run's checkpoints in {} are (step-...safetensors) \
                         and could overwrite one or be overwritten; give another name, such as \
                         {}",
                        dir.display(),
                        example()
                    ),
                ));
            }
            // A file in the checkpoint directory the run will make: new, so no input, and
            // the directory itself is checked with --checkpoint.
            if same_path(directory_of(path), dir) && !dir.exists() {
                continue;
            }
        }
        minibatch::checkpoint::check_output(flag, path, &inputs)?;
    }
    Ok(())
}

/// The directory a file path is in: `.` for a bare name (whose parent is empty).
fn directory_of(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    }
}

/// Whether two paths name the same place: the same file once both exist, else the same
/// absolute path.
fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::path::Component;
    if let (Ok(a), Ok(b)) = (a.canonicalize(), b.canonicalize()) {
        return a == b;
    }
    // Not there yet: the directory it would go in as it is on disk (a linked directory
    // resolved), then absolute forms with `.` dropped and `..` taken back lexically (`ck`,
    // `./ck/`, `/home/me/ck` and `x/../ck` alike).
    let settled = |p: &std::path::Path| -> PathBuf {
        match (directory_of(p).canonicalize(), p.file_name()) {
            (Ok(dir), Some(name)) => dir.join(name),
            _ => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
        }
    };
    let parts = |p: &std::path::Path| {
        let mut parts = Vec::new();
        for c in settled(p).components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    parts.pop();
                }
                c => parts.push(c.as_os_str().to_os_string()),
            }
        }
        parts
    };
    parts(a) == parts(b)
}

/// Makes the checkpoint directory when `output` lies in it and no checkpoint made it yet
/// (a run stopped before its first one).
fn make_checkpoint_dir_for(args: &TrainArgs, output: &std::path::Path) -> Result<()> {
    match &args.checkpoint {
        Some(dir) if same_path(directory_of(output), dir) && !dir.exists() => {
            std::fs::create_dir_all(dir).map_err(|source| minibatch::Error::Unwritable {
                path: dir.clone(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// Refuses parameters of another model (a shape that fits but another activation or head)
/// or trained on other classes than this run's data names: the same weights would mean
/// other things (class ids are positions in the sorted names, so one renamed class moves
/// the others' outputs). Files that record neither pass.
fn check_model_and_classes(
    flag: &str,
    path: &std::path::Path,
    cfg: &minibatch::Config,
) -> Result<()> {
    let now = cfg.model.describe();
    if let Some(saved) = minibatch::checkpoint::model_description(path)?
        && saved != now
    {
        return Err(minibatch::Error::config(
            "model",
            format!(
                "the parameters in {} ({flag}) are of a `{saved}` model, and this run's is \
                 `{now}`",
                path.display()
            ),
        ));
    }
    let names_now = cfg.data.file.as_ref().and_then(|f| f.classes.names());
    if let Some(saved) = minibatch::checkpoint::load_class_names(path)?
        && names_now != Some(&saved[..])
    {
        let list = |names: &[String]| names.join(", ");
        return Err(minibatch::Error::config(
            "data",
            format!(
                "the parameters in {} ({flag}) were trained on the classes [{}], and this \
                 run's labels are {}",
                path.display(),
                list(&saved),
                names_now.map_or("not those words".to_string(), |n| format!("[{}]", list(n)))
            ),
        ));
    }
    Ok(())
}

/// Refuses parameters trained on columns of other names, or in another order, than this
/// run's data file has (when both headers named them): each weight belongs to a feature.
fn check_feature_names(
    flag: &str,
    path: &std::path::Path,
    cfg: &minibatch::Config,
    data_path: Option<&std::path::Path>,
) -> Result<()> {
    let (Some(file), Some(data_path)) = (cfg.data.file.as_ref(), data_path) else {
        return Ok(());
    };
    match (
        minibatch::checkpoint::load_feature_names(path)?,
        file.train.feature_names(),
    ) {
        (Some(saved), Some(now)) if saved != now => Err(minibatch::Error::Data {
            path: data_path.to_path_buf(),
            line: 1,
            msg: minibatch::data::feature_mismatch(
                &saved,
                now,
                &format!("the data of {} ({flag})", path.display()),
            ),
        }),
        _ => Ok(()),
    }
}

/// Refuses parameters trained on standardised features for a run on raw ones, or the other
/// way round: each weight is scaled for the inputs it was trained on, so the run would
/// start from a model that no longer fits its data (the loss jumps by orders of magnitude).
fn check_standardization(
    flag: &str,
    path: &std::path::Path,
    cfg: &minibatch::Config,
) -> Result<()> {
    let saved = minibatch::checkpoint::load_standardization(path)?.is_some();
    let now = cfg
        .data
        .file
        .as_ref()
        .is_some_and(|f| f.standardization.is_some());
    if saved == now {
        return Ok(());
    }
    let (was, is) = if saved {
        ("standardised", "raw")
    } else {
        ("raw", "standardised")
    };
    Err(minibatch::Error::config(
        "data.standardize",
        format!(
            "the parameters in {} ({flag}) were trained on {was} features, and this run's \
             are {is}; set data.standardize = {saved}",
            path.display()
        ),
    ))
}

/// This rank's `--trace` file: the path given, or across ranks the rank before its
/// extension (`t.json` -> `t.rank1.json`).
fn trace_path(args: &TrainArgs, rank: usize, ranks: usize) -> Option<PathBuf> {
    let path = args.trace.as_ref()?;
    Some(if ranks > 1 {
        path.with_extension(format!(
            "rank{rank}.{}",
            path.extension().and_then(|e| e.to_str()).unwrap_or("json")
        ))
    } else {
        path.clone()
    })
}

/// Writes `--trace` and prints `--profile` from what the recorder holds: after a run that
/// ended, was interrupted or failed (the spans of what it ran are worth as much then).
fn write_trace_and_profile(
    args: &TrainArgs,
    recorder: Option<&Recorder>,
    (rank, ranks): (usize, usize),
    quiet: bool,
    threads: usize,
) -> Result<()> {
    let Some(recorder) = recorder else {
        return Ok(());
    };
    // Each rank reports its own spans, communication included.
    if let Some(path) = trace_path(args, rank, ranks) {
        make_checkpoint_dir_for(args, &path)?;
        interrupt::writing(&path, || {
            minibatch::profile::write_chrome_trace(&path, recorder, (rank, ranks))
        })?;
        if !quiet {
            outln!(
                "wrote trace to {} (open in ui.perfetto.dev)",
                path.display()
            );
        }
    }
    if args.profile {
        let title = if ranks > 1 {
            format!("Profile of rank {rank} of {ranks}:\n")
        } else {
            String::new()
        };
        // On stderr in one piece: a report, not a log line, and not the run's output.
        let report = minibatch::profile::profile_report(
            &minibatch::profile::profile(recorder, threads),
            recorder,
        );
        use std::io::Write as _;
        let _ = std::io::stderr()
            .lock()
            .write_all(format!("{title}{report}").as_bytes());
    }
    Ok(())
}

/// What a checkpoint of this run records about its steps (`RunShape`).
fn run_shape(cfg: &minibatch::Config) -> minibatch::checkpoint::RunShape {
    minibatch::checkpoint::RunShape {
        batch_size: cfg.train.batch_size.get() as u64,
        seed: cfg.seed,
        steps_per_epoch: cfg.train.steps_per_epoch.get() as u64,
        optimizer: cfg.train.optimizer.kind_name().to_string(),
        sampling: match cfg.train.sampling {
            minibatch::sampler::Sampling::Shuffle { .. } => "shuffle",
            minibatch::sampler::Sampling::Uniform => "uniform",
        }
        .to_string(),
        shard_rows: cfg.train.shard_rows.get().min(cfg.train.batch_size.get()) as u64,
    }
}

/// Refuses to resume `path` (written as `was`) as a run of another shape: its position
/// counts batches of its own size from its own seed's sampler, and its optimizer state
/// is its optimizer's.
fn check_resume_shape(
    path: &std::path::Path,
    was: &minibatch::checkpoint::RunShape,
    now: &minibatch::checkpoint::RunShape,
) -> Result<()> {
    let rows = "its position would skip or repeat rows";
    let changed = [
        (
            "train.batch_size",
            was.batch_size.to_string(),
            now.batch_size.to_string(),
            rows,
        ),
        ("seed", was.seed.to_string(), now.seed.to_string(), rows),
        (
            "train.steps_per_epoch",
            was.steps_per_epoch.to_string(),
            now.steps_per_epoch.to_string(),
            "its position would skip or repeat rows (steps per epoch follow from the data, \
             the batch size, the sampling and drop_last)",
        ),
        (
            "train.optimizer",
            was.optimizer.clone(),
            now.optimizer.clone(),
            "the optimizer's state would not carry over",
        ),
        (
            "train.sampling",
            was.sampling.clone(),
            now.sampling.clone(),
            "the steps after it would draw other rows than the run's",
        ),
    ];
    // A file written before a setting was recorded has it empty: nothing to compare.
    match changed
        .into_iter()
        .find(|(_, a, b, _)| !a.is_empty() && a != b)
    {
        None => Ok(()),
        Some((key, was_value, now_value, why)) => Err(minibatch::Error::config(
            key,
            format!(
                "{} was written with {was_value}, this run has {now_value}: {why}. Resume with \
                 the same settings, or start a new run from its parameters with --init",
                path.display()
            ),
        )),
    }
}

/// Where and how often `train` writes checkpoints, and which it keeps.
struct CheckpointPolicy {
    dir: PathBuf,
    every: Option<u64>,
    keep: usize,
    /// The checkpoints this run wrote, oldest first: the only files rotation removes. The
    /// directory may hold checkpoints up to the step the run starts from (the run it
    /// resumes, or files that merely share the name pattern); later ones are refused.
    written: VecDeque<PathBuf>,
    context: RunRecord,
}

impl CheckpointPolicy {
    /// `start`: the steps the run had taken before this process (what it resumed).
    fn new(args: &TrainArgs, context: RunRecord, start: u64) -> Result<Option<Self>> {
        let Some(dir) = &args.checkpoint else {
            if args.checkpoint_every.is_some() {
                return Err(minibatch::Error::config(
                    "--checkpoint-every",
                    "needs --checkpoint DIR",
                ));
            }
            return Ok(None);
        };
        if args.keep == 0 {
            return Err(minibatch::Error::config("--keep", "must be at least 1"));
        }
        if args.checkpoint_every == Some(0) {
            return Err(minibatch::Error::config(
                "--checkpoint-every",
                "must be at least 1",
            ));
        }
        minibatch::checkpoint::check_output_dir(dir, &[])?;
        refuse_later_checkpoints(dir, start)?;
        // Made with the first checkpoint: a run stopped before it leaves no empty directory.
        Ok(Some(CheckpointPolicy {
            dir: dir.clone(),
            every: args.checkpoint_every,
            keep: args.keep,
            written: VecDeque::new(),
            context,
        }))
    }

    /// For a Ctrl-C without --checkpoint: one file in the current directory.
    fn interrupted() -> Self {
        CheckpointPolicy {
            dir: PathBuf::from("."),
            every: None,
            keep: usize::MAX,
            written: VecDeque::new(),
            context: INTERRUPT_CONTEXT.get().cloned().unwrap_or_default(),
        }
    }

    /// Writes `step-NNNNNNNNN.safetensors` atomically and removes this run's oldest beyond
    /// `keep`; a file this run did not write is never removed.
    fn write(&mut self, state: &TrainState<'_>) -> Result<PathBuf> {
        // The step's loss was finite, but its update may have overflowed: never keep that.
        if !state.params.iter().all(|v| v.is_finite()) {
            return Err(minibatch::Error::Overflow {
                what: "the parameters",
                epoch: state.position.epoch + 1,
                step: state.steps,
            });
        }
        let mut path = self
            .dir
            .join(format!("step-{:09}.safetensors", state.steps));
        // A file of that name that this run did not write (only possible in the current
        // directory, after a Ctrl-C without --checkpoint) stays: take the next free name.
        let mut n = 1;
        while path.exists() && !self.written.contains(&path) {
            n += 1;
            path = self
                .dir
                .join(format!("step-{:09}-{n}.safetensors", state.steps));
        }
        minibatch::checkpoint::create_dir(&self.dir)?;
        interrupt::writing(&path, || save_checkpoint(&path, state, &self.context))?;
        // The same step may be written twice (an epoch's end is also the run's end).
        self.written.retain(|p| *p != path);
        self.written.push_back(path.clone());
        while self.written.len() > self.keep {
            if let Some(old) = self.written.pop_front() {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(path)
    }
}

/// The step of a file named as `CheckpointPolicy::write` names them.
fn checkpoint_step(name: &std::ffi::OsStr) -> Option<u64> {
    let digits = name
        .to_str()?
        .strip_prefix("step-")?
        .strip_suffix(".safetensors")?;
    digits.parse().ok()
}

/// Refuses a checkpoint directory holding checkpoints past `start`: this run would write
/// files of the same names over them (another run's, or the later steps of the run being
/// resumed from an earlier checkpoint), and rotation would then remove them as its own.
fn refuse_later_checkpoints(dir: &std::path::Path, start: u64) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut later: Vec<u64> = entries
        .flatten()
        .filter_map(|e| checkpoint_step(&e.file_name()))
        .filter(|&step| step > start)
        .collect();
    later.sort_unstable();
    let Some(&first) = later.first() else {
        return Ok(());
    };
    let more = match later.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    Err(minibatch::Error::config(
        "--checkpoint",
        format!(
            "{} already holds step-{first:09}.safetensors{more}, which this run would \
             overwrite; give an empty directory, or move those files",
            dir.display()
        ),
    ))
}

/// Config and layout for a checkpoint written on Ctrl-C when no --checkpoint was given.
static INTERRUPT_CONTEXT: OnceLock<RunRecord> = OnceLock::new();

/// SIGINT and SIGTERM set a flag that the training loop checks after every step, so the
/// current step finishes and a checkpoint is written before the process exits with 130. A
/// second one, half a second or more after the first, exits at once, without a checkpoint:
/// a run blocked outside the loop (reading a FIFO no one writes to) could otherwise be
/// stopped only with SIGKILL. (One Ctrl-C can arrive twice within milliseconds: from the
/// terminal and forwarded by `mpirun`; that is still one.) While a checkpoint or the saved
/// model is being written, the second waits for the write to end.
mod interrupt {
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

    /// When the first signal came, in milliseconds of the monotonic clock (never 0 once
    /// set): 0 while no interrupt was asked for.
    static FIRST_MS: AtomicU64 = AtomicU64::new(0);
    /// The temporary file of the write in progress (a C string kept alive by `writing`),
    /// null when nothing is being written: a second interrupt waits for the write, a third
    /// removes it.
    static TEMP: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
    /// A second interrupt came while writing.
    static AGAIN: AtomicBool = AtomicBool::new(false);

    const AGAIN_AFTER_MS: u64 = 500;

    fn now_ms() -> u64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec; clock_gettime is async-signal-safe.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
    }

    extern "C" fn on_signal(_: libc::c_int) {
        // Only atomics, clock_gettime, write(2) and _exit(2): async-signal-safe.
        let now = now_ms().max(1);
        // The first signal's time is the request: a second signal on another thread sees
        // both or neither.
        if FIRST_MS
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
        if now.saturating_sub(FIRST_MS.load(Ordering::SeqCst)) < AGAIN_AFTER_MS {
            return;
        }
        // While a file is written, the second waits for it; a third does not (the write
        // may be blocked: a FIFO with no reader, a hung mount).
        let temp = TEMP.load(Ordering::SeqCst);
        if !temp.is_null() && !AGAIN.swap(true, Ordering::SeqCst) {
            let msg = b"\nminibatch: finishing the file being written (interrupt again to \
                        leave it)\n";
            // SAFETY: a valid buffer; write is async-signal-safe.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            return;
        }
        let msg: &[u8] = if !temp.is_null() {
            b"\nminibatch: interrupted again; exiting, the file being written left unwritten\n"
        } else {
            b"\nminibatch: interrupted again; exiting without a checkpoint\n"
        };
        // SAFETY: `temp` is null or a C string that `writing` keeps alive while it is set;
        // unlink, write and _exit are async-signal-safe.
        unsafe {
            if !temp.is_null() {
                libc::unlink(temp);
            }
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(130);
        }
    }

    pub fn install() {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only uses atomics, or writes a message, removes the write's
        // temporary file and exits (all async-signal-safe).
        unsafe {
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        }
    }

    /// Writes `path` with `write` (a checkpoint or the saved model), a second interrupt
    /// held until it is done (exiting in the middle left a partial temporary file beside
    /// the checkpoints); then exits if one came, saying what was written.
    pub fn writing<T, E>(
        path: &std::path::Path,
        write: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        use std::os::unix::ffi::OsStrExt;
        // (A path holds no NUL byte; were it to, the empty name removes nothing.)
        let temp = std::ffi::CString::new(
            minibatch::checkpoint::temp_path(&minibatch::checkpoint::resolved(path))
                .as_os_str()
                .as_bytes(),
        )
        .unwrap_or_default();
        TEMP.store(temp.as_ptr().cast_mut(), Ordering::SeqCst);
        let result = write();
        TEMP.store(std::ptr::null_mut(), Ordering::SeqCst);
        drop(temp);
        if AGAIN.load(Ordering::SeqCst) {
            match &result {
                Ok(_) => errln!(
                    "minibatch: interrupted again; exiting with {} written",
                    path.display()
                ),
                Err(_) => errln!(
                    "minibatch: interrupted again; exiting ({} not written)",
                    path.display()
                ),
            }
            std::process::exit(130);
        }
        result
    }

    pub fn requested() -> bool {
        FIRST_MS.load(Ordering::Relaxed) != 0
    }
}
