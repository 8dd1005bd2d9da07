//! The thread count changes the speed and nothing else: the same config trained on 1, 2, 3,
//! 4 and 8 threads saves byte-identical parameter files.

use std::process::Command;

fn train_and_read(
    config: &std::path::Path,
    threads: usize,
    dir: &std::path::Path,
    extra: &[&str],
) -> Vec<u8> {
    let out = dir.join(format!("params-{threads}.safetensors"));
    let status = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(["train", "--quiet", "--config"])
        .arg(config)
        .args(["--threads", &threads.to_string(), "--save"])
        .arg(&out)
        .args(extra)
        .status()
        .expect("binary runs");
    assert!(status.success(), "training on {threads} threads failed");
    std::fs::read(&out).unwrap()
}

fn assert_identical_across_threads(name: &str, toml_text: &str, extra: &[&str]) {
    let dir = crate::common::temp_dir(name);
    let config = dir.join("cfg.toml");
    std::fs::write(&config, toml_text).unwrap();
    let reference = train_and_read(&config, 1, &dir, extra);
    for threads in [2, 3, 4, 8] {
        assert!(
            train_and_read(&config, threads, &dir, extra) == reference,
            "{name}: parameters on {threads} threads differ from 1 thread"
        );
    }
}

#[test]
fn mlp_params_are_bit_identical_for_1_2_3_4_8_threads() {
    // 7 shards per batch (the last one short) and a short last batch per epoch.
    assert_identical_across_threads(
        "det-mlp",
        r#"
        seed = 3
        [data]
        synthetic = "teacher"
        n = 1000
        d = 20
        classes = 4
        [model]
        kind = "mlp"
        hidden = [16, 8]
        [train]
        epochs = 2
        batch_size = 100
        shard_rows = 15
        lr = 0.1
        "#,
        &[],
    );
}

#[test]
fn default_shards_of_small_batches_are_bit_identical_for_1_2_3_4_8_threads() {
    // No shard_rows: B = 33 in halves of 17 and 16 rows (the default for 32-127 rows), and
    // a last batch of 10 rows in one shard; then B = 96 in halves of 48, packed weights.
    for (name, b, hidden) in [
        ("det-halves-33", 33, "[16]"),
        ("det-halves-96", 96, "[64, 32]"),
    ] {
        let config = format!(
            "seed = 5\n[data]\nsynthetic = \"teacher\"\nn = 1000\nd = 40\nclasses = 3\n\
             [model]\nkind = \"mlp\"\nhidden = {hidden}\n\
             [train]\nepochs = 1\nbatch_size = {b}\nlr = 0.1\noptimizer = \"adam\"\n"
        );
        assert_identical_across_threads(name, &config, &[]);
    }
}

#[test]
fn packed_mlp_params_are_bit_identical_for_1_2_3_4_8_threads() {
    // Shards of 64 rows, so the weights are packed for the kernel (a copy per thread on 2,
    // 3, 4 and 8 threads), and widths that leave partial panels. Eight shards a step run
    // in groups passed through the model at once: of 8 on 1 thread (two k-blocks of the
    // kernel's sums), 4 on 2, 2 on 4, one by one on 3 and 8; the epoch's last batch (3
    // shards, the last short) as one ragged group on 1 thread.
    assert_identical_across_threads(
        "det-packed",
        r#"
        seed = 4
        [data]
        synthetic = "teacher"
        n = 1200
        d = 40
        classes = 5
        [model]
        kind = "mlp"
        hidden = [72, 40]
        [train]
        epochs = 2
        batch_size = 512
        shard_rows = 64
        lr = 0.1
        "#,
        &[],
    );
}

#[test]
fn logistic_params_are_bit_identical_with_uniform_sampling_and_wide_reduction() {
    // d = 20000 takes the column-parallel path of the reduction and of the update.
    assert_identical_across_threads(
        "det-logistic",
        r#"
        seed = 4
        [data]
        synthetic = "logistic"
        n = 400
        d = 20000
        [train]
        epochs = 1
        batch_size = 64
        shard_rows = 8
        sampling = "uniform"
        lr = 0.5
        "#,
        &[],
    );
}

#[test]
fn every_optimizer_with_schedule_and_clipping_is_bit_identical_on_1_and_2_threads() {
    for (optimizer, extra) in [
        ("sgd", "weight_decay = 0.01\n"),
        ("momentum", "dampening = 0.1\n"),
        ("nesterov", ""),
        ("adam", "weight_decay = 0.01\n"),
        ("adamw", "weight_decay = 0.1\n"),
    ] {
        let toml_text = format!(
            "seed = 5\n[data]\nsynthetic = \"teacher\"\nn = 600\nd = 12\nclasses = 3\n[model]\nhidden = [10]\n\
             [train]\nepochs = 2\nbatch_size = 50\nshard_rows = 7\nlr = 0.01\noptimizer = \"{optimizer}\"\nclip_norm = 0.5\n{extra}\
             [train.schedule]\nkind = \"cosine\"\nwarmup_steps = 5\nmin_lr = 0.001\n"
        );
        let dir = crate::common::temp_dir(&format!("det-optim-{optimizer}"));
        let config = dir.join("cfg.toml");
        std::fs::write(&config, &toml_text).unwrap();
        let one = train_and_read(&config, 1, &dir, &[]);
        let two = train_and_read(&config, 2, &dir, &[]);
        assert!(
            one == two,
            "{optimizer}: parameters on 2 threads differ from 1 thread"
        );
    }
}
