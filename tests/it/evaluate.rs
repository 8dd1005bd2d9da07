//! eval and predict on a saved model: the model loaded from the file computes what the
//! trainer computed before saving it (its validation loss and accuracy), and predictions are
//! a CSV with one row per example and probabilities that sum to 1.

use std::process::Command;

use crate::common::{temp_dir, write_npy};

/// Two classes named by words, one per sign of the first feature.
const CATS_AND_DOGS: &str =
    "x,y,species\n1,0,cat\n2,0,cat\n3,0,cat\n-1,0,dog\n-2,0,dog\n-3,0,dog\n";

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
    // A file whose statistics are damaged is refused, not run on raw features: here the
    // deviations reshaped to (1, 2).
    let damaged = dir.join("damaged.safetensors");
    std::fs::copy(&model, &damaged).unwrap();
    edit_header(&damaged, |header| {
        header["standardize.std"]["shape"] = serde_json::json!([1, 2]);
    });
    let err = refused(&["eval", "--model", damaged.to_str().unwrap()]);
    assert!(
        err.contains("`standardize.std` is F32 of shape [1, 2]; expected a 1-D F32 tensor"),
        "{err}"
    );
}

/// Runs the binary and returns its exit code, stdout and stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary's message for input it must refuse with exit code 2.
fn refused(args: &[&str]) -> String {
    let (code, _, stderr) = run(args);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The (target, prediction) columns of a predictions file.
fn targets_and_predictions(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// Rewrites a safetensors file without the `classes` metadata, as files were saved before
/// the class names were recorded.
fn drop_class_names(path: &std::path::Path) {
    edit_metadata(path, |metadata| {
        metadata
            .remove("classes")
            .expect("the file had class names");
    });
}

/// Rewrites a safetensors file's metadata with `edit`.
fn edit_metadata(
    path: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    edit_header(path, |header| {
        edit(header["__metadata__"].as_object_mut().unwrap())
    });
}

/// Rewrites a safetensors file's header (tensor entries and metadata) with `edit`.
fn edit_header(
    path: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header.as_object_mut().unwrap());
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn word_labels_are_read_as_the_classes_the_model_was_trained_on() {
    let dir = temp_dir("evaluate-words");
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let train = file("t.csv", CATS_AND_DOGS);
    let config = file(
        "t.toml",
        &format!(
            "[data]\npath = \"{train}\"\nlabel = \"species\"\n[model]\nkind = \"mlp\"\nhidden = [4]\n[train]\nepochs = 50\nbatch_size = 2\nlr = 0.1\nthreads = 1\n"
        ),
    );
    // "zebra" sorts after "dog": read on its own, it would take the id of "dog".
    let zebra = file("z.csv", "x,y,species\n1,0,zebra\n-1,0,dog\n");
    // Only the second class, before the first in the file.
    let dogs = file("d.csv", "x,y,species\n-1,0,dog\n-2,0,dog\n");
    let model = dir.join("m.safetensors");
    let model = model.to_str().unwrap();
    minibatch(&["train", "-q", "-c", &config, "--save", model]);
    assert_eq!(
        minibatch::checkpoint::load_class_names(std::path::Path::new(model)).unwrap(),
        Some(vec!["cat".to_string(), "dog".to_string()])
    );
    let on_training = minibatch(&["eval", "-m", model, "--data", &train]);
    assert!(on_training.contains("accuracy 100.00%"), "{on_training}");
    let predictions = dir.join("p.csv");
    let out = predictions.to_str().unwrap();
    let check = || {
        let err = refused(&["eval", "-m", model, "--data", &zebra]);
        assert!(
            err.contains("z.csv:2: label `zebra` is not a class of the training data [cat, dog]"),
            "{err}"
        );
        minibatch(&["predict", "-q", "-m", model, "--data", &dogs, "-o", out]);
        // Classes by the names the labels gave them.
        assert_eq!(
            targets_and_predictions(&predictions),
            vec![("dog".into(), "dog".into()); 2]
        );
        let csv = std::fs::read_to_string(&predictions).unwrap();
        assert!(
            csv.starts_with("row,target,prediction,p_cat,p_dog\n"),
            "{csv}"
        );
        let evaluated = minibatch(&["eval", "-m", model, "--data", &train]);
        let matrix: Vec<&str> = evaluated.lines().rev().take(3).collect();
        assert!(
            matrix[2].split_whitespace().eq(["cat", "dog"])
                && matrix[1].split_whitespace().eq(["cat", "3", "0"])
                && matrix[0].split_whitespace().eq(["dog", "0", "3"]),
            "{evaluated}"
        );
    };
    check();
    // Data to predict on has no labels yet: a CSV with only the model's features.
    let unlabelled = file("new.csv", "x,y\n2,0\n-2,0\n");
    minibatch(&[
        "predict",
        "-q",
        "-m",
        model,
        "--data",
        &unlabelled,
        "-o",
        out,
    ]);
    assert_eq!(
        targets_and_predictions(&predictions),
        vec![("".into(), "cat".into()), ("".into(), "dog".into())]
    );
    // The same rows as a .npy with no targets file.
    let npy = dir.join("new.npy");
    let values: Vec<u8> = [2.0f32, 0.0, -2.0, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_npy(&npy, "<f4", "(2, 2)", &values);
    minibatch(&[
        "predict",
        "-q",
        "-m",
        model,
        "--data",
        npy.to_str().unwrap(),
        "-o",
        out,
    ]);
    assert_eq!(
        targets_and_predictions(&predictions),
        vec![("".into(), "cat".into()), ("".into(), "dog".into())]
    );
    // eval needs the targets.
    let err = refused(&["eval", "-m", model, "--data", npy.to_str().unwrap()]);
    assert!(err.contains("--labels"), "{err}");
    // Class names that do not match the model's outputs are refused (they were indexed
    // by class id).
    let one_name = dir.join("one-name.safetensors");
    std::fs::copy(model, &one_name).unwrap();
    edit_metadata(&one_name, |metadata| {
        metadata.insert("classes".into(), "[\"cat\"]".into());
    });
    let err = refused(&["eval", "-m", one_name.to_str().unwrap()]);
    assert!(
        err.contains("metadata `classes` names 1 class, and the model has 2 classes"),
        "{err}"
    );
    // A file saved without class names reads them from the training data in its config.
    drop_class_names(std::path::Path::new(model));
    assert_eq!(
        minibatch::checkpoint::load_class_names(std::path::Path::new(model)).unwrap(),
        None
    );
    check();
}

#[test]
fn data_for_a_saved_model_may_lack_classes_but_not_have_new_ones() {
    let dir = temp_dir("evaluate-subset");
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let train = file(
        "n.csv",
        "a,b,label\n0,0,0\n1,0,1\n0,1,2\n1,1,0\n2,0,1\n0,2,2\n",
    );
    let config = file(
        "n.toml",
        &format!("[data]\npath = \"{train}\"\n[train]\nepochs = 1\nbatch_size = 2\nthreads = 1\n"),
    );
    let model = dir.join("m.safetensors");
    let model = model.to_str().unwrap();
    minibatch(&["train", "-q", "-c", &config, "--save", model]);
    let out = dir.join("p.csv");
    let out = out.to_str().unwrap();

    let first_two = file("n01.csv", "a,b,label\n0,0,0\n1,0,1\n");
    minibatch(&[
        "predict", "-q", "-m", model, "--data", &first_two, "-o", out,
    ]);
    let csv = std::fs::read_to_string(out).unwrap();
    assert!(csv.starts_with("row,target,prediction,p0,p1,p2\n"), "{csv}");
    let targets: Vec<String> = targets_and_predictions(std::path::Path::new(out))
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(targets, ["0", "1"]);
    let evaluated = minibatch(&["eval", "-m", model, "--data", &first_two]);
    assert!(evaluated.contains("on 2 rows"), "{evaluated}");

    let beyond = file("n3.csv", "a,b,label\n0,0,0\n1,0,3\n");
    let err = refused(&["eval", "-m", model, "--data", &beyond]);
    assert!(
        err.contains("n3.csv:3: label 3 is not a class of the training data (class ids 0 to 2)"),
        "{err}"
    );
    let word = file("w.csv", "a,b,label\n0,0,0\n1,0,cat\n");
    let err = refused(&["predict", "-m", model, "--data", &word, "-o", out]);
    assert!(
        err.contains(
            "w.csv:3: label `cat` is not a class id; the training labels are the numbers 0 to 2"
        ),
        "{err}"
    );
    // Another width names the file and the model's.
    let narrow = file("g.csv", "a,label\n0,0\n");
    let err = refused(&["eval", "-m", model, "--data", &narrow]);
    assert!(
        err.contains("g.csv: has 1 feature; the model expects 2"),
        "{err}"
    );
}

#[test]
fn data_for_a_saved_model_may_come_in_another_format_or_sparser() {
    let dir = temp_dir("evaluate-formats");
    // Three features, label column named, so the model's config carries CSV settings.
    let rows = [
        ([0.5, 0.0, 1.0], 1),
        ([0.0, 2.0, 0.0], 0),
        ([1.5, 0.0, 0.5], 1),
        ([0.0, 1.0, 0.0], 0),
    ];
    let mut csv = String::from("a,b,c,y\n");
    let mut svm = String::new();
    let mut sparse = String::new();
    for (x, y) in rows.iter().cycle().take(40) {
        csv += &format!("{},{},{},{y}\n", x[0], x[1], x[2]);
        svm += &format!("{y} 1:{} 2:{} 3:{}\n", x[0], x[1], x[2]);
        // Index 3 never appears: the file alone would have 2 features.
        sparse += &format!("{y} 1:{} 2:{}\n", x[0], x[1]);
    }
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    std::fs::write(dir.join("d.svm"), &svm).unwrap();
    std::fs::write(dir.join("sparse.svm"), sparse).unwrap();
    let data = dir.join("d.csv");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\npath = {:?}\nlabel = \"y\"\nheader = true\n[train]\nepochs = 2\nbatch_size = 8\nthreads = 1\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let model = dir.join("m.safetensors");
    save_trained(&config, &model);
    let model = model.to_str().unwrap();
    let eval =
        |file: &str| minibatch(&["eval", "-m", model, "-d", dir.join(file).to_str().unwrap()]);
    // The same rows as LIBSVM evaluate as the CSV did.
    let as_csv = eval("d.csv");
    assert_eq!(eval("d.svm"), as_csv.replace("d.csv", "d.svm"));
    // A LIBSVM file whose rows never reach the last feature is read at the model's width,
    // and as a validation file at the training file's.
    assert!(eval("sparse.svm").contains("accuracy"));
    let svm_config = dir.join("svm.toml");
    std::fs::write(
        &svm_config,
        format!(
            "[data]\npath = {:?}\nvalid_path = {:?}\n[train]\nepochs = 1\nbatch_size = 8\nthreads = 1\n",
            dir.join("d.svm").to_str().unwrap(),
            dir.join("sparse.svm").to_str().unwrap()
        ),
    )
    .unwrap();
    let trained = minibatch(&["train", "-c", svm_config.to_str().unwrap()]);
    assert!(trained.contains("valid"), "{trained}");
}

#[test]
fn a_model_moved_without_its_training_data_still_evaluates_and_predicts_new_data() {
    let dir = temp_dir("evaluate-moved");
    let train = dir.join("t.csv");
    let rows = CATS_AND_DOGS;
    std::fs::write(&train, rows).unwrap();
    let new = dir.join("new.csv");
    std::fs::write(&new, rows).unwrap();
    let config = dir.join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\npath = {:?}\nlabel = \"species\"\n[model]\nhidden = [4]\n[train]\nepochs = 50\nbatch_size = 2\nlr = 0.1\nthreads = 1\n",
            train.to_str().unwrap()
        ),
    )
    .unwrap();
    let (model, ckpt) = (dir.join("m.safetensors"), dir.join("ck"));
    minibatch(&[
        "train",
        "-q",
        "-c",
        config.to_str().unwrap(),
        "--save",
        model.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    let on_training = minibatch(&[
        "eval",
        "-m",
        model.to_str().unwrap(),
        "-d",
        new.to_str().unwrap(),
    ]);
    std::fs::remove_file(&train).unwrap();
    // Both a --save file and a checkpoint name their model: no training data needed.
    let last_checkpoint = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    for saved in [&model, &last_checkpoint] {
        let saved = saved.to_str().unwrap();
        let evaluated = minibatch(&["eval", "-m", saved, "-d", new.to_str().unwrap()]);
        assert_eq!(evaluated, on_training);
    }
    let predictions = dir.join("p.csv");
    minibatch(&[
        "predict",
        "-q",
        "-m",
        model.to_str().unwrap(),
        "-d",
        new.to_str().unwrap(),
        "-o",
        predictions.to_str().unwrap(),
    ]);
    assert_eq!(
        targets_and_predictions(&predictions)[0],
        ("cat".into(), "cat".into())
    );
    // Its own data is the training file, which is gone: that says so.
    let err = refused(&["eval", "-m", model.to_str().unwrap()]);
    assert!(err.contains("t.csv"), "{err}");
}

/// Writes `csv` as t.csv in `dir`, trains a config of it (`data` keys besides the path,
/// then the `[train]` table's `train` keys) and returns the saved model's path.
fn trained_on_csv(dir: &std::path::Path, csv: &str, data: &str, train: &str) -> String {
    let path = dir.join("t.csv");
    std::fs::write(&path, csv).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\npath = {:?}\n{data}[train]\nthreads = 1\n{train}",
            path.to_str().unwrap()
        ),
    )
    .unwrap();
    let model = dir.join("m.safetensors");
    save_trained(&config, &model);
    model.to_str().unwrap().to_string()
}

/// Trains `config` and saves the model to `model`.
fn save_trained(config: &std::path::Path, model: &std::path::Path) {
    let (config, model) = (config.to_str().unwrap(), model.to_str().unwrap());
    minibatch(&["train", "-q", "-c", config, "--save", model]);
}

/// A fresh directory with a config of the synthetic linear set (`n` rows, `d` features)
/// and the model trained on it: (directory, config, model file).
fn linear_model(
    name: &str,
    n: usize,
    d: usize,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(name);
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\nsynthetic = \"linear\"\nn = {n}\nd = {d}\n[train]\nepochs = 2\nthreads = 1\n"
        ),
    )
    .unwrap();
    let model = dir.join("m.safetensors");
    save_trained(&config, &model);
    (dir, config, model)
}

