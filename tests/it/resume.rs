//! Stopping and resuming: a run resumed from any checkpoint ends with the same bytes as the
//! uninterrupted run, for every optimizer; SIGKILL while checkpointing never leaves a corrupt
//! checkpoint; Ctrl-C checkpoints and exits 130; bad checkpoints and --init files are errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use minibatch::checkpoint::load_checkpoint;
use minibatch::{Mlp, Model, RawConfig};

use crate::common::temp_dir;

const CONFIG: &str = "seed = 9\n[data]\nsynthetic = \"teacher\"\nn = 1200\nd = 16\nclasses = 3\n\
[model]\nhidden = [12]\n[train]\nepochs = 2\nbatch_size = 50\nshard_rows = 16\nlr = 0.02\nclip_norm = 2.0\n\
[train.schedule]\nkind = \"cosine\"\nwarmup_steps = 5\n";

fn minibatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// A fresh directory holding CONFIG as c.toml, and where its checkpoints go (not made).
fn run_dir(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let config = dir.join("c.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let ckpt_dir = dir.join("ck");
    (dir, config, ckpt_dir)
}

/// A safetensors file's bytes with its JSON header edited by `edit` (padded to 8 bytes).
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// A safetensors file's header metadata.
fn metadata(path: &str) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"].clone()
}

