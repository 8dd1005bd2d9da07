//! Training across MPI ranks through the binary and `mpirun` (the `mpi` feature; needs Open
//! MPI): the saved parameters are the single-process bytes for 2 and 3 ranks with SGD and
//! Adam, a checkpoint written with one rank count resumes with another to the same bytes, and
//! a rank killed mid-run ends the job with an error naming it while the checkpoints stay
//! readable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_minibatch");

fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `mpirun -n ranks minibatch args...` (as root and with more ranks than cores, as CI runs).
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--oversubscribe",
        "--allow-run-as-root",
        "-n",
        &ranks.to_string(),
        BIN,
    ]);
    cmd
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Trains `config` with `ranks` MPI ranks (0: a plain single process) and returns the bytes
/// of the saved parameters.
fn train(
    config: &Path,
    ranks: usize,
    threads: Option<usize>,
    extra: &[&str],
    out: &Path,
) -> Vec<u8> {
    let mut cmd = if ranks == 0 {
        Command::new(BIN)
    } else {
        mpirun(ranks)
    };
    cmd.args(["train", "-q", "--config"])
        .arg(config)
        .arg("--save")
        .arg(out)
        .args(extra);
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    check(cmd.output().unwrap(), &format!("training on {ranks} ranks"));
    std::fs::read(out).unwrap()
}

fn write_config(dir: &Path, optimizer: &str, epochs: usize) -> PathBuf {
    // 13 shards per batch, the last one short, and a short last batch per epoch.
    let text = format!(
        "seed = 5\n[data]\nsynthetic = \"teacher\"\nn = 1500\nvalid_fraction = 0.1\n\
         [model]\nkind = \"mlp\"\nhidden = [24]\n\
         [train]\nepochs = {epochs}\nbatch_size = 100\nshard_rows = 8\nlr = 0.01\noptimizer = \"{optimizer}\"\n"
    );
    let path = dir.join(format!("{optimizer}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_and_three_ranks_save_the_single_process_bytes_for_sgd_and_adam() {
    let dir = temp_dir("mpi-identical");
    for optimizer in ["sgd", "adam"] {
        let config = write_config(&dir, optimizer, 2);
        let single = train(&config, 0, Some(1), &[], &dir.join("single.safetensors"));
        for (ranks, threads) in [(2, Some(1)), (3, None), (2, Some(2))] {
            let out = dir.join(format!("{optimizer}-{ranks}.safetensors"));
            assert!(
                train(&config, ranks, threads, &[], &out) == single,
                "{optimizer}: {ranks} ranks x {threads:?} threads differ from one process"
            );
        }
        // The fast reduction runs too (its bits may differ), and its file says so.
        let fast = train(
            &config,
            2,
            Some(1),
            &["--reduction", "fast"],
            &dir.join("fast.safetensors"),
        );
        let header_len = u64::from_le_bytes(fast[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&fast[8..8 + header_len]);
        assert!(header.contains("fast across 2 MPI ranks"), "{header}");
        assert!(!String::from_utf8_lossy(&single).contains("\"reduction\""));
    }
}

#[test]
fn a_checkpoint_from_two_ranks_resumes_on_three_ranks_or_one_to_the_same_bytes() {
    let dir = temp_dir("mpi-resume");
    let config = write_config(&dir, "adam", 3);
    let checkpoints = dir.join("ck");
    let full = train(
        &config,
        2,
        Some(1),
        &[
            "--checkpoint",
            checkpoints.to_str().unwrap(),
            "--checkpoint-every",
            "7",
            "--keep",
            "100",
        ],
        &dir.join("full.safetensors"),
    );
    // Step 21 is inside epoch 2 (14 steps per epoch).
    let middle = checkpoints.join("step-000000021.safetensors");
    for ranks in [3, 0] {
        let mut cmd = if ranks == 0 {
            Command::new(BIN)
        } else {
            mpirun(ranks)
        };
        let out = dir.join(format!("resumed-{ranks}.safetensors"));
        cmd.args(["train", "-q", "--resume"])
            .arg(&middle)
            .arg("--save")
            .arg(&out);
        check(cmd.output().unwrap(), "resume");
        assert!(
            std::fs::read(&out).unwrap() == full,
            "resumed on {ranks} ranks differs"
        );
    }
}

/// The pid of the process whose environment holds both `KEY=value` pairs.
fn find_process(marks: [&str; 2]) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let has = |mark: &str| env.split(|&b| b == 0).any(|kv| kv == mark.as_bytes());
        if marks.iter().all(|m| has(m)) {
            return Some(pid);
        }
    }
    None
}

/// A run long enough to interrupt (1,400 rows, B = 100: 14 steps per epoch, endless
/// epochs), with `extra` train keys, written into `dir`.
fn long_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("long.toml");
    std::fs::write(
        &config,
        format!(
            "seed = 5\n[data]\nsynthetic = \"teacher\"\nn = 1400\n[model]\nkind = \"mlp\"\nhidden = [24]\n\
             [train]\nepochs = 100000\nbatch_size = 100\nshard_rows = 8\nlr = 0.01\n{extra}"
        ),
    )
    .unwrap();
    config
}

