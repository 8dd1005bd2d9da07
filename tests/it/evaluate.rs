//! eval and predict on a saved model: the model loaded from the file computes what the
//! trainer computed before saving it (its validation loss and accuracy), and predictions are
//! a CSV with one row per example and probabilities that sum to 1.

use std::process::Command;

use crate::common::temp_dir;

fn minibatch(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_saved_model_evaluates_and_predicts_as_it_trained() {
    let dir = temp_dir("evaluate");
    let config = dir.join("c.toml");
    std::fs::write(&config, "seed = 4\n[data]\nsynthetic = \"teacher\"\nn = 1500\nd = 12\nclasses = 3\nvalid_fraction = 0.2\n[model]\nhidden = [10]\n[train]\nepochs = 3\nbatch_size = 32\nlr = 0.1\n").unwrap();
    let model = dir.join("m.safetensors");
    let trained = minibatch(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--save",
        model.to_str().unwrap(),
    ]);
    // "epoch   3/3  train loss X acc Y%  valid loss Z acc W%": the last epoch's validation.
    let last = trained
        .lines()
        .find(|l| l.starts_with("epoch   3/3"))
        .unwrap();
    let after = |key: &str| {
        last.split(key)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let (valid_loss, valid_acc) = (
        after("valid loss "),
        last.rsplit("acc ")
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string(),
    );

    let evaluated = minibatch(&["eval", "--model", model.to_str().unwrap()]);
    assert!(
        evaluated.contains(&format!("on 300 rows: mean loss {valid_loss}")),
        "{evaluated}\nvs {last}"
    );
    assert!(
        evaluated.contains(&format!("accuracy {valid_acc}")),
        "{evaluated}\nvs {last}"
    );
    assert!(evaluated.contains("confusion matrix"));

    let predictions = dir.join("p.csv");
    minibatch(&[
        "predict",
        "-q",
        "--model",
        model.to_str().unwrap(),
        "--out",
        predictions.to_str().unwrap(),
    ]);
    let csv = std::fs::read_to_string(&predictions).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "row,target,prediction,p0,p1,p2");
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 300);
    for r in &rows {
        let probs = &r[3..];
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let argmax = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(r[2] as usize, argmax);
    }
}

#[test]
fn a_model_trained_on_standardised_data_is_evaluated_with_its_own_statistics() {
    let dir = temp_dir("evaluate-standardized");
    // Features with large offsets and scales, so unstandardised inputs would be far off.
    let mut csv = String::from("a,b,y\n");
    for i in 0..400 {
        let (a, b) = (1000.0 + (i % 17) as f64 * 3.0, -50.0 + (i % 5) as f64 * 0.1);
        let y = usize::from((i % 17) > 8);
        csv += &format!("{a},{b},{y}\n");
    }
    std::fs::write(dir.join("d.csv"), &csv).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!("seed = 1\n[data]\npath = \"{}\"\nvalid_fraction = 0.25\nstandardize = true\n[train]\nepochs = 20\nbatch_size = 16\nlr = 0.5\n", dir.join("d.csv").display()),
    )
    .unwrap();
    let model = dir.join("m.safetensors");
    let trained = minibatch(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--save",
        model.to_str().unwrap(),
    ]);
    let last = trained
        .lines()
        .rfind(|l| l.starts_with("epoch"))
        .unwrap()
        .to_string();
    let valid_loss = last
        .split("valid loss ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // The statistics travel in the file, as tensors numpy can read.
    let stats = minibatch::checkpoint::load_standardization(&model)
        .unwrap()
        .expect("saved statistics");
    assert_eq!(stats.0.len(), 2);
    assert!(
        stats.0[0] > 1000.0,
        "mean of the first feature: {}",
        stats.0[0]
    );
    // eval reads the data raw and applies them: the same validation loss as in training.
    let evaluated = minibatch(&["eval", "--model", model.to_str().unwrap()]);
    assert!(
        evaluated.contains(&format!("mean loss {valid_loss}")),
        "{evaluated}\nvs {last}"
    );
    // A data file given directly: every row, read with the model's label settings.
    let csv_path = dir.join("d.csv");
    let on_file = minibatch(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        csv_path.to_str().unwrap(),
    ]);
    assert!(on_file.contains("logistic 2-1 on 400 rows"), "{on_file}");
}
