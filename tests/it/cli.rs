//! The binary as a user meets it: every bad input gets a one-line message that names the key
//! or flag, exit code 2, and no panic; `--help` explains every subcommand.

use std::process::{Command, Output};

use crate::common::temp_dir;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// Writes `toml_text` as a config, runs `train` with it and `flags`, and checks the outcome.
fn rejects(name: &str, toml_text: &str, flags: &[&str], expected: &str) {
    let dir = temp_dir(&format!("cli-{name}"));
    let path = dir.join("bad.toml");
    std::fs::write(&path, toml_text).unwrap();
    let mut args = vec!["train", "--config", path.to_str().unwrap()];
    args.extend_from_slice(flags);
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{name}: exit code, stderr: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "{name}: expected `{expected}` in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
}

const SMALL: &str = "[data]\nsynthetic = \"linear\"\nn = 100\nd = 3\n";

#[test]
fn bad_configs_and_flags_name_the_key_and_exit_2() {
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            "unknown-key",
            "[train]\nbatch_sise = 3\n",
            &[],
            "unknown field `batch_sise`",
        ),
        (
            "unknown-section",
            "[trian]\nepochs = 3\n",
            &[],
            "unknown field `trian`",
        ),
        (
            "wrong-type",
            "[train]\nbatch_size = \"big\"\n",
            &[],
            "line 2",
        ),
        ("syntax", "[train\nepochs = 3\n", &[], "line 1"),
        (
            "batch-zero",
            SMALL,
            &["--batch-size", "0"],
            "config `train.batch_size` (set by --batch-size): must be at least 1",
        ),
        (
            "batch-too-large",
            SMALL,
            &["--batch-size", "101"],
            "larger than the training set (100 rows)",
        ),
        (
            "batch-zero-in-file",
            "[train]\nbatch_size = 0\n",
            &[],
            "config `train.batch_size`: must be at least 1",
        ),
        ("lr-zero", SMALL, &["--lr", "0"], "train.lr"),
        (
            "lr-negative",
            "[train]\nlr = -0.1\n",
            &[],
            "must be a finite number > 0, got -0.1",
        ),
        (
            "lr-nan",
            SMALL,
            &["--lr", "NaN"],
            "must be a finite number > 0, got NaN",
        ),
        ("lr-inf", SMALL, &["--lr", "inf"], "got inf"),
        (
            "threads-zero",
            SMALL,
            &["--threads", "0"],
            "config `train.threads` (set by --threads): must be at least 1",
        ),
        (
            "shard-rows-zero",
            SMALL,
            &["--shard-rows", "0"],
            "train.shard_rows",
        ),
        ("epochs-zero", SMALL, &["--epochs", "0"], "train.epochs"),
        (
            "empty-hidden",
            "[model]\nkind = \"mlp\"\nhidden = []\n",
            &[],
            "an mlp needs at least one hidden layer",
        ),
        (
            "zero-width",
            "[model]\nhidden = [8, 0]\n",
            &[],
            "hidden layer 1 has 0 units",
        ),
        (
            "bad-activation",
            "[model]\nactivation = \"gelu\"\n",
            &[],
            "expected one of relu, tanh, sigmoid",
        ),
        (
            "bad-model",
            "[model]\nkind = \"svm\"\n",
            &[],
            "unknown model `svm`",
        ),
        (
            "bad-dataset",
            "[data]\nsynthetic = \"mnist\"\n",
            &[],
            "unknown dataset `mnist`",
        ),
        (
            "bad-sampling",
            SMALL,
            &["--sampling", "random"],
            "expected shuffle or uniform",
        ),
        (
            "head-mismatch",
            "[data]\nsynthetic = \"linear\"\n[model]\nkind = \"softmax\"\n",
            &[],
            "needs class labels",
        ),
        (
            "valid-fraction",
            "[data]\nvalid_fraction = 1.5\n",
            &[],
            "data.valid_fraction",
        ),
        ("n-zero", "[data]\nn = 0\n", &[], "data.n"),
        (
            "bad-optimizer",
            SMALL,
            &["--optimizer", "lbfgs"],
            "expected one of sgd, momentum, nesterov, adam, adamw",
        ),
        (
            "negative-momentum",
            "[train]\noptimizer = \"momentum\"\nmomentum = -0.5\n",
            &[],
            "train.momentum`: must be in [0, 1), got -0.5",
        ),
        (
            "beta-one",
            "[train]\noptimizer = \"adam\"\nbeta2 = 1.0\n",
            &[],
            "train.beta2`: must be in [0, 1), got 1",
        ),
        (
            "eps-zero",
            "[train]\noptimizer = \"adam\"\neps = 0\n",
            &[],
            "train.eps",
        ),
        (
            "beta-for-sgd",
            "[train]\nbeta1 = 0.9\n",
            &[],
            "applies to adam and adamw only",
        ),
        (
            "nesterov-dampening",
            "[train]\noptimizer = \"nesterov\"\ndampening = 0.5\n",
            &[],
            "requires dampening = 0",
        ),
        (
            "negative-decay",
            "[train]\nweight_decay = -1\n",
            &[],
            "train.weight_decay",
        ),
        (
            "float-epochs",
            "[train]\nepochs = 2.0\n",
            &[],
            "invalid type: floating point `2.0`, expected a whole number >= 0",
        ),
        (
            "save-dash",
            "[data]\nn = 100\n",
            &["--save", "-"],
            "`--save`: `-` is no file here",
        ),
        (
            "trace-dash",
            "[data]\nn = 100\n",
            &["--trace", "-"],
            "`--trace`: `-` is no file here",
        ),
        (
            "file-d-zero",
            "[data]\npath = \"x.svm\"\nd = 0\n",
            &[],
            "`data.d`: must be at least 1",
        ),
        (
            "sgd-dampening",
            "[train]\ndampening = 0.5\n",
            &[],
            "`train.dampening`: applies to momentum; plain SGD (momentum 0) has none to damp",
        ),
        (
            "schedule-as-string",
            "[train]\nschedule = \"cosine\"\n",
            &[],
            "invalid type: string \"cosine\", expected a table",
        ),
        (
            "weight-decay-infinite",
            "[train]\nweight_decay = inf\n",
            &[],
            "`train.weight_decay`: must be finite and >= 0, got inf",
        ),
        (
            "decay-period-negative",
            "[train.schedule]\nkind = \"exponential\"\nevery_epochs = -1\n",
            &[],
            "`train.schedule.every_epochs`: must be finite and > 0, got -1",
        ),
        (
            "clip-zero",
            "[train]\nclip_norm = 0\n",
            &[],
            "train.clip_norm",
        ),
        (
            "activation-on-linear",
            "[data]\nsynthetic = \"linear\"\nn = 100\nd = 2\n[model]\nkind = \"linear\"\nactivation = \"tanh\"\n",
            &[],
            "config `model.activation`: applies to the hidden layers of an mlp",
        ),
        (
            "activation-without-kind",
            "[data]\nsynthetic = \"linear\"\nn = 100\nd = 2\n[model]\nactivation = \"tanh\"\n",
            &[],
            "a linear model has none (give model.hidden, or kind = \"mlp\")",
        ),
        (
            "unknown-activation-without-kind",
            "[data]\nsynthetic = \"linear\"\nn = 100\nd = 2\n[model]\nactivation = \"gelu\"\n",
            &[],
            "unknown activation `gelu`",
        ),
        (
            "no-hidden-layers-without-kind",
            "[data]\nsynthetic = \"linear\"\nn = 100\nd = 2\n[model]\nhidden = []\n",
            &[],
            "config `model.hidden`: an mlp needs at least one hidden layer",
        ),
        (
            "mse-head-on-classes",
            "[model]\nkind = \"mlp\"\nhead = \"mse\"\n",
            &[],
            "config `model.head`: a regression head needs real targets",
        ),
        (
            "momentum-rounds-to-one",
            "[train]\noptimizer = \"momentum\"\nmomentum = 0.99999999999\n",
            &[],
            "got 0.99999999999 (which is 1 in f32)",
        ),
        (
            "decay-overflow",
            "[train]\nweight_decay = 1e39\n",
            &[],
            "train.weight_decay`: 1e39 is outside the range of f32",
        ),
        (
            "eps-underflow",
            "[train]\noptimizer = \"adam\"\neps = 1e-50\n",
            &[],
            "train.eps`: 1e-50 is outside the range of f32",
        ),
        (
            "bad-schedule",
            "[train.schedule]\nkind = \"linear\"\n",
            &[],
            "unknown schedule `linear`",
        ),
        (
            "gamma-above-one",
            "[train.schedule]\nkind = \"step\"\ngamma = 2\n",
            &[],
            "train.schedule.gamma`: must be in (0, 1]",
        ),
        (
            "min-lr-above-lr",
            "[train]\nlr = 0.1\n[train.schedule]\nkind = \"cosine\"\nmin_lr = 0.5\n",
            &[],
            "train.schedule.min_lr",
        ),
        (
            "warmup-too-long",
            "[data]\nsynthetic = \"linear\"\nn = 100\n[train]\nepochs = 1\nbatch_size = 50\n[train.schedule]\nwarmup_steps = 2\n",
            &[],
            "`train.schedule.warmup_steps`: a warmup of 2 steps leaves nothing of the run's 2 steps",
        ),
        (
            // Given in epochs: the error names the key given.
            "warmup-epochs-too-long",
            "[data]\nsynthetic = \"linear\"\nn = 100\n[train]\nepochs = 1\nbatch_size = 50\n[train.schedule]\nwarmup_epochs = 1e300\n",
            &[],
            "`train.schedule.warmup_epochs`: a warmup of more than 2^64 steps leaves nothing",
        ),
        (
            "every-epochs-zero",
            "[train.schedule]\nkind = \"step\"\nevery_epochs = 0\n",
            &[],
            "`train.schedule.every_epochs`: must be at least 1 step",
        ),
        (
            "every-epochs-on-cosine",
            "[train.schedule]\nkind = \"cosine\"\nevery_epochs = 1\n",
            &[],
            "`train.schedule.every_epochs`: does not apply to schedule kind `cosine`",
        ),
        (
            // Keys of another format than the data's (checked before the file is read).
            "labels-on-csv",
            "[data]\npath = \"x.csv\"\nlabels = \"y.npy\"\n",
            &[],
            "config `data.labels`: applies to format = \"npy\", and this data is csv",
        ),
        (
            "header-on-libsvm",
            "[data]\npath = \"x.svm\"\nheader = true\n",
            &[],
            "config `data.header`: applies to format = \"csv\", and this data is libsvm",
        ),
        (
            "delimiter-not-ascii",
            "[data]\npath = \"x.csv\"\ndelimiter = \"\\u00e9\"\n",
            &[],
            "must be one ASCII character",
        ),
        (
            "save-is-trace",
            SMALL,
            &["--save", "same.out", "--trace", "same.out"],
            "`--trace`: names the --save file",
        ),
        (
            "threads-too-many",
            SMALL,
            &["--threads", "100000"],
            "config `train.threads` (set by --threads): 100000 is more than 1024",
        ),
        (
            "both-durations",
            "[train.schedule]\nkind = \"step\"\nevery_steps = 3\nevery_epochs = 1\n",
            &[],
            "not both",
        ),
        (
            "bad-scaling",
            "[train]\nlr_scaling = \"cubic\"\n",
            &[],
            "expected none, linear or sqrt",
        ),
        (
            "momentum-flag",
            SMALL,
            &["--optimizer", "momentum", "--momentum", "1.5"],
            "config `train.momentum` (set by --momentum): must be in [0, 1)",
        ),
        (
            "schedule-flag",
            SMALL,
            &["--schedule", "triangle"],
            "config `train.schedule.kind` (set by --schedule): unknown schedule `triangle`",
        ),
        (
            "clip-flag",
            SMALL,
            &["--clip-norm=-1"],
            "config `train.clip_norm` (set by --clip-norm)",
        ),
    ];
    for (name, toml_text, flags, expected) in cases {
        rejects(name, toml_text, flags, expected);
    }
}

