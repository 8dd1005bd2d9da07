//! `minibatch bench`, `scale` and `tune`: run the library's measurements and print their
//! tables, CSV and SVG.

use minibatch::profile::Recorder;
use minibatch::{RawConfig, Result};

use crate::cli::{BenchArgs, ScaleArgs, TuneArgs};

pub fn bench(args: &BenchArgs, quiet: bool) -> Result<()> {
    if args.workload.len() > 1 && args.workload.iter().any(|w| w == "all") {
        return Err(minibatch::Error::config(
            "--workload",
            "`all` takes every workload; give it alone",
        ));
    }
    let workloads = if args.workload.iter().any(|w| w == "all") {
        minibatch::bench::WORKLOADS
            .iter()
            .map(|(w, _, _)| w.to_string())
            .collect()
    } else {
        args.workload.clone()
    };
    let threads = if args.threads.is_empty() {
        let mut t = vec![1, cores_up_to_max()];
        t.dedup();
        t
    } else {
        check_thread_counts(&args.threads)?;
        args.threads.clone()
    };
    let thread_counts = threads
        .iter()
        .filter_map(|&t| std::num::NonZeroUsize::new(t))
        .collect();
    check_batch_sizes(&args.batch_sizes)?;
    check_counts(
        "--shard-rows",
        ("shard sizes", "shard size"),
        &args.shard_rows,
        usize::MAX,
    )?;
    if let Some(w) = args
        .workload
        .iter()
        .enumerate()
        .find_map(|(i, w)| args.workload[..i].contains(w).then_some(w))
    {
        return Err(minibatch::Error::config(
            "--workload",
            format!("lists {w} twice"),
        ));
    }
    oversubscribed(&threads, quiet);
    let plan = minibatch::bench::BenchPlan {
        workloads,
        batch_sizes: args.batch_sizes.clone(),
        threads: thread_counts,
        shard_rows: args.shard_rows.clone(),
        n: args.n,
        epochs: std::num::NonZeroUsize::new(args.epochs)
            .ok_or_else(|| minibatch::Error::config("--epochs", "must be at least 1"))?,
        rounds: std::num::NonZeroUsize::new(args.rounds)
            .ok_or_else(|| minibatch::Error::config("--rounds", "must be at least 1"))?,
    };
    let report = minibatch::bench::run(&plan, |msg| {
        if !quiet {
            errln!("bench: {msg}");
        }
    })?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data serialises")
        );
        // Beside the JSON, not in it: what to make of the figures is for whoever reads them.
        if !quiet {
            for note in row_notes(&report, args)
                .into_iter()
                .chain(prediction_notes(&report))
            {
                errln!("bench: note: {note}");
            }
        }
        return Ok(());
    }
    let limits = &report.limits;
    outln!("kernel: {}", limits.isa);
    for ((t, peak), (_, bw)) in limits.peak_gflops.iter().zip(&limits.copy_gb_per_sec) {
        outln!("{t} thread(s): peak FMA {peak:.1} GFLOP/s, copy bandwidth {bw:.1} GB/s");
    }
    outln!(
        "\n| workload | B | threads | shard rows | examples/s | GFLOP/s | of peak FMA | feature GB/s | of bandwidth | reduce share | speedup |"
    );
    outln!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &report.rows {
        outln!(
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
    if !quiet {
        for note in row_notes(&report, args) {
            outln!("\nnote: {note}");
        }
    }
    let predictions: Vec<_> = report
        .rows
        .iter()
        .filter_map(|r| r.serial_fraction.map(|e| (r, e)))
        .collect();
    if !predictions.is_empty() {
        outln!(
            "\nScaling predicted by Amdahl's law from the measured (Karp-Flatt) serial fraction:"
        );
        outln!(
            "| workload | B | threads | shard rows | serial fraction | 16 threads | 64 threads |"
        );
        outln!("|---|---|---|---|---|---|---|");
        for (r, e) in &predictions {
            outln!(
                "| {} | {} | {} | {} | {:.3} | {:.1}x | {:.1}x |",
                r.workload,
                r.batch_size,
                r.threads,
                r.shard_rows,
                e,
                r.predicted_speedup_16.unwrap_or(f64::NAN),
                r.predicted_speedup_64.unwrap_or(f64::NAN)
            );
        }
        if !quiet {
            for note in prediction_notes(&report) {
                outln!("note: {note}");
            }
        }
    }
    Ok(())
}

/// What a reader should know about the Amdahl predictions (the rows' serial fractions).
fn prediction_notes(report: &minibatch::bench::BenchReport) -> Vec<String> {
    let predictions: Vec<_> = report
        .rows
        .iter()
        .filter_map(|r| r.serial_fraction.map(|e| (r, e)))
        .collect();
    let mut notes = Vec::new();
    if predictions.iter().any(|(r, _)| r.shards() < 64) {
        notes.push(
            "a step runs at most its batch's shards at once (ceil(B / shard rows)), so the \
             fraction counts no more threads than that, and a prediction stops growing there"
                .to_string(),
        );
    }
    if predictions.iter().any(|(_, e)| !(0.0..=1.0).contains(e)) {
        notes.push(
            "a serial fraction above 1 (more threads ran slower) predicts no gain, one below 0 \
             (faster than linear, as a second core's cache can give) a linear one"
                .to_string(),
        );
    }
    notes
}

/// What a reader should know about the rows' figures: ratios past 100%, and rows of several
/// shards that ran markedly slower on more threads than on one (with the command that
/// measures such a row again).
fn row_notes(report: &minibatch::bench::BenchReport, args: &BenchArgs) -> Vec<String> {
    let mut notes = Vec::new();
    if report.rows.iter().any(|r| r.peak_fraction > 1.0) {
        notes.push(
            "rows past 100% of the peak FMA rate ran while the machine was quieter than in \
             both peak measurements (before and after the runs); rerun on an idle machine for \
             a fair ratio"
                .to_string(),
        );
    }
    let slower: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.ran_slower_than_on_one_thread())
        .map(|r| {
            let (w, b, rows, t) = (&r.workload, r.batch_size, r.shard_rows, r.threads);
            let mut rerun = format!("minibatch bench -w {w} -b {b} -t 1,{t} --shard-rows {rows}");
            if let Some(n) = args.n {
                rerun += &format!(" --n {n}");
            }
            if args.epochs != 3 {
                rerun += &format!(" --epochs {}", args.epochs);
            }
            rerun += &format!(" --rounds {}", args.rounds.max(3));
            let speedup = r.speedup.unwrap_or_default();
            format!(
                "\n  {w} B = {b} in shards of {rows} rows on {t} threads: {speedup:.2}x (rerun: \
                 {rerun})"
            )
        })
        .collect();
    if !slower.is_empty() {
        notes.push(format!(
            "these rows ran more than 10% slower on more threads than on one, which a quiet \
             machine does not do:{}\nWhat can cause it: other processes on the cores, more \
             threads than free cores, or, on a virtual machine, a host that for a while places \
             the vCPUs so that handing gradient rows and parameters between threads costs \
             several times more (such stretches have lasted from seconds to a dozen runs; \
             `--rounds` spreads a row's measurements past them)",
            slower.concat()
        ));
    }
    if report.rows.iter().any(|r| r.bandwidth_fraction > 1.0) {
        notes.push(
            "rows past 100% of the copy bandwidth read a data set the caches hold; the ratio \
             measures memory only for a set much larger than the caches (W2's default n)"
                .to_string(),
        );
    }
    notes
}

