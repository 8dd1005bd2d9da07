//! Seeing where the time goes: the Chrome trace is valid trace-event JSON with the loop's
//! spans nested and one track per worker; the profile's phases add up to the step time;
//! `scale` writes the CSV its columns promise, with Karp-Flatt values that follow from the
//! measured speedups.

use std::process::Command;

use serde_json::Value;

use crate::common::temp_dir;

const SMALL_MLP: &str = "seed = 1\n[data]\nsynthetic = \"teacher\"\nn = 4000\nd = 64\nclasses = 4\n\
[model]\nhidden = [64]\n[train]\nepochs = 2\nbatch_size = 256\nshard_rows = 64\nthreads = 2\nlr = 0.05\n";

fn minibatch(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(args)
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn trace_is_chrome_json_with_nested_spans_and_a_track_per_worker() {
    let dir = temp_dir("profile-trace");
    let config = dir.join("c.toml");
    std::fs::write(&config, SMALL_MLP).unwrap();
    let trace = dir.join("trace.json");
    minibatch(&[
        "train",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ]);
    let json: Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).expect("valid JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents array");

    let thread_names: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            (
                e["tid"].as_u64().unwrap(),
                e["args"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let spans: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    for name in [
        "run", "epoch", "sample", "step", "prepare", "shards", "shard", "fwd_bwd", "gather",
        "reduce", "update",
    ] {
        assert!(spans.iter().any(|e| e["name"] == name), "no `{name}` span");
    }
    for e in &spans {
        assert!(e["ts"].is_number() && e["dur"].as_f64().unwrap() >= 0.0 && e["tid"].is_u64());
    }
    // 2 steps per epoch x ... : 4000 / 256 = 16 steps per epoch, 2 epochs.
    assert_eq!(spans.iter().filter(|e| e["name"] == "step").count(), 32);
    // Shards ran on the workers, each worker a named track.
    let shard_tids: std::collections::BTreeSet<u64> = spans
        .iter()
        .filter(|e| e["name"] == "shard")
        .map(|e| e["tid"].as_u64().unwrap())
        .collect();
    // Which worker takes which shard is rayon's choice (on a loaded machine one worker may
    // take them all), but there are at most as many worker tracks as threads.
    assert!(
        (1..=2).contains(&shard_tids.len()),
        "shards on {shard_tids:?}"
    );
    for tid in &shard_tids {
        let name = &thread_names
            .iter()
            .find(|(t, _)| t == tid)
            .expect("named track")
            .1;
        assert!(name.starts_with("minibatch-worker-"), "{name}");
    }
    // Nesting by time: every shard inside a step, every fwd_bwd inside a shard of its thread.
    let within = |inner: &Value, outer: &Value| {
        let (s, d) = (
            inner["ts"].as_f64().unwrap(),
            inner["dur"].as_f64().unwrap(),
        );
        let (os, od) = (
            outer["ts"].as_f64().unwrap(),
            outer["dur"].as_f64().unwrap(),
        );
        s >= os - 1e-3 && s + d <= os + od + 1e-3
    };
    for shard in spans.iter().filter(|e| e["name"] == "shard") {
        assert!(
            spans
                .iter()
                .any(|s| s["name"] == "step" && within(shard, s)),
            "shard outside every step"
        );
    }
    for inner in spans.iter().filter(|e| e["name"] == "fwd_bwd") {
        assert!(
            spans
                .iter()
                .any(|s| s["name"] == "shard" && s["tid"] == inner["tid"] && within(inner, s)),
            "fwd_bwd outside its thread's shard"
        );
    }
}

/// The `total ms` column of the profile table, by phase name.
fn profile_totals(stderr: &str) -> std::collections::HashMap<String, f64> {
    stderr
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| phase") && !l.starts_with("| worker"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Some((cells[1].to_string(), cells.get(3)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn profile_phases_add_up_to_the_step_time() {
    let dir = temp_dir("profile-sum");
    let config = dir.join("c.toml");
    // Big enough (about 0.2 s of steps) that one preemption between two spans of a step
    // cannot move the totals by the 5% allowed below.
    let text = SMALL_MLP
        .replace("epochs = 2", "epochs = 4")
        .replace("d = 64", "d = 256")
        .replace("n = 4000", "n = 8000")
        .replace("hidden = [64]", "hidden = [256]");
    std::fs::write(&config, text).unwrap();
    let out = minibatch(&[
        "train",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--profile",
    ]);
    let totals = profile_totals(&String::from_utf8_lossy(&out.stderr));
    let step = totals["step"];
    let parts: f64 = ["prepare", "shards", "reduce", "update"]
        .iter()
        .map(|p| totals[*p])
        .sum();
    // The step is these four phases plus a few instructions of glue between them.
    assert!(step > 0.0);
    assert!(
        (parts - step).abs() <= 0.05 * step,
        "phases {parts} ms vs step {step} ms"
    );
}

#[test]
fn scale_writes_its_csv_and_the_serial_fraction_follows_from_the_speedups() {
    let dir = temp_dir("profile-scale");
    let config = dir.join("c.toml");
    std::fs::write(&config, SMALL_MLP).unwrap();
    let out_dir = dir.join("out");
    let out = minibatch(&[
        "scale",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--threads",
        "1,2",
        "--batch-sizes",
        "128,512",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("on 16 cores"));
    let csv = std::fs::read_to_string(out_dir.join("scale.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), minibatch::scale::CSV_HEADER);
    // The name bench's JSON gives it too (tests/it/cli.rs reads it there).
    assert_eq!(
        minibatch::scale::CSV_HEADER.split(',').nth(5),
        Some("serial_fraction")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let threads: f64 = row[1].parse().unwrap();
        let speedup: f64 = row[3].parse().unwrap();
        let efficiency: f64 = row[4].parse().unwrap();
        assert!((efficiency - speedup / threads).abs() < 1e-3);
        if threads == 1.0 {
            assert_eq!(row[5], "");
            assert!((speedup - 1.0).abs() < 1e-9);
        } else {
            let e: f64 = row[5].parse().unwrap();
            let expected = (1.0 / speedup - 1.0 / threads) / (1.0 - 1.0 / threads);
            // Both columns are rounded to 6 decimals; e's sensitivity to S is 1 / (S^2 (1 - 1/p)).
            let tolerance = 1e-6 + 1e-6 / (speedup * speedup * (1.0 - 1.0 / threads));
            assert!(
                (e - expected).abs() <= tolerance,
                "serial fraction {e} vs {expected}"
            );
        }
    }
    let svg = std::fs::read_to_string(out_dir.join("scale.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("ideal"));
}

/// scale trains on the rows `train` would: with a validation split, a batch size past the
/// training rows is refused naming the flag, as train refuses it.
#[test]
fn scale_trains_on_the_training_split_as_train_does() {
    let dir = temp_dir("profile-scale-split");
    let config = dir.join("c.toml");
    let text = SMALL_MLP.replace("classes = 4\n", "classes = 4\nvalid_fraction = 0.25\n");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["scale", "-c", config.to_str().unwrap(), "-t", "1"])
        .args(["-b", "3500", "-o", dir.join("out").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("(set by --batch-sizes): 3500 is larger than the training set (3000 rows)"),
        "{stderr}"
    );
}

#[test]
fn the_profile_lists_every_worker_even_one_that_ran_nothing() {
    let dir = temp_dir("profile-idle-worker");
    let config = dir.join("c.toml");
    // B = 64 in one shard on two threads: the second worker has nothing to do.
    std::fs::write(
        &config,
        SMALL_MLP.replace(
            "batch_size = 256\nshard_rows = 64",
            "batch_size = 64\nshard_rows = 64",
        ),
    )
    .unwrap();
    let out = minibatch(&["train", "--config", config.to_str().unwrap(), "--profile"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let workers: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("| minibatch-worker-"))
        .collect();
    // Which of the two runs the steps is the pool's choice; the other ran nothing.
    assert_eq!(workers.len(), 2, "{stderr}");
    assert_eq!(
        workers.iter().filter(|l| l.ends_with("| 0.0% |")).count(),
        1,
        "{stderr}"
    );
}

/// A batch of one shard runs on one thread by design: scale gives it no serial fraction
/// (nor an Amdahl prediction), while a batch of several shards gets one.
#[test]
fn a_one_shard_batch_gets_no_serial_fraction() {
    let dir = temp_dir("profile-scale-one-shard");
    let config = dir.join("c.toml");
    std::fs::write(&config, SMALL_MLP.replace("n = 4000", "n = 1024")).unwrap();
    let out_dir = dir.join("out");
    let out = minibatch(&[
        "scale",
        "-q",
        "-c",
        config.to_str().unwrap(),
        "-t",
        "1,2",
        "-b",
        "32,256",
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    let csv = std::fs::read_to_string(out_dir.join("scale.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let two_threads = |b: &str| rows.iter().find(|r| r[0] == b && r[1] == "2").unwrap()[5];
    assert_eq!(two_threads("32"), "", "{csv}");
    assert!(two_threads("256").parse::<f64>().is_ok(), "{csv}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("B = 32: serial fraction"), "{stdout}");
}