#[test]
fn unreadable_config_paths_exit_2_with_the_path() {
    let dir = temp_dir("cli-paths");
    let missing = dir.join("missing.toml");
    let out = run(&["train", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    let out = run(&["train", "--config", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let out = run(&["train", "--threads", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["train", "--batch-size", "many"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch-size"));
    // A negative number is a value out of range, answered by the check that knows the key.
    for (args, expected) in [
        (
            &["train", "--lr", "-1"][..],
            "config `train.lr` (set by --lr): must be a finite number > 0, got -1",
        ),
        (
            &["tune", "--seconds", "-1"][..],
            "`--seconds`: must be a positive number",
        ),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn log_lines_to_a_pipe_carry_no_colour_codes() {
    let dir = temp_dir("cli-colour");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!("{SMALL}[train]\nepochs = 1\nthreads = 1\n"),
    )
    .unwrap();
    let out = run(&["train", "-v", "-c", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("INFO"), "no log line at -v: {stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes: {stderr:?}");
    assert!(!stderr.contains("step{"), "step lines at -v: {stderr}");
    // -vv: a line per step as it closes, with its time.
    let out = run(&["train", "-vv", "-c", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step{step=1 ") && stderr.contains("close time.busy="),
        "no step lines at -vv: {stderr}"
    );
    // RUST_LOG=debug shows what -vv shows.
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-c", config.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step{step=1 ") && stderr.contains("close time.busy="),
        "no step lines with RUST_LOG=debug: {stderr}"
    );
}

#[test]
fn bad_tune_and_bench_options_exit_2_with_the_option_named() {
    for (args, expected) in [
        (vec!["tune", "--lr-rule", "cubic"], "--lr-rule"),
        (vec!["tune", "--seconds", "0"], "--seconds"),
        (vec!["tune", "--batch-sizes", "0"], "--batch-sizes"),
        (vec!["bench", "--workload", "w9"], "unknown workload `w9`"),
        (vec!["bench", "--threads", "0"], "--threads"),
        (vec!["bench", "--epochs", "0"], "--epochs"),
        (vec!["bench", "--rounds", "0"], "--rounds"),
        (vec!["bench", "--shard-rows", "64,0"], "--shard-rows"),
        (vec!["scale", "--threads", "0"], "--threads"),
        (vec!["scale", "--threads", "2,1"], "must start with 1"),
        (vec!["tune", "--budget", "0"], "--budget"),
        (
            vec!["tune", "--batch-sizes", "16,16"],
            "lists a batch size twice",
        ),
        (
            vec!["descent", "--seeds", "2", "--show-seeds", "5"],
            "`--show-seeds`",
        ),
        (
            vec!["scale", "--threads", "1,1"],
            "lists a thread count twice",
        ),
        (
            vec!["tune", "--threads", "1,1"],
            "lists a thread count twice",
        ),
        (
            vec!["bench", "--threads", "2,2"],
            "lists a thread count twice",
        ),
        (
            vec!["tune", "--threads", "100000"],
            "thread counts must be from 1 to 1024, got 100000",
        ),
        (
            vec!["scale", "--threads", "1,5000"],
            "thread counts must be from 1 to 1024, got 5000",
        ),
        (vec!["tune", "--seconds", "1e300"], "at most 3600"),
        (vec!["train", "-q", "-v"], "cannot be used with"),
        (vec!["scale", "-b", "32,32"], "lists a batch size twice"),
        (
            vec!["bench", "--shard-rows", "64,64"],
            "`--shard-rows`: lists a shard size twice",
        ),
        (vec!["bench", "-w", "w1,w1"], "`--workload`: lists w1 twice"),
        (
            vec!["bench", "-w", "all,w3"],
            "`--workload`: `all` takes every workload; give it alone",
        ),
        (
            vec!["bench", "-b", "32,0"],
            "batch sizes must be at least 1",
        ),
        (vec!["tune", "-b", "8,0"], "batch sizes must be at least 1"),
        (
            vec!["descent", "--seeds", "0"],
            "`--seeds`: must be at least 1",
        ),
        (
            vec!["descent", "--seeds", "100000"],
            "`--seeds`: at most 1000",
        ),
        (
            vec!["descent", "--n", "1000000000000000"],
            "`--n`: at most 100000",
        ),
        (
            vec!["descent", "--noise", "1e30"],
            "`--noise`: must be in [0, 1000000]",
        ),
        (
            vec!["descent", "--show-seeds", "0"],
            "`--show-seeds`: must be at least 1",
        ),
        (
            vec!["descent", "--steps", "100000000000"],
            "`--steps`: 73 paths of 100000000000 steps need",
        ),
        (
            vec!["bench", "-w", "w1", "--n", "100"],
            "(set by the workload's standard sizes; --batch-sizes gives others): 128 is larger",
        ),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        // Refused before any data is made or anything measured.
        assert!(
            !stderr.contains("generating") && !stderr.contains("measuring"),
            "{args:?} worked first: {stderr}"
        );
    }
}

#[test]
fn help_explains_every_subcommand() {
    for (args, expected) in [
        (vec!["--help"], "train"),
        (vec!["train", "--help"], "--batch-size"),
        (vec!["layout", "--help"], "--config"),
        (vec!["bench", "--help"], "--workload"),
        (vec!["scale", "--help"], "--batch-sizes"),
        (vec!["tune", "--help"], "--target-loss"),
    ] {
        let out = run(&args);
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(expected),
            "{args:?}"
        );
    }
}

#[test]
fn train_prints_epochs_and_saves_a_readable_file() {
    let dir = temp_dir("cli-train");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "seed = 2\n[data]\nsynthetic = \"teacher\"\nn = 600\nd = 10\nclasses = 3\nvalid_fraction = 0.2\n[model]\nhidden = [8]\n[train]\nepochs = 2\nbatch_size = 32\n").unwrap();
    let out_path = dir.join("model.safetensors");
    let out = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--save",
        out_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("epoch   2/2"), "{stdout}");
    assert!(stdout.contains("valid loss"), "{stdout}");
    assert!(stdout.contains("ex/s"), "{stdout}");
    let layout = minibatch::Mlp::new(minibatch::model::MlpSpec {
        d_in: 10,
        hidden: vec![8],
        activation: minibatch::model::Activation::Relu,
        head: minibatch::model::Head::Softmax { n_classes: 3 },
    });
    let params =
        minibatch::checkpoint::load_params(&out_path, minibatch::Model::layout(&layout)).unwrap();
    assert_eq!(params.len(), 10 * 8 + 8 + 8 * 3 + 3);
    assert!(params.iter().all(|p| p.is_finite()));
}

#[test]
fn a_diverging_run_stops_with_the_step_and_a_hint_and_keeps_its_checkpoints() {
    let dir = temp_dir("cli-nan");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "[data]\nsynthetic = \"linear\"\nn = 2000\nd = 10\n[train]\nepochs = 50\nbatch_size = 10\nlr = 5.0\n").unwrap();
    let (ckpt, trace) = (dir.join("ckpt"), dir.join("trace.json"));
    let out = run(&[
        "train",
        "-q",
        "--config",
        cfg.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--checkpoint-every",
        "1",
        "--trace",
        trace.to_str().unwrap(),
        "--profile",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The trace and profile of the steps that ran are written all the same.
    let events: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(
        events["traceEvents"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(stderr.contains("| step |"), "{stderr}");
    assert!(
        stderr.contains("loss became") && stderr.contains("try a smaller learning rate"),
        "{stderr}"
    );
    assert!(stderr.contains("last finite batch loss"), "{stderr}");
    // Every checkpoint left behind holds finite parameters.
    let layout = minibatch::Mlp::new(minibatch::model::MlpSpec {
        d_in: 10,
        hidden: vec![],
        activation: minibatch::model::Activation::Relu,
        head: minibatch::model::Head::Mse,
    });
    let files: Vec<_> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty());
    for f in files {
        let c =
            minibatch::checkpoint::load_checkpoint(&f, minibatch::Model::layout(&layout)).unwrap();
        assert!(c.params.iter().all(|p| p.is_finite()), "{}", f.display());
    }
}

/// `--reduction fast` asks for MPI ranks: alone it is refused; `exact`, the default, is
/// what one process does and is accepted.
#[test]
fn reduction_outside_an_mpi_launch_is_refused() {
    rejects(
        "reduction-alone",
        SMALL,
        &["--reduction", "fast"],
        "--reduction fast applies to runs across MPI ranks",
    );
    let dir = temp_dir("cli-reduction-exact");
    let path = dir.join("cfg.toml");
    std::fs::write(&path, format!("{SMALL}[train]\nepochs = 1\nthreads = 1\n")).unwrap();
    let out = run(&[
        "train",
        "-q",
        "-c",
        path.to_str().unwrap(),
        "--reduction",
        "exact",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rejects(
        "reduction-bad",
        SMALL,
        &["--reduction", "slow"],
        "expected exact or fast",
    );
}

/// A build without the `mpi` feature started by mpirun (seen through the launcher's
/// environment) would train once per process, each alone: it says so and how to build.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_under_a_launcher_explains_how_to_build_with_it() {
    let dir = temp_dir("cli-no-mpi");
    let path = dir.join("cfg.toml");
    std::fs::write(&path, SMALL).unwrap();
    for (key, size) in [("OMPI_COMM_WORLD_SIZE", "2"), ("PMI_SIZE", "3")] {
        let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args(["train", "--config", path.to_str().unwrap()])
            .env(key, size)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("built without MPI"), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "the {size} processes the launcher started would each train alone"
            )),
            "{stderr}"
        );
        assert!(stderr.contains("--features mpi"), "{stderr}");
    }
    // A PMIx launcher that gives no count: no count made up.
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "--config", path.to_str().unwrap()])
        .env("PMIX_RANK", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("so the processes the launcher started"),
        "{stderr}"
    );
    // Other commands do not run across ranks: run them without the launcher.
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["layout", "--config", path.to_str().unwrap()])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("only `minibatch train` runs across MPI ranks"),
        "{stderr}"
    );
    // The other processes refuse silently and with success, so that the launcher does not
    // end the job before rank 0 has said why; rank 0's status is the job's.
    for command in ["layout", "train"] {
        let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args([command, "--config", path.to_str().unwrap()])
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .env("OMPI_COMM_WORLD_RANK", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn unwritable_outputs_are_refused_before_any_work() {
    let dir = temp_dir("cli-outputs");
    let config = dir.join("c.toml");
    // Long enough that a run which trained first would print its epochs.
    std::fs::write(
        &config,
        "[data]\nsynthetic = \"linear\"\nn = 2000\nd = 3\n[train]\nepochs = 3\nthreads = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let missing_dir = dir.join("no-such-dir").join("m.safetensors");
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, "keep me").unwrap();
    let (missing_dir, a_file, a_dir) = (
        missing_dir.to_str().unwrap(),
        a_file.to_str().unwrap(),
        dir.to_str().unwrap(),
    );
    let below_a_file = format!("{a_file}/out");
    // An output directory where one of the files to be written is a directory.
    let blocked = dir.join("blocked");
    for name in ["tune.svg", "scale.svg", "descent.html"] {
        std::fs::create_dir_all(blocked.join(name)).unwrap();
    }
    let blocked = blocked.to_str().unwrap();
    // One whose file is a link into a directory that is not there.
    let linked = dir.join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink("nowhere/x", linked.join("descent.html")).unwrap();
    let linked = linked.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["scale", "-c", config, "-t", "1", "-b", "50", "-o", blocked],
            "scale.svg: is a directory",
        ),
        (
            &[
                "tune",
                "-c",
                config,
                "-b",
                "50",
                "--seconds",
                "0.1",
                "-o",
                blocked,
            ],
            "tune.svg: is a directory",
        ),
        (&["descent", "-o", blocked], "descent.html: is a directory"),
        (&["descent", "-o", linked], "descent.html: is a link into"),
        (&["train", "-c", config, "--save", missing_dir], missing_dir),
        (&["train", "-c", config, "--save", a_dir], "is a directory"),
        (
            &["train", "-c", config, "--trace", missing_dir],
            missing_dir,
        ),
        (
            &["scale", "-c", config, "-t", "1", "-b", "50", "-o", a_file],
            "exists and is not a directory",
        ),
        (
            &[
                "tune",
                "-c",
                config,
                "-b",
                "50",
                "--seconds",
                "0.1",
                "-o",
                a_file,
            ],
            "exists and is not a directory",
        ),
        (&["descent", "-o", a_file], "exists and is not a directory"),
        (&["descent", "-o", &below_a_file], "is not a directory"),
    ];
    for (args, expected) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: `{expected}` not in {stderr}"
        );
        // Refused up front: nothing trained or measured was printed.
        assert!(
            out.stdout.is_empty(),
            "{args:?} ran first: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("a-file")).unwrap(),
        "keep me"
    );
    // None of the set was written beside the blocked one.
    for name in ["tune.csv", "scale.csv", "descent.svg"] {
        assert!(!std::path::Path::new(blocked).join(name).exists(), "{name}");
    }
    // Checking makes nothing: a run refused after the check leaves no empty directory.
    let never_made = dir.join("never-made");
    let out = run(&["descent", "--n", "1", "-o", never_made.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!never_made.exists());
    // Nor over the run's own config.
    let out = run(&["train", "-c", config, "--save", config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is an input of this command"), "{stderr}");
    assert!(
        std::fs::read_to_string(config)
            .unwrap()
            .starts_with("[data]")
    );
    // No probe file left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn data_and_models_larger_than_memory_are_config_errors_not_aborts() {
    // Sizes past any machine's memory (4 PB of features, 4 TB of parameters, 8 PB of
    // examples): refused with the key that sized them before anything is allocated.
    rejects(
        "memory-data",
        "[data]\nn = 1000000000000\nd = 1000\n",
        &[],
        "config `data.n`: 1000000000000 synthetic rows of 1000 features need 4.0 PB of memory",
    );
    rejects(
        "memory-model",
        "[data]\nn = 100\nd = 1000\n[model]\nhidden = [1000000, 1000000]\n[train]\nthreads = 1\n",
        &[],
        // 1000 x 10^6 + 10^6 + 10^6 x 10^6 + 10^6 + 10^6 x 10 + 10 parameters.
        "config `model`: 1001012000010 parameters",
    );
}

#[test]
fn bench_checks_every_row_before_measuring_and_takes_the_batch_sizes_given() {
    // A batch larger than the data: refused before the peak and bandwidth are measured.
    let out = run(&["bench", "-w", "w1", "--n", "100", "-b", "32,200", "-t", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("train.batch_size"), "{stderr}");
    assert!(!stderr.contains("measuring"), "measured first: {stderr}");
    // W1's own batch size (128) is larger than 100 rows, but it is not the one asked for.
    let out = run(&[
        "bench", "-w", "w1", "--n", "100", "-b", "32", "-t", "1", "--epochs", "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| w1 | 32 | 1 |"), "{stdout}");
}

/// bench's ratios follow from its own figures: each row's share of the peak FMA rate and of
/// the bandwidth is over the limits it reports (measured before and after the runs, the
/// higher kept), and the JSON carries Amdahl's predictions from each serial fraction.
#[test]
fn bench_ratios_and_predictions_follow_from_its_figures() {
    let out = run(&[
        "bench", "-w", "w1", "--n", "256", "-b", "128", "-t", "1,2", "--epochs", "1", "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("copy bandwidth again"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let limit = |key: &str, threads: u64| {
        report["limits"][key]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[0].as_u64() == Some(threads))
            .unwrap()[1]
            .as_f64()
            .unwrap()
    };
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let t = r["threads"].as_u64().unwrap();
        let f = |k: &str| r[k].as_f64().unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            close(f("peak_fraction"), f("gflops") / limit("peak_gflops", t)),
            "{r}"
        );
        assert!(
            close(
                f("bandwidth_fraction"),
                f("feature_gb_per_sec") / limit("copy_gb_per_sec", t)
            ),
            "{r}"
        );
        // No more threads than the batch has shards ever have work.
        let shards = r["batch_size"]
            .as_u64()
            .unwrap()
            .div_ceil(r["shard_rows"].as_u64().unwrap()) as usize;
        assert_eq!(shards, 2, "{r}");
        match r["serial_fraction"].as_f64() {
            Some(e) => {
                assert!(close(
                    f("predicted_speedup_16"),
                    minibatch::bench::amdahl(e, 16.min(shards))
                ));
                assert!(close(
                    f("predicted_speedup_64"),
                    minibatch::bench::amdahl(e, 64.min(shards))
                ));
            }
            None => assert!(r["predicted_speedup_16"].is_null(), "{r}"),
        }
    }
}

/// `-q` leaves bench's tables and drops its notes (here the one every batch of fewer than
/// 64 shards gets under the predictions).
#[test]
fn bench_quiet_prints_the_tables_without_notes() {
    let args = [
        "bench", "-w", "w1", "--n", "256", "-b", "128", "-t", "1,2", "--epochs", "1",
    ];
    let loud = run(&args);
    let quiet = run(&[&["-q"][..], &args[..]].concat());
    for out in [&loud, &quiet] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (loud, quiet) = (
        String::from_utf8_lossy(&loud.stdout),
        String::from_utf8_lossy(&quiet.stdout),
    );
    assert!(loud.contains("note: a step runs at most"), "{loud}");
    assert!(!quiet.contains("note"), "{quiet}");
    for table in ["| w1 | 128 | 2 |", "| serial fraction |"] {
        assert!(quiet.contains(table), "{quiet}");
    }
}

/// Rounds measure every row again after all the others, and the speedup is over the
/// 1-thread row wherever it is listed.
#[test]
fn bench_rounds_measure_each_row_again_and_the_speedup_finds_one_thread() {
    let out = run(&[
        "bench", "-w", "w1", "--n", "256", "-b", "128", "-t", "2,1", "--epochs", "1", "--rounds",
        "2", "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let order: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("thread(s)"))
        .map(|l| l.trim_start_matches("bench: w1: B = 128, "))
        .collect();
    assert_eq!(
        order,
        [
            "2 thread(s), shards of 64 rows, round 1 of 2",
            "1 thread(s), shards of 64 rows, round 1 of 2",
            "2 thread(s), shards of 64 rows, round 2 of 2",
            "1 thread(s), shards of 64 rows, round 2 of 2",
        ],
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let rate = |i: usize| rows[i]["examples_per_sec"].as_f64().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["threads"].as_u64(), Some(2));
    let speedup = rows[0]["speedup"]
        .as_f64()
        .expect("a speedup over the 1-thread row");
    assert!(
        (speedup - rate(0) / rate(1)).abs() <= 1e-9 * speedup,
        "{speedup}"
    );
    assert_eq!(rows[1]["speedup"].as_f64(), Some(1.0));
    // Each shard size's rows pair with the 1-thread row of that size; without a 1-thread
    // row there is no speedup; and `-q --json` leaves stderr to errors.
    let out = run(&[
        "-q",
        "bench",
        "-w",
        "w1",
        "--n",
        "256",
        "-b",
        "128",
        "-t",
        "2,1",
        "--epochs",
        "1",
        "--shard-rows",
        "32,64",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let field = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    assert_eq!(rows.len(), 4);
    for shard_rows in [32, 64] {
        let of_size: Vec<_> = rows
            .iter()
            .filter(|r| r["shard_rows"].as_u64() == Some(shard_rows))
            .collect();
        let (two, one) = (of_size[0], of_size[1]);
        assert_eq!(
            (two["threads"].as_u64(), one["threads"].as_u64()),
            (Some(2), Some(1))
        );
        let want = field(two, "examples_per_sec") / field(one, "examples_per_sec");
        assert!((field(two, "speedup") - want).abs() <= 1e-9 * want, "{two}");
    }
    let out = run(&[
        "bench", "-w", "w1", "--n", "256", "-b", "128", "-t", "2", "--epochs", "1", "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["rows"][0]["speedup"].is_null(), "{report}");
}

#[test]
fn output_piped_into_a_reader_that_stops_early_loses_text_not_the_run() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("cli-pipe");
    let config = dir.join("c.toml");
    // Enough epochs that lines are still being printed when the reader stops.
    std::fs::write(
        &config,
        format!("{SMALL}[train]\nepochs = 300\nthreads = 1\n"),
    )
    .unwrap();
    let saved = dir.join("m.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-c", config.to_str().unwrap()])
        .args(["--save", saved.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    // The pipe's read end is closed here, as `head -1` closes it.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The run finished and saved.
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(saved.exists());
}

/// An error whose reader has gone (stderr a pipe closed at its other end) still ends with
/// the error's exit code, not a panic in the print (101).
#[test]
fn an_error_into_a_closed_stderr_keeps_its_exit_code() {
    let dir = temp_dir("cli-closed-stderr");
    let config = dir.join("c.toml");
    std::fs::write(&config, "[train\nepochs = 1\n").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-c", config.to_str().unwrap()])
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn hidden_layers_without_a_kind_make_an_mlp_on_file_data_too() {
    let dir = temp_dir("cli-hidden");
    std::fs::write(
        dir.join("n.csv"),
        "a,b,label\n0,0,0\n1,0,1\n0,1,2\n1,1,0\n2,0,1\n0,2,2\n",
    )
    .unwrap();
    let config = dir.join("c.toml");
    let data = dir.join("n.csv");
    let toml_text = format!(
        "[data]\npath = {:?}\n[model]\nhidden = [8]\n[train]\nepochs = 1\nbatch_size = 2\nthreads = 1\n",
        data.to_str().unwrap()
    );
    std::fs::write(&config, &toml_text).unwrap();
    let out = run(&["train", "-c", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("mlp 2-8-3 "), "{stdout}");
    // A label column given as a negative number says what a label key is.
    rejects(
        "label-negative",
        &toml_text.replace("[model]", "label = -1\n[model]"),
        &[],
        "a column index (0, 1, ...) or a column name",
    );
}

#[test]
fn outputs_never_replace_the_files_a_command_reads() {
    let dir = temp_dir("cli-inputs");
    let data = dir.join("d.csv");
    let rows: String = (0..40)
        .map(|i| format!("{},{},{}\n", i % 7, i % 5, i % 2))
        .collect();
    std::fs::write(&data, format!("a,b,y\n{rows}")).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\npath = {:?}\n[train]\nepochs = 1\nbatch_size = 8\nthreads = 1\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let model = dir.join("m.safetensors");
    let (data, config, model) = (
        data.to_str().unwrap(),
        config.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    let out = run(&["train", "-q", "-c", config, "--save", model]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = (std::fs::read(data).unwrap(), std::fs::read(model).unwrap());
    let missing = dir.join("no-dir").join("p.csv");
    for (args, expected) in [
        (
            vec!["train", "-c", config, "--save", data],
            "is an input of this command",
        ),
        (
            vec!["train", "-c", config, "--trace", data],
            "is an input of this command",
        ),
        (
            vec!["predict", "-m", model, "-o", model],
            "is an input of this command",
        ),
        (
            vec!["predict", "-m", model, "-d", data, "-o", data],
            "is an input of this command",
        ),
        (
            vec!["predict", "-m", model, "-o", data],
            "is an input of this command",
        ),
        (
            vec!["predict", "-m", model, "-o", missing.to_str().unwrap()],
            "no-dir",
        ),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(before == (std::fs::read(data).unwrap(), std::fs::read(model).unwrap()));
}

/// `scale` on rows read from a file says so (not "generating"), and a batch size at which
/// more threads ran slower gets no Amdahl gain in its summary, whatever its serial fraction.
#[test]
fn scale_on_a_data_file_reports_what_it_read() {
    let dir = temp_dir("cli-scale-file");
    let mut csv = String::new();
    for i in 0..400 {
        let x = (i % 17) as f32 / 17.0;
        csv += &format!("{x},{},{}\n", 1.0 - x, usize::from(x > 0.5));
    }
    let rows = dir.join("rows.csv");
    std::fs::write(&rows, csv).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\npath = {:?}\n[model]\nkind = \"logistic\"\n[train]\nepochs = 1\n",
            rows.to_str().unwrap()
        ),
    )
    .unwrap();
    let out_dir = dir.join("out");
    let out = run(&[
        "scale",
        "-c",
        config.to_str().unwrap(),
        "-t",
        "1,2",
        "-b",
        "100",
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("400 x 2 features read from the data file"),
        "{stderr}"
    );
    assert!(!stderr.contains("generating"), "{stderr}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("B = 100: serial fraction"))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let e: f64 = summary["B = 100: serial fraction ".len()..]
        .split([';', ' '])
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Two shards of 50 rows on a model this small: whatever the noise made of the
    // speedup, the prediction never exceeds what the fraction allows.
    let s16: f64 = summary
        .split("predicts ")
        .nth(1)
        .and_then(|s| s.split('x').next())
        .unwrap()
        .parse()
        .unwrap();
    // Two shards: no more than two threads ever have work, so no more than Amdahl's
    // two-thread figure, however many cores.
    let expected = minibatch::bench::amdahl(e, 2);
    assert!((s16 - expected).abs() < 0.06, "{summary}");
    assert!(s16 <= 2.0, "{summary}");
    assert!(
        summary.contains("(its 2 shards are the most that run at once)"),
        "{summary}"
    );
    if e > 1.0 {
        assert_eq!(s16, 1.0, "{summary}");
        assert!(summary.contains("ran slower"), "{summary}");
    }
}

/// A run whose last update overflows (its loss, computed before the update, was finite)
/// stops with exit 1 and writes no --save file: here the parameters stay finite but so
/// large that the validation loss is not; with larger steps they overflow too.
#[test]
fn an_update_that_overflows_on_the_last_step_saves_nothing() {
    let dir = temp_dir("cli-last-step-overflow");
    let cfg = dir.join("c.toml");
    // One step per epoch, one epoch: the only step's update is the one that overflows.
    std::fs::write(
        &cfg,
        "[data]\nsynthetic = \"teacher\"\nn = 2000\nd = 20\nclasses = 3\nvalid_fraction = 0.2\n\
         [train]\nbatch_size = 1600\nepochs = 1\nlr = 1e30\n",
    )
    .unwrap();
    let (save, ckpt) = (dir.join("m.safetensors"), dir.join("ck"));
    let out = run(&[
        "train",
        "-q",
        "--config",
        cfg.to_str().unwrap(),
        "--save",
        save.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the validation loss became non-finite by epoch 1, step 1"),
        "{stderr}"
    );
    assert!(!save.exists());
    // Parameters that are not finite are never written: not at an epoch's end, not on the
    // periodic checkpoints (targets in the hundreds make gradients that lr 1e38 turns into
    // infinities on the first step).
    let linear = dir.join("linear.toml");
    std::fs::write(
        &linear,
        "[data]\nsynthetic = \"linear\"\nn = 200\nd = 4\nnoise = 100\n\
         [train]\nbatch_size = 200\nepochs = 1\nlr = 1e38\n",
    )
    .unwrap();
    let out = run(&[
        "train",
        "-q",
        "--config",
        linear.to_str().unwrap(),
        "--save",
        save.to_str().unwrap(),
        "--checkpoint",
        dir.join("ck2").to_str().unwrap(),
        "--checkpoint-every",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the parameters became non-finite by epoch 1, step 1"),
        "{stderr}"
    );
    assert!(!save.exists());
    let left = std::fs::read_dir(dir.join("ck2")).map_or(0, |d| d.count());
    assert_eq!(
        left, 0,
        "a checkpoint of the overflowed parameters was kept"
    );
    let _ = ckpt;
}

/// An address-space limit (`ulimit -v`) counts as memory available: a data set past it is
/// a config error naming the key, not an aborted allocation.
#[test]
fn an_address_space_limit_is_checked_like_the_machines_memory() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("cli-ulimit");
    let config = dir.join("c.toml");
    // 3.1 GB of features against a 1.5 GB limit.
    std::fs::write(&config, "[data]\nn = 1000000\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_minibatch"));
    command.args(["train", "-q", "-c", config.to_str().unwrap()]);
    // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1_500_000_000,
                rlim_max: 1_500_000_000,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("config `data.n`"), "{stderr}");
    assert!(stderr.contains("this process has"), "{stderr}");
}

/// A loss that is not finite at the first step comes from the data or the starting
/// parameters, not from the learning rate: the message says so.
#[test]
fn a_loss_past_f32_at_the_first_step_points_at_the_data() {
    let dir = temp_dir("cli-first-step-inf");
    let data = dir.join("big.csv");
    std::fs::write(&data, "a,y\n1,1e30\n2,-1e30\n3,5e29\n").unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\npath = {:?}\ntask = \"regression\"\n[train]\nepochs = 1\nbatch_size = 3\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = run(&["train", "-q", "--config", cfg.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("step 1"), "{stderr}");
    assert!(stderr.contains("before any update"), "{stderr}");
    assert!(!stderr.contains("try a smaller learning rate"), "{stderr}");
}

/// A schedule flag replaces the config's schedule keys that do not fit it, and
/// --warmup-steps the config's warmup in epochs: flags override keys.
#[test]
fn schedule_flags_override_the_configs_schedule_keys() {
    let dir = temp_dir("cli-schedule-flags");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[data]\nsynthetic = \"linear\"\nn = 200\n[train]\nepochs = 2\nbatch_size = 20\nlr = 0.1\nthreads = 1\n\
         [train.schedule]\nkind = \"cosine\"\nmin_lr = 0.01\nwarmup_epochs = 0.5\n",
    )
    .unwrap();
    let header = |flags: &[&str]| {
        let out = run(&[&["train", "-c", config.to_str().unwrap()], flags].concat());
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().next().unwrap().to_string()
    };
    let step = header(&["--schedule", "step", "--warmup-steps", "3"]);
    assert!(
        step.ends_with("lr 0.1 x0.1 every 10 steps after 3 warmup steps"),
        "{step}"
    );
    let constant = header(&["--schedule", "constant"]);
    assert!(
        constant.ends_with("lr 0.1 after 5 warmup steps"),
        "{constant}"
    );
}

/// --optimizer overrides the config's optimizer with the keys that belong to it: another
/// rule's keys are dropped (momentum for Adam, and for plain SGD), its own kept.
#[test]
fn the_optimizer_flag_overrides_the_configs_optimizer_keys() {
    let dir = temp_dir("cli-optimizer-flag");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[data]\nsynthetic = \"linear\"\nn = 200\n[train]\nepochs = 1\nbatch_size = 20\nthreads = 1\n\
         optimizer = \"momentum\"\nmomentum = 0.5\n",
    )
    .unwrap();
    let header = |flag: &str| {
        let out = run(&["train", "-c", config.to_str().unwrap(), "--optimizer", flag]);
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout.lines().next().unwrap().to_string()
    };
    assert!(
        header("adam").contains("| adam (0.9, 0.999), lr"),
        "{}",
        header("adam")
    );
    assert!(header("sgd").contains("| sgd, lr"), "{}", header("sgd"));
    assert!(
        header("nesterov").contains("| nesterov 0.5, lr"),
        "{}",
        header("nesterov")
    );
    // A config that says sgd with a momentum (heavy ball, as PyTorch's SGD): the flag's
    // sgd is plain.
    std::fs::write(
        &config,
        "[data]\nsynthetic = \"linear\"\nn = 200\n[train]\nepochs = 1\nbatch_size = 20\nthreads = 1\n\
         optimizer = \"sgd\"\nmomentum = 0.5\n",
    )
    .unwrap();
    assert!(header("sgd").contains("| sgd, lr"), "{}", header("sgd"));
    // Dampening 0 with plain SGD (PyTorch's default) changes nothing and is accepted; a
    // positive one is refused (cli table above).
    std::fs::write(
        &config,
        "[data]\nsynthetic = \"linear\"\nn = 200\n[train]\nepochs = 1\nbatch_size = 20\nthreads = 1\n\
         dampening = 0.0\n",
    )
    .unwrap();
    assert!(header("sgd").contains("| sgd, lr"), "{}", header("sgd"));
}

/// --sampling drops the config's key of the other sampling, as --optimizer does another
/// rule's: it was an error to shuffle a config with `steps_per_epoch`, or to draw uniformly
/// with `drop_last`.
#[test]
fn the_sampling_flag_drops_the_other_samplings_key() {
    let dir = temp_dir("cli-sampling-flag");
    let config = dir.join("c.toml");
    let base = "[data]\nsynthetic = \"linear\"\nn = 200\n[train]\nepochs = 1\nbatch_size = 20\nthreads = 1\n";
    let steps = |extra: &str, flag: &str| {
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let out = run(&["train", "-c", config.to_str().unwrap(), "--sampling", flag]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{flag}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout.lines().last().unwrap().to_string()
    };
    // 200 rows in batches of 20: ten steps an epoch, shuffled; three as the config says.
    let done = steps("sampling = \"uniform\"\nsteps_per_epoch = 3\n", "shuffle");
    assert!(done.contains("1 epoch, 10 steps"), "{done}");
    let done = steps("drop_last = true\n", "uniform");
    assert!(done.contains("1 epoch, 10 steps"), "{done}");
}

/// bench and scale sweep from 1 thread to every core by default: on a machine (or a CPU
/// set) of one core that is the one count, not a list refused as repeating it.
#[test]
fn default_thread_sweeps_work_on_one_core() {
    let dir = temp_dir("cli-one-core");
    for args in [
        vec!["bench", "-w", "w3", "--epochs", "1", "--n", "2000"],
        vec![
            "scale",
            "-q",
            "-b",
            "64",
            "-o",
            dir.join("scale").to_str().unwrap(),
        ],
    ] {
        let out = Command::new("taskset")
            .args(["-c", "0", env!("CARGO_BIN_EXE_minibatch")])
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("taskset (util-linux) runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The default sweep stays on the one core: no note about sharing it.
        assert!(!String::from_utf8_lossy(&out.stderr).contains("share them"));
    }
    // Two threads asked for on one core: said to share it.
    let out = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_minibatch")])
        .args([
            "bench", "-w", "w3", "--epochs", "1", "--n", "2000", "-t", "1,2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("note: 2 threads on 1 core: threads beyond the cores share them"),
        "{stderr}"
    );
}

/// Outputs are replaced through a temporary file renamed over them, except what a rename
/// would destroy: a link's file is replaced and the link stays (a link to a file not made
/// yet too); a FIFO (or a device, such as /dev/null) is written in place and stays; a path
/// of an open descriptor (/proc/self/fd/1, /dev/stdout) is written through it. A link
/// loop, or a link into a missing directory, is refused before the work.
#[test]
fn outputs_through_links_and_fifos_keep_them() {
    use std::os::unix::fs::FileTypeExt;
    let dir = temp_dir("cli-special-outputs");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "seed = 2\n[data]\nsynthetic = \"linear\"\nn = 400\nd = 3\n[train]\nepochs = 1\nthreads = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let save = |to: &std::path::Path| {
        let out = run(&["train", "-q", "-c", config, "--save", to.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let plain = dir.join("plain.safetensors");
    save(&plain);
    let expected = std::fs::read(&plain).unwrap();

    // A link to a file: the file gets the bytes, the link stays a link.
    let file = dir.join("file.safetensors");
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    save(&link);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&file).unwrap(), expected);

    // A FIFO: a reader gets the bytes, and it is still a FIFO.
    let fifo = dir.join("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let (sent, received) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        // Blocks until a writer opens the FIFO: a run that renamed a file over it never
        // does, and the wait below fails instead of hanging.
        std::thread::spawn(move || sent.send(std::fs::read(fifo).unwrap()));
    }
    save(&fifo);
    let read = received
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the FIFO was written");
    assert_eq!(read, expected);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // A link to this process's standard output, a pipe: predictions arrive through it.
    let stdout_link = dir.join("stdout.csv");
    std::os::unix::fs::symlink("/proc/self/fd/1", &stdout_link).unwrap();
    let out = run(&[
        "predict",
        "-m",
        plain.to_str().unwrap(),
        "-c",
        config,
        "-o",
        stdout_link.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("row,"), "{csv}");
    assert!(csv.lines().count() > 1, "{csv}");
    assert!(
        std::fs::symlink_metadata(&stdout_link)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A link to a file not there yet, in a directory that is: the file is made (through a
    // temporary file renamed into place) and the link stays.
    let later = dir.join("later.safetensors");
    let to_later = dir.join("to-later.safetensors");
    std::os::unix::fs::symlink("later.safetensors", &to_later).unwrap();
    save(&to_later);
    assert_eq!(std::fs::read(&later).unwrap(), expected);
    assert!(
        std::fs::symlink_metadata(&to_later)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A link loop, and a link into a directory that is not there: refused before the work.
    let looped = dir.join("loop.safetensors");
    std::os::unix::fs::symlink("loop.safetensors", &looped).unwrap();
    let nowhere = dir.join("nowhere.safetensors");
    std::os::unix::fs::symlink("no-such-dir/m.safetensors", &nowhere).unwrap();
    for (link, expected) in [
        (&looped, "too many levels of symbolic links"),
        (&nowhere, "No such file or directory"),
    ] {
        let out = run(&["train", "-c", config, "--save", link.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(out.stdout.is_empty(), "trained first: {stderr}");
    }

    // /dev/stdout while standard output is a file opened for appending: the predictions
    // are appended through the descriptor; the file was replaced (losing what it held)
    // when /dev/stdout was followed to it and renamed over.
    // Other spellings of the descriptor alike.
    let log = dir.join("log.txt");
    for spelling in ["/dev/stdout", "/dev/fd/1", "//proc/self/fd/1"] {
        std::fs::write(&log, "kept\n").unwrap();
        let append = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args(["predict", "-q", "-m", plain.to_str().unwrap(), "-c", config])
            .args(["-o", spelling])
            .stdout(append)
            .status()
            .unwrap();
        assert!(status.success(), "{spelling}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("kept\nrow,"), "{spelling}: {text}");
    }
    // Nor does predict's "wrote ..." line land among the predictions (without -q).
    let out = run(&[
        "predict",
        "-m",
        plain.to_str().unwrap(),
        "-c",
        config,
        "-o",
        "/dev/stdout",
    ]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !csv.contains("wrote"), "{csv}");

    // Refused before the work: train's --save to standard output without -q (its progress
    // goes there too), a descriptor open for reading only (standard input from a file),
    // and a checkpoint directory that is a link to a directory not there.
    let out = run(&["train", "-c", config, "--save", "/dev/stdout"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is standard output, where the run prints its progress: add -q"));
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "-c", config, "--save", "/dev/stdin"])
        .stdin(std::fs::File::open(&log).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("descriptor 0 is open for reading only"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "trained first: {stderr}");
    let ck = dir.join("ck-link");
    std::os::unix::fs::symlink("no-such-ck", &ck).unwrap();
    // With a trailing slash too (which follows the link).
    for spelling in [ck.display().to_string(), format!("{}/", ck.display())] {
        let out = run(&["train", "-c", config, "--checkpoint", &spelling]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("is a link to no-such-ck, which is not there"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "trained first: {stderr}");
    }
}

/// Results that cannot be written to standard output (a full disk behind a redirect) fail
/// the command, where they were dropped with exit 0; a reader that left early (`| head`)
/// is not an error.
#[test]
fn a_failed_write_to_standard_output_fails_the_command() {
    if !std::path::Path::new("/dev/full").exists() {
        // The kernel's always-full device is what this test writes into.
        return;
    }
    let dir = temp_dir("cli-stdout-full");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "seed = 2\n[data]\nsynthetic = \"linear\"\nn = 400\nd = 3\n[train]\nepochs = 1\nthreads = 1\n",
    )
    .unwrap();
    let (config, model) = (config.to_str().unwrap(), dir.join("m.safetensors"));
    let model = model.to_str().unwrap();
    assert!(
        run(&["train", "-q", "-c", config, "--save", model])
            .status
            .success()
    );
    for args in [
        &["predict", "-m", model, "-c", config, "-o", "-"][..],
        &["eval", "-m", model, "-c", config],
        &["layout", "-c", config],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write standard output: No space left"),
            "{args:?}: {stderr}"
        );
    }
    // A reader that stops after the first line: exit 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["predict", "-m", model, "-c", config, "-o", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