/// Waits (at most 10 s) for `child` to exit after `what`, killing it past that.
fn exited_within(mut child: std::process::Child, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Waits (at most 20 s) until process `pid` catches SIGINT (its bit in the caught-signal
/// mask): a signal sent before would end it unhandled, and how soon a process gets there
/// depends on how loaded the machine is.
fn wait_for_sigint_handler(pid: u32) {
    let start = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_none_or(|mask| mask & (1 << (libc::SIGINT - 1)) == 0)
    {
        assert!(start.elapsed() < Duration::from_secs(20), "no handler");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `minibatch(args)`, which must succeed.
fn succeeds(args: &[&str]) -> Output {
    let out = minibatch(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `minibatch(args)`, which must be refused as bad input (exit 2).
fn refused(args: &[&str]) -> Output {
    let out = minibatch(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with("step-")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn layout(config: &str) -> minibatch::ParamLayout {
    let cfg = RawConfig::from_toml(config, Path::new("c.toml"))
        .unwrap()
        .validate()
        .unwrap();
    Mlp::new(cfg.model).layout().clone()
}

#[test]
fn resuming_from_any_checkpoint_gives_the_uninterrupted_bytes_for_every_optimizer() {
    for optimizer in ["sgd", "momentum", "nesterov", "adam", "adamw"] {
        let dir = temp_dir(&format!("resume-{optimizer}"));
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            CONFIG.replace(
                "lr = 0.02",
                &format!("lr = 0.02\noptimizer = \"{optimizer}\""),
            ),
        )
        .unwrap();
        let straight = dir.join("straight.safetensors");
        let ckpt_dir = dir.join("ckpt");
        succeeds(&[
            "train",
            "-q",
            "--config",
            config.to_str().unwrap(),
            "--save",
            straight.to_str().unwrap(),
            "--checkpoint",
            ckpt_dir.to_str().unwrap(),
            "--checkpoint-every",
            "7",
            "--keep",
            "100",
        ]);
        let all = checkpoints(&ckpt_dir);
        // 24 steps per epoch: checkpoints every 7 steps, at both epoch ends and at the end.
        assert!(all.len() >= 7, "{all:?}");
        // The end of epoch 1 (a stop after one epoch), and a step in the middle of epoch 2.
        for resume_from in [
            ckpt_dir.join("step-000000024.safetensors"),
            ckpt_dir.join("step-000000035.safetensors"),
        ] {
            let resumed = dir.join("resumed.safetensors");
            succeeds(&[
                "train",
                "-q",
                "--resume",
                resume_from.to_str().unwrap(),
                "--threads",
                "1",
                "--save",
                resumed.to_str().unwrap(),
            ]);
            assert!(
                std::fs::read(&straight).unwrap() == std::fs::read(&resumed).unwrap(),
                "{optimizer}: resumed from {} differs from the straight run",
                resume_from.display()
            );
        }
    }
}

#[test]
fn sigkill_while_checkpointing_never_leaves_a_corrupt_checkpoint() {
    let dir = temp_dir("resume-kill");
    let config = dir.join("c.toml");
    // Many epochs and a checkpoint after every step: the process is nearly always writing.
    std::fs::write(&config, CONFIG.replace("epochs = 2", "epochs = 400")).unwrap();
    let ckpt_dir = dir.join("ckpt");
    let layout = layout(&CONFIG.replace("epochs = 2", "epochs = 400"));
    let mut kills = 0;
    let mut checked = 0;
    for round in 0..25u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args([
                "train",
                "-q",
                "--config",
                config.to_str().unwrap(),
                "--checkpoint",
                ckpt_dir.to_str().unwrap(),
            ])
            .args(["--checkpoint-every", "1", "--keep", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A pseudo-random moment between 30 and 130 ms in.
        std::thread::sleep(Duration::from_millis(30 + (round * 37) % 100));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        for path in checkpoints(&ckpt_dir) {
            load_checkpoint(&path, &layout).unwrap_or_else(|e| panic!("after kill {kills}: {e}"));
            checked += 1;
        }
    }
    assert_eq!(kills, 25);
    assert!(checked > 0, "no checkpoint was ever written");
}

#[test]
fn ctrl_c_finishes_the_step_checkpoints_and_exits_130() {
    let dir = temp_dir("resume-sigint");
    let config = dir.join("c.toml");
    std::fs::write(&config, CONFIG.replace("epochs = 2", "epochs = 100000")).unwrap();
    let ckpt_dir = dir.join("ckpt");
    let child = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args([
            "train",
            "--config",
            config.to_str().unwrap(),
            "--checkpoint",
            ckpt_dir.to_str().unwrap(),
            "--keep",
            "2",
            "--trace",
            dir.join("trace.json").to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoints(&ckpt_dir).is_empty() {
        assert!(Instant::now() < deadline, "no checkpoint within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("resume with: minibatch train --resume"),
        "{stderr}"
    );
    let newest = checkpoints(&ckpt_dir).pop().unwrap();
    // The hint repeats where the results go: the checkpoint holds the config only.
    let hint = format!(
        "resume with: minibatch train --resume {} --checkpoint {} --trace {} --keep 2",
        newest.display(),
        ckpt_dir.display(),
        dir.join("trace.json").display()
    );
    assert!(stderr.contains(&hint), "{stderr}");
    // The trace of what ran is written all the same.
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("trace.json")).unwrap()).unwrap();
    assert!(
        trace["traceEvents"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    let stopped_at = load_checkpoint(&newest, &layout(CONFIG)).unwrap().position;
    // The last epoch line is the interrupted epoch's: marked as such unless the signal came
    // at its last step (24 steps an epoch).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rfind(|l| l.starts_with("epoch"))
        .unwrap_or_else(|| panic!("no epoch line in {stdout}"));
    let inside = (1..24).contains(&stopped_at.step_in_epoch);
    assert_eq!(
        last.contains("(stopped inside the epoch: its steps so far)"),
        inside,
        "{stopped_at:?}: {last}"
    );
}

#[test]
fn bad_checkpoints_and_init_files_are_errors_naming_the_file() {
    let (dir, config, ckpt_dir) = run_dir("resume-bad");
    let saved = dir.join("params.safetensors");
    let out = minibatch(&[
        "train",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint",
        ckpt_dir.to_str().unwrap(),
        "--save",
        saved.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let good = checkpoints(&ckpt_dir).pop().unwrap();

    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    for (path, expected) in [
        (truncated.clone(), "truncated.safetensors"),
        (garbage.clone(), "garbage.safetensors"),
        (
            saved.clone(),
            "is not a checkpoint (format `minibatch-params-v1`)",
        ),
        (dir.join("missing.safetensors"), "missing.safetensors"),
        (
            ckpt_dir.clone(),
            "is a directory, expected a safetensors file",
        ),
    ] {
        let out = minibatch(&["train", "-q", "--resume", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(
            stderr.contains(expected) && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    // A safetensors file from elsewhere is not taken for a model; the message is in words.
    for (name, metadata, expected) in [
        (
            "bare.safetensors",
            "",
            "is not a minibatch model file (no format field)",
        ),
        (
            "other.safetensors",
            r#""__metadata__":{"format":"other"},"#,
            "is not a minibatch model file (format `other`)",
        ),
    ] {
        let path = dir.join(name);
        let mut header =
            format!(r#"{{{metadata}"w1":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#);
        while !header.len().is_multiple_of(8) {
            header.push(' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let out = minibatch(&["eval", "--model", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    // --init with the right shapes works; with another model's it names the tensor.
    succeeds(&[
        "train",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--init",
        saved.to_str().unwrap(),
    ]);
    // stderr of a --init that must be refused as bad input.
    let refused_init = |config: &Path, params: &Path| {
        let out = minibatch(&[
            "train",
            "-q",
            "--config",
            config.to_str().unwrap(),
            "--init",
            params.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        stderr
    };
    let other = dir.join("other.toml");
    std::fs::write(&other, CONFIG.replace("hidden = [12]", "hidden = [13]")).unwrap();
    let stderr = refused_init(&other, &saved);
    // The file names its model: another model is named as such (a file without the name is
    // checked tensor by tensor: `w1` has shape ..., below).
    assert!(
        stderr.contains("are of a `mlp 16-12-3 relu softmax` model, and this run's is `mlp 16-13-3 relu softmax`")
            && stderr.contains("params.safetensors"),
        "{stderr}"
    );
    // A deeper model's file whose first layers fit (hidden [12, 3] into hidden [12]: w1, b1,
    // w2, b2 all of the right shapes) is another model, not these parameters.
    let deep = dir.join("deep.toml");
    std::fs::write(&deep, CONFIG.replace("hidden = [12]", "hidden = [12, 3]")).unwrap();
    let deep_saved = dir.join("deep.safetensors");
    succeeds(&[
        "train",
        "-q",
        "--config",
        deep.to_str().unwrap(),
        "--epochs",
        "1",
        "--save",
        deep_saved.to_str().unwrap(),
    ]);
    let stderr = refused_init(&config, &deep_saved);
    assert!(
        stderr.contains("deep.safetensors (--init) are of a `mlp 16-12-3-3 relu softmax` model"),
        "{stderr}"
    );
    // Files that do not name their model (written by another tool) are checked tensor by
    // tensor: a shape that differs, and a tensor the model lacks.
    let unnamed = |from: &Path, name: &str| {
        let path = dir.join(name);
        let bytes = with_header(&std::fs::read(from).unwrap(), |header| {
            header["__metadata__"]
                .as_object_mut()
                .unwrap()
                .remove("model");
        });
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let stderr = refused_init(&other, &unnamed(&saved, "unnamed.safetensors"));
    assert!(
        stderr.contains("`w1` has shape [16, 12], expected [16, 13]"),
        "{stderr}"
    );
    let stderr = refused_init(&config, &unnamed(&deep_saved, "unnamed-deep.safetensors"));
    assert!(
        stderr.contains("has a tensor `b3` that the model does not have"),
        "{stderr}"
    );
    // A non-finite parameter (the first value of the tensor data made NaN) is refused.
    let mut bytes = std::fs::read(&saved).unwrap();
    let data_start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[data_start..data_start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let poisoned = dir.join("nan.safetensors");
    std::fs::write(&poisoned, bytes).unwrap();
    let stderr = refused_init(&config, &poisoned);
    assert!(
        stderr.contains("nan.safetensors") && stderr.contains("holds NaN at flat index"),
        "{stderr}"
    );
}

#[test]
fn resuming_at_an_epoch_end_starts_the_next_epoch_and_eval_checks_classes() {
    let (dir, config, ckpt_dir) = run_dir("resume-epoch-end");
    let model = dir.join("m.safetensors");
    let out = minibatch(&[
        "train",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--checkpoint",
        ckpt_dir.to_str().unwrap(),
        "--keep",
        "10",
        "--save",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // The end of epoch 1 resumes into epoch 2 only: one epoch line, no empty epoch.
    let out = minibatch(&[
        "train",
        "--resume",
        ckpt_dir
            .join("step-000000024.safetensors")
            .to_str()
            .unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("epoch")).count(),
        1,
        "{stdout}"
    );
    assert!(stdout.contains("epoch   2/2"), "{stdout}");
    // eval on data whose classes differ from the model's is an error, not a panic.
    let other = dir.join("other.toml");
    std::fs::write(&other, CONFIG.replace("classes = 3", "classes = 5")).unwrap();
    let out = minibatch(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--config",
        other.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the model expects 3 classes, the data has 5 classes"),
        "{stderr}"
    );
}

#[test]
fn rotation_removes_only_the_checkpoints_the_run_wrote() {
    let (_, config, ckpt_dir) = run_dir("resume-rotation");
    let (config, ckpt) = (config.to_str().unwrap(), ckpt_dir.to_str().unwrap());
    let names = |dir: &Path| -> Vec<String> {
        checkpoints(dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect()
    };
    let step = |n: u64| format!("step-{n:09}.safetensors");
    // 24 steps per epoch: one epoch keeping everything, checkpoints at 5, 10, 15, 20, 24.
    let every = ["--checkpoint", ckpt, "--checkpoint-every", "5"];
    succeeds(
        &[
            &["train", "-q", "-c", config, "--epochs", "1", "--keep", "9"],
            &every[..],
        ]
        .concat(),
    );
    let first_run: Vec<String> = [5, 10, 15, 20, 24].map(step).to_vec();
    assert_eq!(names(&ckpt_dir), first_run);
    // Resumed from its last checkpoint for a second epoch, keeping two: it writes 25, 30,
    // ..., 45 and 48 and removes its own older ones, never the files it found.
    let last = ckpt_dir.join(step(24));
    let resume = [
        "train",
        "-q",
        "--resume",
        last.to_str().unwrap(),
        "--epochs",
        "2",
        "--keep",
        "2",
    ];
    succeeds(&[&resume[..], &every[..]].concat());
    let mut expected = first_run.clone();
    expected.extend([45, 48].map(step));
    assert_eq!(names(&ckpt_dir), expected);
    for path in checkpoints(&ckpt_dir) {
        load_checkpoint(&path, &layout(CONFIG)).unwrap();
    }
    // A new run in that directory would write step-000000005 and on over the files there
    // (and then rotate them away as its own): refused before anything is written. So is
    // resuming an earlier checkpoint, whose later steps are on disk.
    let before: Vec<Vec<u8>> = checkpoints(&ckpt_dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let earlier = ckpt_dir.join(step(10));
    let cases: [(Vec<&str>, &str); 2] = [
        (
            [&["train", "-q", "-c", config, "--seed", "7"], &every[..]].concat(),
            "holds step-000000005.safetensors and 6 more",
        ),
        (
            [
                &["train", "-q", "--resume", earlier.to_str().unwrap()],
                &every[..],
            ]
            .concat(),
            "holds step-000000015.safetensors and 4 more",
        ),
    ];
    for (args, expected) in cases {
        let out = refused(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--checkpoint"), "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} trained first");
    }
    let after: Vec<Vec<u8>> = checkpoints(&ckpt_dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after);
    // --keep means nothing without a directory to keep checkpoints in.
    let out = minibatch(&["train", "-q", "--config", config, "--keep", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--checkpoint"));
}

#[test]
fn resuming_a_finished_run_asks_for_more_epochs() {
    let (_, config, ckpt_dir) = run_dir("resume-finished");
    let ckpt = ckpt_dir.to_str().unwrap();
    succeeds(&[
        "train",
        "-q",
        "-c",
        config.to_str().unwrap(),
        "--checkpoint",
        ckpt,
    ]);
    let last = checkpoints(&ckpt_dir).pop().unwrap();
    let last = last.to_str().unwrap();
    // The run's own 2 epochs, or fewer: nothing to do, and the user is told how to go on.
    for extra in [&[][..], &["--epochs", "1"]] {
        let mut args = vec!["train", "--resume", last];
        args.extend_from_slice(extra);
        let out = refused(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("has done 2 epochs") && stderr.contains("--epochs 3"),
            "{args:?}: {stderr}"
        );
    }
    // CONFIG's schedule is cosine over the run: a longer run stretches it, and the resumed
    // run says so (24 steps an epoch).
    let out = succeeds(&["train", "--resume", last, "--epochs", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "note: the cosine schedule now spans 72 steps (3 epochs), the checkpoint's run 48 (2)"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("note: shards of"), "{stdout}");
    assert!(!stdout.contains("(from the checkpoint's run)"), "{stdout}");
    // Another learning rate, weight decay or clipping: said (as the schedule's span is).
    let out = succeeds(&[
        "train",
        "--resume",
        last,
        "--epochs",
        "3",
        "--lr",
        "0.002",
        "--clip-norm",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "note: learning rate 0.02 -> 0.002, clip_norm 2 -> 1 (from the checkpoint's run)"
        ),
        "{stdout}"
    );
    // Other shards change the sums' order: said too.
    let out = succeeds(&[
        "train",
        "--resume",
        last,
        "--epochs",
        "3",
        "--shard-rows",
        "8",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("note: shards of 8 rows, the checkpoint's run 16"),
        "{stdout}"
    );
    // The shards a checkpoint's run used are recorded, and compared as recorded: a build
    // whose default rule gave other shards for the same config is noticed (here the file
    // says 25 rows where the config gives 16). A file from before the record compares the
    // config's.
    assert_eq!(metadata(last)["shard_rows"], "16");
    let dir = std::path::Path::new(last).parent().unwrap().join("edited");
    std::fs::create_dir_all(&dir).unwrap();
    // (file, its shard_rows entry, whether its config keeps `shard_rows = 16`, the note)
    let cases = [
        (
            "other",
            Some("25"),
            true,
            Some("shards of 16 rows, the checkpoint's run 25"),
        ),
        ("older", None, true, None),
        // An older file whose config left the shards to the default: that build's rule
        // made B = 50 one shard, this one cuts it in two.
        (
            "older-default",
            None,
            false,
            Some("shards of 25 rows, the checkpoint's run 50"),
        ),
    ];
    for (name, rows, keeps, note) in cases {
        let bytes = with_header(&std::fs::read(last).unwrap(), |header| {
            let meta = header["__metadata__"].as_object_mut().unwrap();
            match rows {
                Some(rows) => meta.insert("shard_rows".into(), serde_json::json!(rows)),
                None => meta.remove("shard_rows"),
            };
            if !keeps {
                let config = meta["config"]
                    .as_str()
                    .unwrap()
                    .replace("shard_rows = 16\n", "");
                meta.insert("config".into(), serde_json::json!(config));
            }
        });
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let out = succeeds(&["train", "--resume", path.to_str().unwrap(), "--epochs", "3"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        match note {
            Some(note) => assert!(
                stdout.contains(&format!("note: {note}")),
                "{name}: {stdout}"
            ),
            None => assert!(!stdout.contains("note: shards of"), "{name}: {stdout}"),
        }
    }
    // An entry that is no shard of the batch is refused, naming the file.
    for rows in ["0", "51", "1000000", "x"] {
        let bytes = with_header(&std::fs::read(last).unwrap(), |header| {
            header["__metadata__"]["shard_rows"] = serde_json::json!(rows);
        });
        let path = dir.join("bad.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let out = refused(&["train", "--resume", path.to_str().unwrap(), "--epochs", "3"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("bad.safetensors") && stderr.contains("shard_rows"),
            "{rows}: {stderr}"
        );
    }
}

#[test]
fn resuming_refuses_another_batch_size_seed_sampling_or_optimizer_and_counts_an_epoch_end_as_done()
{
    let (_, config, ckpt_dir) = run_dir("resume-shape");
    succeeds(&[
        "train",
        "-q",
        "-c",
        config.to_str().unwrap(),
        "--checkpoint",
        ckpt_dir.to_str().unwrap(),
    ]);
    // 24 steps per epoch: step 24 is the end of the first epoch.
    let first_epoch = ckpt_dir.join("step-000000024.safetensors");
    let first_epoch = first_epoch.to_str().unwrap();
    for (flags, expected) in [
        (
            &["--epochs", "1"][..],
            "has done 1 epoch of 1; set more (--epochs 2)",
        ),
        (&["-b", "25"][..], "config `train.batch_size`: "),
        (&["--seed", "3"][..], "config `seed`: "),
        (&["--optimizer", "adam"][..], "config `train.optimizer`: "),
        (&["--sampling", "uniform"][..], "config `train.sampling`: "),
    ] {
        let mut args = vec!["train", "-q", "--resume", first_epoch];
        args.extend_from_slice(flags);
        let out = refused(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
    let out = succeeds(&["train", "--resume", first_epoch]);
    // The summary counts this process's steps, and the run's.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done: 1 epoch, 24 steps (48 in all), 1200 examples"),
        "{stdout}"
    );
}

#[test]
fn a_resumed_epoch_says_its_figures_cover_the_steps_after_the_checkpoint() {
    let (_, config, ckpt_dir) = run_dir("resume-mid-epoch");
    let (config, ckpt) = (config.to_str().unwrap(), ckpt_dir.to_str().unwrap());
    succeeds(&[
        "train",
        "-q",
        "-c",
        config,
        "--checkpoint",
        ckpt,
        "--checkpoint-every",
        "10",
        "--keep",
        "100",
    ]);
    let mid = ckpt_dir.join("step-000000010.safetensors");
    let out = succeeds(&["train", "--resume", mid.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().find(|l| l.starts_with("epoch")).unwrap();
    assert!(
        first.starts_with("epoch   1/2")
            && first.ends_with("(resumed at step 10: the steps after it)"),
        "{stdout}"
    );
    let second = stdout
        .lines()
        .find(|l| l.starts_with("epoch   2/2"))
        .unwrap();
    assert!(!second.contains("resumed"), "{stdout}");
}

/// Parameters trained on standardised features do not continue on raw ones (nor the other
/// way round), by --resume or --init: the run would start from a model that no longer fits.
#[test]
fn a_change_of_standardisation_is_refused_on_resume_and_init() {
    let dir = temp_dir("resume-standardize");
    let mut csv = String::from("a,b,label\n");
    for i in 0..200 {
        let x = 100.0 + (i % 13) as f32 * 70.0;
        csv += &format!("{x},{},{}\n", 1000.0 - x, usize::from(x > 500.0));
    }
    let data = dir.join("d.csv");
    std::fs::write(&data, csv).unwrap();
    let config = |name: &str, standardize: bool| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "[data]\npath = {:?}\nstandardize = {standardize}\n[model]\nkind = \"logistic\"\n\
                 [train]\nepochs = 1\nbatch_size = 20\n",
                data.to_str().unwrap()
            ),
        )
        .unwrap();
        path
    };
    let (on, off) = (config("on.toml", true), config("off.toml", false));
    let ckpt_dir = dir.join("ck");
    succeeds(&[
        "train",
        "-q",
        "-c",
        on.to_str().unwrap(),
        "--checkpoint",
        ckpt_dir.to_str().unwrap(),
        "--checkpoint-every",
        "4",
    ]);
    let ckpt = ckpt_dir.join("step-000000004.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let raw = off.to_str().unwrap();
    for args in [
        vec!["train", "-q", "--resume", ckpt, "-c", raw, "--epochs", "2"],
        vec!["train", "-q", "--init", ckpt, "-c", raw],
    ] {
        let out = refused(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("data.standardize"), "{stderr}");
        assert!(
            stderr.contains("trained on standardised features"),
            "{stderr}"
        );
    }
    // The same settings continue.
    succeeds(&["train", "-q", "--init", ckpt, "-c", on.to_str().unwrap()]);
}

/// Ctrl-C while the data is being generated stops before the first step: exit 130, no
/// step taken and no checkpoint written.
#[test]
fn ctrl_c_before_the_first_step_trains_nothing() {
    let dir = temp_dir("resume-sigint-early");
    let config = dir.join("c.toml");
    // About a second of generating 376 MB of features on this machine.
    std::fs::write(
        &config,
        "[data]\nsynthetic = \"teacher\"\nn = 120000\n[train]\nepochs = 1\n",
    )
    .unwrap();
    let ckpt_dir = dir.join("ckpt");
    let child = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-q", "--config", config.to_str().unwrap()])
        .args(["--checkpoint", ckpt_dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the handler is in place (before it, SIGINT would end the process unhandled);
    // the data takes far longer to generate than the handler to be installed.
    wait_for_sigint_handler(child.id());
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted before the first step"),
        "{stderr}"
    );
    // Not even the directory: it is made with the first checkpoint.
    assert!(!ckpt_dir.exists());
}

/// A second Ctrl-C exits at once, without a checkpoint: a run blocked opening a FIFO that
/// no one writes to (outside the training loop that looks at the first) kept running
/// through every SIGINT and SIGTERM. Two signals within milliseconds (one Ctrl-C seen by
/// the terminal and forwarded by mpirun) still count as one.
#[test]
fn a_second_ctrl_c_exits_a_run_blocked_on_its_input() {
    let dir = temp_dir("resume-sigint-twice");
    let fifo = dir.join("data.csv");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!("[data]\npath = {:?}\n", fifo.to_str().unwrap()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-q", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_sigint_handler(pid);
    let sigint = || {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    };
    // Two within the window (as one Ctrl-C delivered twice): one interrupt, which the
    // blocked run cannot act on yet. (Apart in time, so that they are not merged into one
    // pending signal.)
    sigint();
    std::thread::sleep(Duration::from_millis(100));
    sigint();
    std::thread::sleep(Duration::from_millis(250));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited on one interrupt"
    );
    // Well past the half second: a second interrupt.
    std::thread::sleep(Duration::from_millis(400));
    sigint();
    let out = exited_within(child, "the second SIGINT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted again"), "{stderr}");
}

/// The final parameters and the trace may go into the checkpoint directory the run makes;
/// `--save` naming that directory itself is refused before any work (it trained the whole
/// run and then could not write a file over a directory).
#[test]
fn outputs_may_go_into_the_checkpoint_directory_but_not_over_it() {
    let (_dir, config, ckpt) = run_dir("resume-outputs-in-checkpoint-dir");
    let (config, ck) = (config.to_str().unwrap(), ckpt.to_str().unwrap());
    let save = ckpt.join("final.safetensors");
    let trace = ckpt.join("trace.json");
    succeeds(&[
        "train",
        "-q",
        "-c",
        config,
        "--epochs",
        "1",
        "--checkpoint",
        ck,
        "--save",
        save.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert!(save.is_file() && trace.is_file());
    std::fs::remove_dir_all(&ckpt).unwrap();
    // Named another way (absolute, through `..`): the same directory.
    let other_way = ckpt.join("..").join("ck");
    let with_slash = format!("{}/", std::path::absolute(&other_way).unwrap().display());
    let out = refused(&[
        "train",
        "-q",
        "-c",
        config,
        "--checkpoint",
        ck,
        "--save",
        &with_slash,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`--save`: names the --checkpoint directory"),
        "{err}"
    );
    assert!(!ckpt.exists(), "refused before any work");
    // A file there named as the run's checkpoints are: one would overwrite the other (the
    // final --save over the last checkpoint left a file resume refuses).
    for flag in ["--save", "--trace"] {
        let named = ckpt.join("step-000000050.safetensors");
        let out = refused(&[
            "train",
            "-q",
            "-c",
            config,
            "--checkpoint",
            ck,
            flag,
            named.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("`{flag}`: is named as the run's checkpoints")),
            "{err}"
        );
        assert!(!ckpt.exists(), "refused before any work");
    }
    // A link that leads to such a name, from outside the directory.
    std::fs::create_dir_all(&ckpt).unwrap();
    let link = ckpt.parent().unwrap().join("to-checkpoint.safetensors");
    std::os::unix::fs::symlink(ckpt.join("step-000000050.safetensors"), &link).unwrap();
    let out = refused(&[
        "train",
        "-q",
        "-c",
        config,
        "--checkpoint",
        ck,
        "--save",
        link.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is named as the run's checkpoints"), "{err}");
    std::fs::remove_dir_all(&ckpt).unwrap();
    // --save and --trace naming one file in two spellings.
    let plain = ckpt.parent().unwrap().join("x.out");
    let dotted = format!("{}/./x.out", ckpt.parent().unwrap().display());
    let out = refused(&[
        "train",
        "-q",
        "-c",
        config,
        "--save",
        plain.to_str().unwrap(),
        "--trace",
        &dotted,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("names the --save file"), "{err}");
    // ... or through a linked directory, the file not there yet.
    let sub = ckpt.parent().unwrap().join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let linked = ckpt.parent().unwrap().join("linked-sub");
    std::os::unix::fs::symlink(&sub, &linked).unwrap();
    let out = refused(&[
        "train",
        "-q",
        "-c",
        config,
        "--save",
        sub.join("y.out").to_str().unwrap(),
        "--trace",
        linked.join("y.out").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("names the --save file"), "{err}");
    // A bare name with the current directory as the checkpoint directory.
    let cwd = ckpt.parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-q", "-c", config, "--checkpoint", "."])
        .args(["--save", "step-000000050.safetensors"])
        .current_dir(cwd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is named as the run's checkpoints"), "{err}");
}

/// Optimizer moments in a checkpoint are checked as the parameters are: a NaN first moment
/// stopped the run later, blamed on the learning rate, and an infinite second moment froze
/// its parameter (m / inf = 0) with exit 0.
#[test]
fn a_checkpoint_with_moments_that_are_not_finite_is_refused() {
    let (dir, config, ckpt_dir) = run_dir("resume-bad-moments");
    let adam = dir.join("adam.toml");
    assert!(config.exists());
    let text = CONFIG.replace(
        "clip_norm = 2.0\n",
        "clip_norm = 2.0\noptimizer = \"adam\"\n",
    );
    std::fs::write(&adam, text).unwrap();
    succeeds(&[
        "train",
        "-q",
        "-c",
        adam.to_str().unwrap(),
        "--epochs",
        "1",
        "--checkpoint",
        ckpt_dir.to_str().unwrap(),
    ]);
    let ckpt = checkpoints(&ckpt_dir).pop().unwrap();
    let bytes = std::fs::read(&ckpt).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    for (tensor, value, shown) in [
        ("optimizer.m", f32::NAN, "NaN"),
        ("optimizer.v", f32::INFINITY, "inf"),
        ("optimizer.v", -1.0, "-1"),
    ] {
        let start = header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
        let at = 8 + header_len + start + 4 * 3;
        let mut poisoned = bytes.clone();
        poisoned[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let path = dir.join("poisoned.safetensors");
        std::fs::write(&path, poisoned).unwrap();
        let out = refused(&["train", "-q", "--resume", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("`{tensor}` holds {shown} at flat index 3")),
            "{stderr}"
        );
    }
    // A position past the epoch (steps an epoch: 24) is refused, not taken as its end.
    let path = dir.join("far.safetensors");
    let far = with_header(&bytes, |header| {
        header["__metadata__"]["step_in_epoch"] = serde_json::json!("100");
    });
    std::fs::write(&path, far).unwrap();
    let out = refused(&["train", "-q", "--resume", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is at step 100 of an epoch, and this run's epochs have 24 steps"),
        "{stderr}"
    );
    // A position inside the epoch that does not add up to the steps taken (24).
    let far = with_header(&bytes, |header| {
        header["__metadata__"]["step_in_epoch"] = serde_json::json!("3");
    });
    std::fs::write(&path, far).unwrap();
    let out = refused(&["train", "-q", "--resume", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("its position does not add up"), "{stderr}");
}

/// Parameters meet a model and classes like their own or are refused: another activation
/// (same shapes), or labels whose names differ (one renamed class moves every id after it),
/// would give the same weights another meaning.
#[test]
fn init_and_resume_refuse_another_activation_or_other_classes() {
    let dir = temp_dir("resume-meaning");
    let mut csv = String::from("a,b,label\n");
    let mut renamed = csv.clone();
    for i in 0..60 {
        let class = ["cat", "dog", "eel"][i % 3];
        let row = format!("{},{}", i % 7, i % 5);
        csv += &format!("{row},{class}\n");
        renamed += &format!("{row},{}\n", class.replace("cat", "zebra"));
    }
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    std::fs::write(dir.join("renamed.csv"), renamed).unwrap();
    let config = |name: &str, data: &str, extra: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "[data]\npath = {:?}\n[model]\nhidden = [4]\n{extra}[train]\nepochs = 1\nbatch_size = 10\n",
                dir.join(data).to_str().unwrap()
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    let base = config("base.toml", "d.csv", "");
    let saved = dir.join("m.safetensors");
    succeeds(&[
        "train",
        "-q",
        "-c",
        &base,
        "--save",
        saved.to_str().unwrap(),
    ]);
    let saved = saved.to_str().unwrap();
    let tanh = config("tanh.toml", "d.csv", "activation = \"tanh\"\n");
    let out = refused(&["train", "-q", "-c", &tanh, "--init", saved]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "are of a `mlp 2-4-3 relu softmax` model, and this run's is `mlp 2-4-3 tanh softmax`"
        ),
        "{stderr}"
    );
    let other = config("renamed.toml", "renamed.csv", "");
    let out = refused(&["train", "-q", "-c", &other, "--init", saved]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("were trained on the classes [cat, dog, eel], and this run's labels are [dog, eel, zebra]"),
        "{stderr}"
    );
    // The same model and classes continue.
    succeeds(&["train", "-q", "-c", &base, "--init", saved]);
}

/// A --save into a FIFO nobody reads blocks in the write: the second interrupt is held for
/// the write (it says so), and a third exits, where every signal but SIGKILL was held.
#[test]
fn a_third_interrupt_leaves_a_write_that_cannot_finish() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("resume-blocked-save");
    let fifo = dir.join("m.safetensors");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let config = dir.join("c.toml");
    std::fs::write(&config, CONFIG.replace("epochs = 2", "epochs = 1")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-c", config.to_str().unwrap()])
        .args(["--save", fifo.to_str().unwrap()])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Training is over when its summary is printed; the save comes next.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().starts_with("done:") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id() as libc::pid_t;
    for _ in 0..3 {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(600));
    }
    let out = exited_within(child, "three interrupts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("finishing the file being written"),
        "{stderr}"
    );
    assert!(stderr.contains("interrupted again"), "{stderr}");
}

/// A resumed run notes a changed update rule by its effective values: a default spelt out
/// (`lr = 0.05`, `kind = "constant"`) is no change.
#[test]
fn spelling_out_a_default_is_no_change_on_resume() {
    let dir = temp_dir("resume-defaults");
    let base =
        "seed = 3\n[data]\nsynthetic = \"linear\"\nn = 200\n[train]\nbatch_size = 20\nepochs = 1\n";
    let (implicit, explicit) = (dir.join("a.toml"), dir.join("b.toml"));
    std::fs::write(&implicit, base).unwrap();
    std::fs::write(
        &explicit,
        format!("{base}lr = 0.05\nweight_decay = 0.0\n[train.schedule]\nkind = \"constant\"\n"),
    )
    .unwrap();
    let ck = dir.join("ck");
    succeeds(&[
        "train",
        "-q",
        "-c",
        implicit.to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
    ]);
    let last = checkpoints(&ck).pop().unwrap();
    let out = succeeds(&[
        "train",
        "-c",
        explicit.to_str().unwrap(),
        "--resume",
        last.to_str().unwrap(),
        "--epochs",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resuming"), "{stdout}");
    assert!(!stdout.contains("note:"), "{stdout}");
}