/// A regression model trained on a synthetic set (whose config names no task) reads the
/// real targets of a file given to eval and predict as real targets: its head says so.
#[test]
fn a_regression_model_from_synthetic_data_evaluates_real_targets_from_a_file() {
    let (dir, _, model) = linear_model("eval-synthetic-regression", 400, 3);
    let model = model.to_str().unwrap();
    let data = dir.join("reg.csv");
    std::fs::write(&data, "a,b,c,y\n1,2,3,4.5\n-1,0.5,2,-0.25\n").unwrap();
    let data = data.to_str().unwrap();
    let report = minibatch(&["eval", "-m", model, "--data", data]);
    assert!(report.contains("R^2"), "{report}");
    let out = dir.join("pred.csv");
    minibatch(&[
        "predict",
        "-m",
        model,
        "--data",
        data,
        "-o",
        out.to_str().unwrap(),
    ]);
    let rows = targets_and_predictions(&out);
    let targets: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(targets, ["4.5", "-0.25"]);
    // `-o -` writes the same CSV to standard output, and nothing else there.
    let piped = minibatch(&["predict", "-m", model, "--data", data, "-o", "-"]);
    assert_eq!(piped, std::fs::read_to_string(&out).unwrap());
    // A file whose metadata names a model past any memory is refused, not an abort.
    edit_metadata(std::path::Path::new(model), |metadata| {
        metadata["model"] = "linear 99999999999-1".into();
    });
    let stderr = refused(&["eval", "-m", model, "--data", data]);
    assert!(
        stderr.contains("the linear 99999999999-1 parameters of"),
        "{stderr}"
    );
}