pub fn scale(args: &ScaleArgs, quiet: bool, recorder: &Recorder) -> Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    raw.train.epochs = Some(args.epochs);
    raw.mark_overridden("train.epochs", "--epochs");
    let threads = if args.threads.is_empty() {
        let cores = cores_up_to_max();
        let mut t: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2))
            .take_while(|&t| t < cores)
            .collect();
        t.push(cores);
        t
    } else {
        check_thread_counts(&args.threads)?;
        args.threads.clone()
    };
    // Speedup, efficiency and the serial fraction are over the 1-thread run.
    let mut sorted = threads.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if threads.first() != Some(&1) || sorted != threads {
        return Err(minibatch::Error::config(
            "--threads",
            format!(
                "must start with 1 (the baseline of speedup and efficiency) and rise without repeats, got {}",
                threads
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
    }
    check_batch_sizes(&args.batch_sizes)?;
    minibatch::checkpoint::check_output_dir(&args.out, &minibatch::scale::OUTPUT_FILES)?;
    oversubscribed(&threads, quiet);
    let rows = minibatch::scale::run(&raw, &threads, &args.batch_sizes, recorder, |msg| {
        if !quiet {
            errln!("scale: {msg}");
        }
    })?;
    minibatch::scale::write_outputs(&args.out, &rows)?;
    outln!(
        "(runs profiled as --profile: every span recorded, which slows steps of a few \
         microseconds; `bench` measures speed without)\n"
    );
    outln!(
        "| B | threads | examples/s | speedup | efficiency | serial fraction | prepare | shards | reduce | update | workers busy |"
    );
    outln!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        outln!(
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
    for (b, e, s16, s64, shards) in minibatch::scale::predictions(&rows) {
        let slower = if e > 1.0 {
            " (more threads ran slower than one: no gain predicted)"
        } else if e < 0.0 {
            " (faster than linear: a linear gain predicted, up to its shards)"
        } else {
            ""
        };
        let capped = if shards < 64 {
            format!(
                " (its {shards} shard{} are the most that run at once)",
                super::s(shards)
            )
        } else {
            String::new()
        };
        outln!(
            "B = {b}: serial fraction {e:.3}{slower}; Amdahl's law predicts {s16:.1}x on 16 cores, {s64:.1}x on 64{capped}"
        );
    }
    if !quiet {
        outln!(
            "wrote {} and {}",
            args.out.join("scale.csv").display(),
            args.out.join("scale.svg").display()
        );
    }
    Ok(())
}

pub fn tune(args: &TuneArgs, quiet: bool) -> Result<()> {
    let raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(minibatch::Error::config(
            "--seconds",
            format!(
                "must be a positive number of seconds, at most 3600 (an hour a \
                 measurement), got {}",
                args.seconds
            ),
        ));
    }
    if args.budget == Some(0) {
        return Err(minibatch::Error::config(
            "--budget",
            "must be at least 1 example",
        ));
    }
    check_batch_sizes(&args.batch_sizes)?;
    check_thread_counts(&args.threads)?;
    if let Some(t) = args.target_loss
        && !(t.is_finite() && t > 0.0)
    {
        return Err(minibatch::Error::config(
            "--target-loss",
            format!("must be a finite loss > 0, got {t}"),
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
    minibatch::checkpoint::check_output_dir(&args.out, &minibatch::tune::OUTPUT_FILES)?;
    oversubscribed(&args.threads, quiet);
    let report = minibatch::tune::run(&raw, &plan, |msg| {
        if !quiet {
            errln!("tune: {msg}");
        }
    })?;
    minibatch::tune::write_outputs(&args.out, &report)?;
    outln!(
        "gradient noise scale while training B = {} (in shards of {} row{}):",
        report.base_batch_size,
        report.noise_shard_rows,
        super::s(report.noise_shard_rows)
    );
    for (epoch, loss, b_noise) in &report.noise_history {
        match b_noise {
            Some(b_noise) => outln!("  epoch {epoch}: train loss {loss:.4}, B_noise {b_noise:.1}"),
            None => outln!(
                "  epoch {epoch}: train loss {loss:.4}, B_noise not estimated (no step of the \
                 epoch measured it, or the smoothed |G|^2 or tr(Sigma) was not above zero)"
            ),
        }
    }
    if report.noise_history.last().map(|h| h.0) != Some(report.b_noise_epoch) {
        outln!(
            "  (the figures below use epoch {}'s B_noise, the last estimated)",
            report.b_noise_epoch
        );
    }
    outln!(
        "(the estimator added {:.1}% to the step time at B = {})\n",
        100.0 * report.estimator_overhead,
        report.base_batch_size
    );
    outln!(
        "| B | threads | examples/s | steps/s | predicted time | lr | steps to target | seconds to target | train loss | valid loss | B > 2 B_noise |"
    );
    outln!("|---|---|---|---|---|---|---|---|---|---|---|");
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
        outln!(
            "| {} | {} | {:.0} | {:.1} | {:.2}x | {} | {} | {} | {} | {} | {} |",
            r.batch_size,
            r.threads,
            r.examples_per_sec,
            r.steps_per_sec,
            r.predicted_time,
            minibatch::tune::rate(r.lr),
            steps,
            match (r.seconds_to_target, r.reached_target) {
                (Some(s), Some(false)) => format!("> {}", minibatch::tune::seconds(s)),
                (Some(s), _) => minibatch::tune::seconds(s),
                (None, _) => "-".into(),
            },
            opt(r.final_train_loss, 4),
            opt(r.valid_loss, 4),
            if r.above_twice_noise_scale { "yes" } else { "" },
        );
    }
    if let Some((s_min, e_min)) = report.tradeoff {
        outln!(
            "\nfitted S = S_min (1 + B_crit / B): S_min = {s_min:.0} steps, E_min = {e_min:.0} examples, B_crit = {:.0}",
            e_min / s_min
        );
    }
    // Part of the result, even under -q: the recommendation then rests on the prediction.
    if let Some(missed) = &report.missed_target {
        outln!("\ntarget not reached: {missed}");
    }
    outln!("\nrecommended: {}", report.reason);
    outln!(
        "learning rate at B = {}: {} (from {} at B = {}, scaled by {}){}",
        report.recommended_batch_size,
        minibatch::tune::rate(report.suggested_lr),
        minibatch::tune::rate(report.base_lr),
        report.base_batch_size,
        report.lr_rule.formula(),
        if report.suggest_warmup {
            "; more than 2x the reference: warm up to it"
        } else {
            ""
        }
    );
    if !quiet && report.recommended_batch_size as f64 > 2.0 * report.b_noise {
        outln!(
            "note: B > 2 B_noise, the large-batch regime where minima tend to be sharp and generalise worse; compare the validation loss column"
        );
    }
    if !quiet {
        outln!(
            "wrote {} and {}",
            args.out.join("tune.csv").display(),
            args.out.join("tune.svg").display()
        );
    }
    Ok(())
}

/// Says when a thread count is above the cores this process may use: such threads share
/// cores, and their figures measure the sharing.
fn oversubscribed(threads: &[usize], quiet: bool) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(&t) = threads.iter().filter(|&&t| t > cores).max()
        && !quiet
    {
        errln!(
            "note: {t} threads on {cores} core{}: threads beyond the cores share them, so \
             those rows measure the sharing, not more hardware",
            if cores == 1 { "" } else { "s" }
        );
    }
}

/// The machine's cores, at most `MAX_THREADS`: the default top of a thread sweep.
fn cores_up_to_max() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(minibatch::config::MAX_THREADS)
}

/// `--threads` of bench, scale and tune: each from 1 to `MAX_THREADS` (as `train.threads`),
/// none twice.
fn check_thread_counts(threads: &[usize]) -> Result<()> {
    let max = minibatch::config::MAX_THREADS;
    check_counts("--threads", ("thread counts", "thread count"), threads, max)
}

/// `--batch-sizes` of bench, scale and tune: each at least 1, none twice (a repeat would
/// only run its rows twice).
fn check_batch_sizes(batch_sizes: &[usize]) -> Result<()> {
    check_counts(
        "--batch-sizes",
        ("batch sizes", "batch size"),
        batch_sizes,
        usize::MAX,
    )
}

/// A flag's list of counts: each from 1 to `max`, none twice (`what`: plural, singular).
fn check_counts(flag: &str, what: (&str, &str), values: &[usize], max: usize) -> Result<()> {
    if let Some(&v) = values.iter().find(|&&v| v == 0 || v > max) {
        let range = if max == usize::MAX {
            "at least 1".to_string()
        } else {
            format!("from 1 to {max}")
        };
        return Err(minibatch::Error::config(
            flag,
            format!("{} must be {range}, got {v}", what.0),
        ));
    }
    let mut unique = values.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != values.len() {
        return Err(minibatch::Error::config(
            flag,
            format!("lists a {} twice", what.1),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use minibatch::bench::{BenchReport, BenchRow, MachineLimits};

    fn bench_args(args: &[&str]) -> BenchArgs {
        let cli = crate::cli::Cli::try_parse_from([&["minibatch", "bench"][..], args].concat())
            .expect("valid bench arguments");
        match cli.command {
            crate::cli::Command::Bench(args) => args,
            _ => unreachable!("a bench command"),
        }
    }

    fn row(batch_size: usize, threads: usize, shard_rows: usize, speedup: f64) -> BenchRow {
        BenchRow {
            workload: "w2".into(),
            batch_size,
            threads,
            shard_rows,
            speedup: Some(speedup),
            ..BenchRow::default()
        }
    }

    /// The slower rows are named one per line, each with a command that parses and measures
    /// that row again on the same data and epochs.
    #[test]
    fn the_slower_rows_note_names_each_row_with_a_command_that_reruns_it() {
        let args = bench_args(&["-w", "w2", "--n", "2000", "--epochs", "2", "--rounds", "5"]);
        let report = BenchReport {
            limits: MachineLimits {
                isa: "Avx512".into(),
                peak_gflops: vec![(1, 100.0), (2, 200.0)],
                copy_gb_per_sec: vec![(1, 10.0), (2, 20.0)],
            },
            rows: vec![
                row(256, 2, 64, 0.5),
                row(4096, 2, 256, 0.95),
                row(64, 2, 64, 0.4),
            ],
        };
        let notes = row_notes(&report, &args);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let lines: Vec<&str> = notes[0].lines().collect();
        assert!(lines[0].contains("more than 10% slower"), "{lines:?}");
        // Only the row of several shards below 0.9x: not 0.95x, not one shard.
        let named: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("  "))
            .copied()
            .collect();
        assert_eq!(named.len(), 1, "{lines:?}");
        assert!(named[0].contains("w2 B = 256 in shards of 64 rows on 2 threads: 0.50x"));
        let rerun = named[0]
            .split("rerun: ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')');
        let again = bench_args(&rerun.split(' ').skip(2).collect::<Vec<_>>());
        assert_eq!(
            (
                again.workload,
                again.batch_sizes,
                again.threads,
                again.shard_rows
            ),
            (vec!["w2".to_string()], vec![256], vec![1, 2], vec![64])
        );
        assert_eq!((again.n, again.epochs, again.rounds), (Some(2000), 2, 5));
    }
}