/// Starts `config` on 2 ranks (1 thread each) checkpointing into `checkpoints` every 5
/// steps, waits for the first checkpoints, sends `signal` to rank 1 and returns the job's
/// output.
fn signal_rank_1(name: &str, config: &Path, checkpoints: &Path, signal: &str) -> Output {
    let mark = format!("MINIBATCH_TEST_JOB={name}-{}", std::process::id());
    let (key, value) = mark.split_once('=').unwrap();
    let job = mpirun(2)
        .args(["train", "-q", "--threads", "1", "--config"])
        .arg(config)
        .arg("--checkpoint")
        .arg(checkpoints)
        .args(["--checkpoint-every", "5"])
        .env(key, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let rank_1 = loop {
        let written = std::fs::read_dir(checkpoints).map_or(0, |d| d.count());
        if written >= 2
            && let Some(pid) = find_process([&mark, "OMPI_COMM_WORLD_RANK=1"])
        {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let kill = Command::new("kill")
        .args([signal, &rank_1.to_string()])
        .status();
    assert!(kill.unwrap().success());
    job.wait_with_output().unwrap()
}

#[test]
fn killing_a_rank_ends_the_job_naming_it_and_leaves_the_checkpoints_readable() {
    let dir = temp_dir("mpi-kill");
    let config = write_config(&dir, "sgd", 100_000);
    let checkpoints = dir.join("ck");
    let out = signal_rank_1("kill", &config, &checkpoints, "-9");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job went on without rank 1");
    assert!(
        stderr.contains("rank 1"),
        "the error does not name rank 1:\n{stderr}"
    );
    // Every checkpoint left in the directory loads and evaluates.
    let mut left: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    left.sort();
    assert!(!left.is_empty());
    for path in left {
        let eval = Command::new(BIN)
            .args(["eval", "-q", "--model"])
            .arg(&path)
            .output()
            .unwrap();
        check(eval, &format!("eval of {}", path.display()));
    }
}

#[test]
fn per_rank_traces_and_profiles_show_the_exchange() {
    let dir = temp_dir("mpi-trace");
    let config = write_config(&dir, "sgd", 1);
    let trace = dir.join("trace.json");
    let out = check(
        mpirun(2)
            .args(["train", "--threads", "1", "--profile", "--config"])
            .arg(&config)
            .arg("--trace")
            .arg(&trace)
            .output()
            .unwrap(),
        "traced run",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!("Profile of rank {rank} of 2")),
            "{stderr}"
        );
        let text = std::fs::read_to_string(dir.join(format!("trace.rank{rank}.json"))).unwrap();
        assert!(
            text.contains("\"exchange\""),
            "rank {rank}'s trace has no exchange span"
        );
    }
    assert!(
        stderr.contains("| exchange |"),
        "the profile has no exchange row:\n{stderr}"
    );
    // Each rank's file is a process of its own, on the wall clock: loaded together, the
    // two line up (their first spans within a minute of each other, not both at 0).
    let first_span = |rank: usize| -> (u64, f64) {
        let text = std::fs::read_to_string(dir.join(format!("trace.rank{rank}.json"))).unwrap();
        let pid_at = text.find("\"pid\":").unwrap() + 6;
        let pid: u64 = text[pid_at..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            text.contains(&format!("minibatch rank {rank} of 2")),
            "{rank}"
        );
        let ts_at = text.find("\"ts\":").unwrap() + 5;
        let ts: f64 = text[ts_at..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap();
        (pid, ts)
    };
    let ((pid0, ts0), (pid1, ts1)) = (first_span(0), first_span(1));
    assert_ne!(pid0, pid1);
    assert!(ts0 > 1e15 && (ts0 - ts1).abs() < 60e6, "{ts0} {ts1}");
    // Only rank 0 prints the run; every rank names its trace file.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("done: 1 epoch,").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("wrote trace to").count(), 2, "{stdout}");
    // -q: not even those.
    let out = check(
        mpirun(2)
            .args(["train", "-q", "--threads", "1", "--config"])
            .arg(&config)
            .arg("--trace")
            .arg(&trace)
            .output()
            .unwrap(),
        "quiet traced run",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("wrote trace"), "{stdout}");
    // A trace a rank cannot write is named as that rank's file, before any work. Each rank
    // finds its own and ends the job, so which rank's message comes first varies.
    let out = mpirun(2)
        .args(["train", "-q", "--config"])
        .arg(&config)
        .arg("--trace")
        .arg(dir.join("no-such-dir").join("t.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot write")
            && (stderr.contains("t.rank0.json") || stderr.contains("t.rank1.json")),
        "{stderr}"
    );
}

#[test]
fn commands_other_than_train_refuse_to_run_on_several_ranks() {
    // Said once, by rank 0, every time: the other rank waits until it has (a rank that exited
    // first with a failure could make the launcher end rank 0 before it printed). Repeated,
    // as that was a race.
    for _ in 0..5 {
        let out = mpirun(2).args(["layout"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr
                .matches("only `minibatch train` runs across MPI ranks")
                .count(),
            1,
            "{stderr}"
        );
        assert!(stderr.contains("(2 ranks here)"), "{stderr}");
    }
}

#[test]
fn log_lines_name_their_rank() {
    let dir = temp_dir("mpi-log");
    let config = write_config(&dir, "sgd", 1);
    let out = check(
        mpirun(2)
            .args(["train", "-v", "--config"])
            .arg(&config)
            .output()
            .unwrap(),
        "training with -v on 2 ranks",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<&str> = stderr.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(!logs.is_empty(), "{stderr}");
    for rank in 0..2 {
        let tag = format!("[rank {rank}] ");
        assert!(logs.iter().any(|l| l.starts_with(&tag)), "{stderr}");
    }
    assert!(logs.iter().all(|l| l.starts_with("[rank ")), "{stderr}");
}

#[test]
fn ctrl_c_seen_by_one_rank_stops_every_rank_with_a_checkpoint_that_resumes_exactly() {
    let dir = temp_dir("mpi-sigint");
    let config = long_config(&dir, "optimizer = \"adam\"\n");
    let checkpoints = dir.join("ck");
    let out = signal_rank_1("sigint", &config, &checkpoints, "-INT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("rank 0 of 2: interrupted"), "{stderr}");
    assert!(
        !stderr.contains("rank 1 of 2"),
        "only rank 0 reports: {stderr}"
    );
    // The hint starts the resumed run as this one was started: across the ranks.
    assert!(
        stderr.contains("resume with: mpirun -n 2 minibatch train --resume"),
        "{stderr}"
    );
    // The checkpoint rank 0 wrote resumes, on 3 ranks, to the bytes of an uninterrupted run
    // (cut at the end of the next epoch, so the test stays short).
    let path = stderr
        .split("checkpoint written to ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(PathBuf::from)
        .expect("the message names the checkpoint");
    let step: usize = path
        .file_name()
        .and_then(|n| {
            n.to_str()?
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .expect("a step-N checkpoint");
    let epochs = (step / 14 + 1).to_string();
    let reference = dir.join("reference.safetensors");
    check(
        Command::new(BIN)
            .args(["train", "-q", "--config"])
            .arg(&config)
            .args(["--epochs", &epochs, "--save"])
            .arg(&reference)
            .output()
            .unwrap(),
        "reference run",
    );
    let resumed = dir.join("resumed.safetensors");
    check(
        mpirun(3)
            .args(["train", "-q", "--resume"])
            .arg(&path)
            .args(["--epochs", &epochs, "--save"])
            .arg(&resumed)
            .output()
            .unwrap(),
        "resume on 3 ranks",
    );
    assert!(std::fs::read(&resumed).unwrap() == std::fs::read(&reference).unwrap());
}

/// Ctrl-C at a terminal signals the whole foreground process group: mpirun, which forwards
/// it to the ranks (and, with launchers that leave the ranks in that group, the ranks
/// too, within milliseconds: one interrupt, see `interrupt` in the binary). The job stops
/// with its checkpoint, not as a second interrupt without one.
#[test]
fn ctrl_c_to_the_whole_job_is_one_interrupt_with_a_checkpoint() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("mpi-sigint-group");
    let config = long_config(&dir, "");
    let checkpoints = dir.join("ck");
    let job = mpirun(2)
        .args(["train", "-q", "--threads", "1", "--config"])
        .arg(&config)
        .arg("--checkpoint")
        .arg(&checkpoints)
        .args(["--checkpoint-every", "5"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_dir(&checkpoints).map_or(0, |d| d.count()) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let group = format!("-{}", job.id());
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .unwrap()
            .success()
    );
    let out = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // mpirun signalled itself returns 1 (the ranks exit 130), as the README says.
    assert!(matches!(out.status.code(), Some(1 | 130)), "{stderr}");
    assert!(!stderr.contains("interrupted again"), "{stderr}");
    assert!(stderr.contains("checkpoint written to "), "{stderr}");
}

/// Ranks started on different inputs (here each in its own directory, as two machines with
/// different copies of a config) are stopped before the first step with a message, not
/// run into a mixture or a hang.
#[test]
fn ranks_that_read_different_configs_are_refused() {
    let dir = temp_dir("mpi-different-inputs");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for (sub, lr) in [(&a, "0.01"), (&b, "0.02")] {
        std::fs::create_dir_all(sub).unwrap();
        std::fs::write(
            sub.join("c.toml"),
            format!(
                "[data]\nsynthetic = \"linear\"\nn = 400\n[train]\nepochs = 1\nbatch_size = 40\nshard_rows = 10\nlr = {lr}\n"
            ),
        )
        .unwrap();
    }
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--allow-run-as-root"]);
    for (i, sub) in [&a, &b].into_iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args([
            "-n",
            "1",
            "-wdir",
            sub.to_str().unwrap(),
            BIN,
            "train",
            "-q",
            "-c",
            "c.toml",
        ]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // Every rank knows at once: rank 0 says it, once, and no rank aborts the job.
    assert_eq!(
        stderr
            .matches("rank 1 read other inputs than rank 0")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("MPI_ABORT"), "{stderr}");
}