/// --labels belongs to --data: beside --config (whose data names its own labels) it is
/// refused rather than ignored.
#[test]
fn labels_without_data_are_refused() {
    let (_, config, model) = linear_model("eval-labels-alone", 100, 2);
    let (config, model) = (config.to_str().unwrap(), model.to_str().unwrap());
    let stderr = refused(&["eval", "-m", model, "-c", config, "--labels", "y.npy"]);
    assert!(
        stderr.contains("`--labels`") && stderr.contains("goes with --data"),
        "{stderr}"
    );
}

/// eval on the model's own data, from a directory where the saved config's relative data
/// path does not resolve, says how to give the data instead.
#[test]
fn a_models_training_data_out_of_reach_points_at_data_flags() {
    let dir = temp_dir("eval-data-out-of-reach");
    std::fs::write(dir.join("rows.csv"), CATS_AND_DOGS).unwrap();
    std::fs::write(
        dir.join("c.toml"),
        "[data]\npath = \"rows.csv\"\n[model]\nkind = \"logistic\"\n[train]\nepochs = 1\n",
    )
    .unwrap();
    let at = |cwd: &std::path::Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let trained = at(
        &dir,
        &["train", "-q", "-c", "c.toml", "--save", "m.safetensors"],
    );
    assert!(trained.status.success(), "{trained:?}");
    let model = dir.join("m.safetensors");
    let elsewhere = dir.parent().unwrap();
    let out = at(elsewhere, &["eval", "-m", model.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read rows.csv"), "{stderr}");
    assert!(stderr.contains("give data with --data FILE"), "{stderr}");
}

/// predict on a config's validation split names each row by its row in the data file, not
/// by its place in the shuffled split: here each target is its own row number.
#[test]
fn predictions_on_a_validation_split_name_the_files_rows() {
    let dir = temp_dir("predict-split-rows");
    let mut csv = String::from("x,y\n");
    for i in 0..40 {
        csv += &format!("{},{i}\n", i as f32 / 40.0);
    }
    let model = trained_on_csv(
        &dir,
        &csv,
        "task = \"regression\"\nvalid_fraction = 0.25\n",
        "epochs = 1\nbatch_size = 5\n",
    );
    let out = dir.join("p.csv");
    minibatch(&["predict", "-q", "-m", &model, "-o", out.to_str().unwrap()]);
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<(usize, f32)> = text
        .lines()
        .skip(1)
        .map(|line| {
            let mut fields = line.split(',');
            let row = fields.next().unwrap().parse().unwrap();
            (row, fields.next().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 10, "{text}");
    for (row, target) in &rows {
        assert_eq!(*row as f32, *target, "{text}");
    }
    // A shuffled split: not simply the first or last rows.
    let mut sorted: Vec<usize> = rows.iter().map(|r| r.0).collect();
    sorted.sort();
    assert_ne!(sorted, (0..10).collect::<Vec<_>>());
    assert_ne!(sorted, (30..40).collect::<Vec<_>>());
}

/// Data given to a model trained on standardised features, whose values standardise past
/// f32's range, is refused with the row, not evaluated as infinities.
#[test]
fn data_that_standardises_past_f32_is_refused_with_its_row() {
    let dir = temp_dir("evaluate-standardize-overflow");
    let mut csv = String::from("x,y\n");
    for i in 0..20 {
        csv += &format!("{}e-30,{}\n", if i % 2 == 0 { 1 } else { -1 }, i % 2);
    }
    std::fs::write(dir.join("new.csv"), "x,y\n1e-30,0\n1e10,1\n").unwrap();
    let model = trained_on_csv(
        &dir,
        &csv,
        "standardize = true\n",
        "epochs = 1\nbatch_size = 4\n",
    );
    let new = dir.join("new.csv");
    let err = refused(&["eval", "-m", &model, "--data", new.to_str().unwrap()]);
    assert!(
        err.contains("new.csv") && err.contains("row 2: a standardised feature is past f32"),
        "{err}"
    );
    // Through a config whose validation file holds the row: that file is named.
    let config = dir.join("valid.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\npath = {:?}\nvalid_path = {:?}\n",
            dir.join("t.csv").to_str().unwrap(),
            new.to_str().unwrap()
        ),
    )
    .unwrap();
    let err = refused(&["eval", "-m", &model, "-c", config.to_str().unwrap()]);
    assert!(
        err.contains("new.csv") && err.contains("row 2: a standardised feature is past f32"),
        "{err}"
    );
}

/// Features far outside what a model was trained on can overflow its outputs: eval and
/// predict refuse the row rather than report a loss of NaN or a made-up class.
#[test]
fn rows_whose_outputs_overflow_are_refused_with_their_row() {
    let dir = temp_dir("eval-overflow");
    // y = 50 (a + b): the weights grow well past 1, so 3e38 in both features overflows.
    let mut csv = String::from("a,b,y\n");
    for i in 0..40 {
        let (a, b) = ((i % 5) as f32 / 4.0 - 0.5, (i % 7) as f32 / 6.0 - 0.5);
        csv += &format!("{a},{b},{}\n", 50.0 * (a + b));
    }
    let model = trained_on_csv(
        &dir,
        &csv,
        "task = \"regression\"\n",
        "epochs = 100\nbatch_size = 4\nlr = 0.3\n",
    );
    let model = model.as_str();
    let data = dir.join("huge.csv");
    std::fs::write(&data, "a,b,y\n1,2,0.5\n3e38,3e38,1\n").unwrap();
    let data = data.to_str().unwrap();
    for args in [
        vec!["eval", "-m", model, "--data", data],
        vec!["predict", "-m", model, "--data", data, "-o", "-"],
    ] {
        let err = refused(&args);
        assert!(
            err.contains("huge.csv: row 2: the model's output is not finite"),
            "{args:?}: {err}"
        );
    }
}

/// The header's feature names are saved with the model: another file whose header has the
/// same columns in another order, or other names, is refused instead of read by position
/// (which fed one feature's values in as another's); the same header, or none, is read.
#[test]
fn feature_columns_in_another_order_or_under_other_names_are_refused() {
    let dir = temp_dir("evaluate-feature-names");
    let mut csv = String::from("a,b,c,label\n");
    for i in 0..40 {
        let (a, b, c) = (i as f32 / 10.0, (i % 7) as f32, (i % 3) as f32 - 1.0);
        csv += &format!("{a},{b},{c},{}\n", i % 2);
    }
    let model = trained_on_csv(&dir, &csv, "", "epochs = 1\nbatch_size = 8\n");
    let names = minibatch::checkpoint::load_feature_names(std::path::Path::new(&model))
        .unwrap()
        .unwrap();
    assert_eq!(names, ["a", "b", "c"]);
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let same = file("same.csv", "a,b,c,label\n1,2,0,1\n0.5,3,1,0\n");
    let bare = file("bare.csv", "1,2,0,1\n0.5,3,1,0\n");
    let moved = file("moved.csv", "c,a,b,label\n0,1,2,1\n1,0.5,3,0\n");
    let renamed = file("renamed.csv", "a,x,c,label\n1,2,0,1\n0.5,3,1,0\n");
    for data in [&same, &bare] {
        let (code, _, stderr) = run(&["eval", "-m", &model, "--data", data]);
        assert_eq!(code, Some(0), "{data}: {stderr}");
    }
    let err = refused(&["eval", "-m", &model, "--data", &moved]);
    assert!(
        err.contains("moved.csv")
            && err.contains("the feature columns of the model's training data in another order"),
        "{err}"
    );
    let err = refused(&["predict", "-m", &model, "--data", &renamed, "-o", "-"]);
    assert!(
        err.contains("renamed.csv")
            && err.contains("feature column 2 is `x`, where the model's training data has `b`"),
        "{err}"
    );
    // Training from the model's parameters (--init) on the reordered file, and training
    // with it as the validation file: refused alike.
    let write_config = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let on_moved = write_config(
        "moved.toml",
        format!("[data]\npath = {moved:?}\n[train]\nepochs = 1\nbatch_size = 2\n"),
    );
    let err = refused(&["train", "-c", &on_moved, "--init", &model]);
    assert!(
        err.contains("moved.csv") && err.contains("in another order") && err.contains("--init"),
        "{err}"
    );
    let t = dir.join("t.csv");
    let validated_on_moved = write_config(
        "valid.toml",
        format!(
            "[data]\npath = {:?}\nvalid_path = {moved:?}\n[train]\nepochs = 1\n",
            t.to_str().unwrap()
        ),
    );
    let err = refused(&["train", "-c", &validated_on_moved]);
    assert!(
        err.contains("moved.csv")
            && err.contains("the feature columns of the training file in another order"),
        "{err}"
    );
}

/// A model trained on word classes evaluates .npy data, whose labels can only be numbers:
/// they are the class ids (positions in the sorted names), and give what the words give.
#[test]
fn npy_labels_are_class_ids_for_a_model_of_word_classes() {
    let dir = temp_dir("evaluate-npy-words");
    let mut csv = String::from("a,b,label\n");
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let (a, b) = ((i % 7) as f32, (i % 5) as f32);
        let class = i % 3;
        csv += &format!("{a},{b},{}\n", ["cat", "dog", "eel"][class]);
        x.extend([a, b]);
        y.push(class as f32);
    }
    let model = trained_on_csv(&dir, &csv, "", "epochs = 2\nbatch_size = 10\n");
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    write_npy(&dir.join("x.npy"), "<f4", "(60, 2)", &bytes(&x));
    write_npy(&dir.join("y.npy"), "<f4", "(60,)", &bytes(&y));
    let t = dir.join("t.csv");
    let on_words = minibatch(&["eval", "-m", &model, "--data", t.to_str().unwrap()]);
    let on_ids = minibatch(&[
        "eval",
        "-m",
        &model,
        "--data",
        dir.join("x.npy").to_str().unwrap(),
        "--labels",
        dir.join("y.npy").to_str().unwrap(),
    ]);
    assert_eq!(on_ids, on_words);
    // An id past the classes is named with them.
    y[4] = 3.0;
    write_npy(&dir.join("y.npy"), "<f4", "(60,)", &bytes(&y));
    let err = refused(&[
        "eval",
        "-m",
        &model,
        "--data",
        dir.join("x.npy").to_str().unwrap(),
        "--labels",
        dir.join("y.npy").to_str().unwrap(),
    ]);
    assert!(
        err.contains("row 5: label 3 is not a class id 0 to 2 (a .npy file's labels are the positions of the classes [cat, dog, eel])"),
        "{err}"
    );
}

/// The CSV keys of a model's config carry over to a CSV given to eval when either of its
/// training files was CSV: a model trained on LIBSVM rows with a CSV validation file whose
/// label is named reads another such CSV the same way (its label column was dropped, and
/// `y` fed in as a feature).
#[test]
fn csv_keys_carry_over_from_a_csv_validation_file() {
    let dir = temp_dir("evaluate-csv-keys");
    let (mut svm, mut csv) = (String::new(), String::from("y,a,b\n"));
    for i in 0..40 {
        let (a, b, y) = ((i % 7) as f32, (i % 5) as f32, i % 2);
        svm += &format!("{y} 1:{a} 2:{b}\n");
        csv += &format!("{y},{a},{b}\n");
    }
    std::fs::write(dir.join("t.svm"), svm).unwrap();
    std::fs::write(dir.join("v.csv"), &csv).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\npath = {:?}\nvalid_path = {:?}\nlabel = \"y\"\n[train]\nepochs = 2\nbatch_size = 8\nthreads = 1\n",
            dir.join("t.svm").to_str().unwrap(),
            dir.join("v.csv").to_str().unwrap()
        ),
    )
    .unwrap();
    let model = dir.join("m.safetensors");
    save_trained(&config, &model);
    let model = model.to_str().unwrap();
    let via_config = minibatch(&["eval", "-m", model, "-c", config.to_str().unwrap()]);
    let via_data = minibatch(&[
        "eval",
        "-m",
        model,
        "--data",
        dir.join("v.csv").to_str().unwrap(),
    ]);
    assert_eq!(via_data, via_config);
}
