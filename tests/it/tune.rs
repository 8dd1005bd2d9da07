//! `minibatch tune` end to end on a tiny config: it writes its CSV, and its recommendation
//! is the minimum of its own table (predicted time, or measured time to target when every
//! candidate reached it).

use std::process::Command;

use crate::common::temp_dir;

const TINY: &str = "seed = 3\n[data]\nsynthetic = \"teacher\"\nn = 3000\nd = 20\nclasses = 3\nvalid_fraction = 0.1\n\
[model]\nhidden = [16]\n[train]\nepochs = 2\nbatch_size = 32\nlr = 0.1\nthreads = 2\n";

/// Runs tune on TINY with `extra` flags; returns stdout and the CSV rows as maps.
fn tune(name: &str, extra: &[&str]) -> (String, Vec<std::collections::HashMap<String, String>>) {
    tune_config(name, TINY, extra)
}

/// `tune` on another config.
fn tune_config(
    name: &str,
    config_text: &str,
    extra: &[&str],
) -> (String, Vec<std::collections::HashMap<String, String>>) {
    let dir = temp_dir(name);
    let config = dir.join("c.toml");
    std::fs::write(&config, config_text).unwrap();
    let out_dir = dir.join("out");
    let mut args = vec![
        "tune",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(out_dir.join("tune.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    assert_eq!(header.join(","), minibatch::tune::CSV_HEADER);
    let rows = lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect();
    let rows: Vec<std::collections::HashMap<String, String>> = rows;
    // One point per batch size (at its fastest thread count).
    let sizes = rows
        .iter()
        .map(|r| &r["batch_size"])
        .collect::<std::collections::HashSet<_>>()
        .len();
    let svg = std::fs::read_to_string(out_dir.join("tune.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("B_noise"));
    // Each series has an axis with labelled values (examples/s on the left, time on the
    // right; one candidate's value alone, in the middle), and the legend stays above every
    // point.
    let attr = |line: &str, name: &str| -> f64 {
        let at = line.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        line[at..].split('"').next().unwrap().parse().unwrap()
    };
    for color in ["#1f77b4", "#d62728"] {
        let ticks = svg
            .lines()
            .filter(|l| l.contains("<text") && l.contains(&format!("fill=\"{color}\"")))
            .filter(|l| l.contains("text-anchor"))
            .count();
        assert!(
            ticks >= sizes.min(2),
            "{color}: {ticks} axis labels in {svg}"
        );
    }
    let lowest_legend = svg
        .lines()
        .filter(|l| l.contains("<text") && !l.contains("text-anchor"))
        .map(|l| attr(l, "y"))
        .fold(0.0, f64::max);
    let highest_point = svg
        .lines()
        .filter(|l| l.starts_with("<circle"))
        .map(|l| attr(l, "cy"))
        .fold(f64::INFINITY, f64::min);
    assert!(
        lowest_legend < highest_point,
        "legend over the points: {svg}"
    );
    if sizes == 1 {
        let middle = svg
            .lines()
            .find(|l| l.starts_with("<circle"))
            .map(|l| (attr(l, "cx"), attr(l, "cy")))
            .unwrap();
        assert!((middle.0 - 340.0).abs() < 1.0, "{svg}");
    }
    (String::from_utf8_lossy(&out.stdout).into_owned(), rows)
}

fn recommended(stdout: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("recommended: B = "))
        .expect("a recommendation");
    line["recommended: B = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn argmin(rows: &[std::collections::HashMap<String, String>], column: &str) -> usize {
    rows.iter()
        .min_by(|a, b| {
            a[column]
                .parse::<f64>()
                .unwrap()
                .total_cmp(&b[column].parse::<f64>().unwrap())
        })
        .unwrap()["batch_size"]
        .parse()
        .unwrap()
}

#[test]
fn tune_recommends_the_minimum_of_its_predicted_times() {
    let (stdout, rows) = tune(
        "tune-predicted",
        &["--batch-sizes", "8,32,128", "--seconds", "0.05"],
    );
    assert_eq!(rows.len(), 3);
    let b_noise: f64 = rows[0]["b_noise"].parse().unwrap();
    assert!(b_noise > 0.0 && b_noise.is_finite());
    let times: Vec<f64> = rows
        .iter()
        .map(|r| r["predicted_time"].parse().unwrap())
        .collect();
    assert!(
        times.iter().all(|&t| t >= 1.0 - 1e-9) && times.iter().any(|&t| (t - 1.0).abs() < 1e-9)
    );
    assert_eq!(recommended(&stdout), argmin(&rows, "predicted_time"));
    assert!(stdout.contains("B_noise"));
}

#[test]
fn tune_with_a_target_reports_steps_and_validation_loss_per_batch_size() {
    let (stdout, rows) = tune(
        "tune-target",
        &[
            "--batch-sizes",
            "16,64",
            "--seconds",
            "0.05",
            "--target-loss",
            "0.9",
            "--budget",
            "20000",
        ],
    );
    for r in &rows {
        assert!(!r["steps_to_target"].is_empty() && !r["valid_loss"].is_empty());
        let steps: u64 = r["steps_to_target"].parse().unwrap();
        let b: u64 = r["batch_size"].parse().unwrap();
        assert_eq!(
            r["examples_to_target"].parse::<u64>().unwrap(),
            examples_in(steps, b, 2700)
        );
    }
    let all_reached = rows.iter().all(|r| r["reached_target"] == "true");
    let column = if all_reached {
        "seconds_to_target"
    } else {
        "predicted_time"
    };
    assert_eq!(recommended(&stdout), argmin(&rows, column));
}

/// A target no candidate reaches within its budget: the table marks the steps and seconds
/// as lower bounds, and the recommendation says why it falls back on the prediction.
#[test]
fn an_unreached_target_is_shown_as_a_bound_and_said() {
    let (stdout, rows) = tune(
        "tune-unreached",
        &[
            "--batch-sizes",
            "16,64",
            "--seconds",
            "0.05",
            "--target-loss",
            "0.000001",
            "--budget",
            "2000",
        ],
    );
    assert!(rows.iter().all(|r| r["reached_target"] == "false"));
    let table: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| 16 ") || l.starts_with("| 64 "))
        .collect();
    assert_eq!(table.len(), 2, "{stdout}");
    for line in table {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(
            cells[7].starts_with("> ") && cells[8].starts_with("> "),
            "{line}"
        );
    }
    assert!(
        stdout.contains(
            "2 of 2 candidates did not reach loss 0.000001 within the budget of 2000 examples"
        ),
        "{stdout}"
    );
    assert_eq!(recommended(&stdout), argmin(&rows, "predicted_time"));
}

/// The rows of the first `steps` batches of `b` over epochs of `n` rows whose last batch
/// is short.
fn examples_in(steps: u64, b: u64, n: u64) -> u64 {
    let per_epoch = n.div_ceil(b);
    steps / per_epoch * n + steps % per_epoch * b
}

/// The budget and the examples to target count the rows the steps took: 2,700 training
/// rows in batches of 1,000 are 1,000 + 1,000 + 700 an epoch, so a budget of 3,000 takes a
/// fourth step (3,700 rows), where counting steps x B stopped at 2,700 and reported 3,000.
#[test]
fn examples_count_the_short_last_batch_of_an_epoch() {
    let (_, rows) = tune(
        "tune-short-batch",
        &[
            "--batch-sizes",
            "1000",
            "--seconds",
            "0.05",
            "--budget",
            "3000",
        ],
    );
    assert_eq!(rows[0]["steps_to_target"], "4", "{rows:?}");
    assert_eq!(rows[0]["examples_to_target"], "3700", "{rows:?}");
    assert_eq!(examples_in(4, 1000, 2700), 3700);
}

/// A budget is spent whole with drop_last too: 2,700 training rows in batches of 64 make
/// 42 steps an epoch, not 43, so a budget of 43 steps needs a second epoch.
#[test]
fn a_budget_is_spent_whole_when_epochs_drop_their_last_batch() {
    let config = TINY.replace("threads = 2\n", "threads = 2\ndrop_last = true\n");
    let (_, rows) = tune_config(
        "tune-drop-last",
        &config,
        &[
            "--batch-sizes",
            "64,128",
            "--seconds",
            "0.05",
            "--budget",
            "2752",
        ],
    );
    // 43 steps of 64; 22 of 128 (21 an epoch).
    let steps: Vec<&str> = rows.iter().map(|r| r["steps_to_target"].as_str()).collect();
    assert_eq!(steps, ["43", "22"], "{rows:?}");
}

#[test]
fn the_recommended_learning_rate_follows_the_rule_asked_for() {
    let (stdout, rows) = tune(
        "tune-lr-rule",
        &[
            "--batch-sizes",
            "8,32,128",
            "--seconds",
            "0.05",
            "--lr-rule",
            "linear",
        ],
    );
    let b = recommended(&stdout);
    let row = rows
        .iter()
        .find(|r| r["batch_size"] == b.to_string())
        .unwrap();
    // Linear: lr 0.1 at the config's B = 32, times B / 32.
    let lr: f64 = row["lr"].parse().unwrap();
    assert!((lr - 0.1 * b as f64 / 32.0).abs() < 1e-6, "{lr} at B = {b}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("learning rate at B"))
        .unwrap();
    assert!(
        line.contains(&format!(": {} ", minibatch::tune::rate(lr)))
            && line.contains("scaled by B1/B0)"),
        "{line}"
    );
}

/// Every epoch of the noise-scale run is listed, those whose estimate came out not positive
/// said so, and the epoch whose B_noise the table uses is named when it is not the last.
/// (With this seed, epochs 7 and 8 have none: the gradient is small against its noise.)
#[test]
fn every_epoch_of_the_noise_estimate_is_listed() {
    let config = TINY.replace("epochs = 2\n", "epochs = 8\n");
    let (stdout, _) = tune_config(
        "tune-noise-epochs",
        &config,
        &["--batch-sizes", "32", "--seconds", "0.02"],
    );
    let epochs: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("epoch "))
        .collect();
    assert_eq!(epochs.len(), 8, "{stdout}");
    let last_estimated = epochs
        .iter()
        .rposition(|l| !l.contains("not estimated"))
        .unwrap()
        + 1;
    assert!(last_estimated < 8, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "use epoch {last_estimated}'s B_noise, the last estimated"
        )),
        "{stdout}"
    );
}

/// The noise run measures in shards of B/8 rows whatever the config's shards: its divisor
/// 1/b - 1/B is what conditions the estimate (with b = 56 of B = 64 it came out a quarter
/// of the equal-shards figure, or not at all), and its rows only measure.
#[test]
fn the_noise_estimate_uses_eighths_of_the_batch_whatever_the_configs_shards() {
    let base = TINY.replace("batch_size = 32\n", "batch_size = 64\n");
    let noise_lines = |name: &str, config: &str| -> Vec<String> {
        let (stdout, _) = tune_config(name, config, &["--batch-sizes", "64", "--seconds", "0.02"]);
        assert!(
            stdout.contains("gradient noise scale while training B = 64 (in shards of 8 rows):"),
            "{stdout}"
        );
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("epoch "))
            .map(String::from)
            .collect()
    };
    let default = noise_lines("tune-noise-default", &base);
    assert_eq!(default.len(), 2);
    for rows in ["56", "32", "64"] {
        let config = base.replace(
            "threads = 2\n",
            &format!("threads = 2\nshard_rows = {rows}\n"),
        );
        assert_eq!(
            noise_lines(&format!("tune-noise-{rows}"), &config),
            default,
            "shard_rows {rows}"
        );
    }
}

/// B = 1 has no shards to compare: refused before the data is read or a step trained.
#[test]
fn a_batch_of_one_row_is_refused_before_training() {
    let dir = temp_dir("tune-b1");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        TINY.replace("batch_size = 32\n", "batch_size = 1\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["tune", "-c", config.to_str().unwrap(), "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("train.batch_size"), "{stderr}");
    assert!(
        stderr.contains("too small to estimate the noise scale"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("estimating the gradient noise scale"),
        "{stderr}"
    );
    assert!(!dir.join("out").exists());
}

/// With several thread counts the plot draws each batch size at its fastest, and says so.
#[test]
fn the_plot_says_which_thread_count_it_draws() {
    let (_, rows) = tune(
        "tune-threads-plot",
        &[
            "--batch-sizes",
            "32",
            "--seconds",
            "0.02",
            "--threads",
            "1,2",
        ],
    );
    assert_eq!(rows.len(), 2);
    let svg =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tune-threads-plot/out/tune.svg");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.contains("each B at its fastest thread count"), "{svg}");
}
