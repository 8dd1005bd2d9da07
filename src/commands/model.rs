//! `minibatch layout`, `eval`, `predict` and `descent`: what a model is, how good a saved one
//! is, what it predicts, and the picture of its descent.

use minibatch::{Mlp, Model, RawConfig, Result, data};

use crate::cli::{ConfigArgs, DescentArgs, EvalArgs, PredictArgs};
use crate::load_config;

pub fn layout(args: &ConfigArgs) -> Result<()> {
    let (_, cfg) = load_config(args)?;
    let model = Mlp::new(cfg.model.clone());
    outln!(
        "{} ({} parameters)",
        cfg.model.describe(),
        model.layout().n_params()
    );
    let entries = model.layout().entries();
    let shapes: Vec<String> = entries.iter().map(|e| format!("{:?}", e.shape())).collect();
    let name_width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    let shape_width = shapes.iter().map(String::len).max().unwrap_or(0);
    for (entry, shape) in entries.iter().zip(&shapes) {
        outln!(
            "  {:<name_width$} {:<shape_width$} offset {}",
            entry.name,
            shape,
            entry.offset
        );
    }
    Ok(())
}

pub fn descent(args: &DescentArgs, quiet: bool) -> Result<()> {
    if !(args.noise.is_finite() && args.noise >= 0.0) {
        return Err(minibatch::Error::config(
            "--noise",
            "must be finite and >= 0",
        ));
    }
    let plan = minibatch::descent::DescentPlan {
        n: args.n,
        batch_size: args.batch_size,
        steps: args.steps,
        lr: args.lr,
        seed: args.seed,
        seeds: args.seeds,
        shown_seeds: args.show_seeds,
        noise: args.noise,
    };
    minibatch::checkpoint::check_output_dir(&args.out, &minibatch::descent::OUTPUT_FILES)?;
    let descent = minibatch::descent::run(&plan)?;
    minibatch::descent::write_outputs(&args.out, &descent)?;
    if args.text {
        out!("{}", minibatch::descent::to_text(&descent, 64, 24));
    }
    if !quiet {
        let (w, b) = descent.bowl.minimum();
        let end = descent.full_batch.last().copied().unwrap_or(descent.start);
        outln!(
            "least squares at w = {w:.4}, b = {b:.4}; full batch ended at w = {:.4}, b = {:.4} after {} step{}",
            end.0,
            end.1,
            plan.steps,
            super::s(plan.steps)
        );
        outln!(
            "wrote {} and {} (open the page in a browser; it needs no network)",
            args.out.join("descent.svg").display(),
            args.out.join("descent.html").display()
        );
    }
    Ok(())
}

/// The saved model, its parameters and the rows to evaluate on.
/// A saved model, its parameters, the data to run it on, its class names when its
/// training labels were words, and whether that data has labels.
struct SavedModel {
    model: Mlp,
    params: Vec<f32>,
    data: std::sync::Arc<minibatch::Dataset>,
    names: Option<Vec<String>>,
    labelled: bool,
    /// Each row's 0-based row in its file, where that is not its position (a validation
    /// split of one file).
    file_rows: Option<Vec<usize>>,
    /// The data file, for messages (none for synthetic data).
    data_path: Option<std::path::PathBuf>,
}

impl SavedModel {
    /// The model's outputs on the rows, refusing any row whose outputs are not finite:
    /// features far outside what the model was trained on can overflow it, and a NaN would
    /// show as the first class and a loss of NaN.
    fn outputs(&self) -> Result<ndarray::Array2<f32>> {
        let outputs = self.model.outputs(&self.params, self.data.x());
        let bad = outputs
            .rows()
            .into_iter()
            .position(|r| r.iter().any(|v| !v.is_finite()));
        let Some(i) = bad else {
            return Ok(outputs);
        };
        let row = self.file_rows.as_ref().map_or(i, |rows| rows[i]) + 1;
        let msg = format!(
            "row {row}: the model's output is not finite (features far outside the range it \
             was trained on overflow it)"
        );
        Err(data_error(self.data_path.as_deref(), "data", msg))
    }
}

/// The file whose rows are evaluated: the validation file when there is one.
fn evaluated_file(data: &minibatch::config::RawData) -> Option<std::path::PathBuf> {
    data.valid_path.clone().or_else(|| data.path.clone())
}

/// A problem with the rows given to a saved model: named by their file, or for synthetic
/// data by the config key `key`.
fn data_error(path: Option<&std::path::Path>, key: &str, msg: String) -> minibatch::Error {
    match path {
        Some(path) => minibatch::Error::Data {
            path: path.to_path_buf(),
            line: 0,
            msg,
        },
        None => minibatch::Error::config(key, msg),
    }
}

/// `eval`'s and `predict`'s model and data. With `unlabeled_ok` (predict), a CSV given by
/// --data whose rows have as many columns as the model has features, or a .npy without
/// --labels, is read as features only: data to predict on has no labels yet.
fn saved_model(args: &EvalArgs, unlabeled_ok: bool) -> Result<SavedModel> {
    // (clap's `requires` lets it through beside --config, which conflicts with --data.)
    if args.labels.is_some() && args.data.is_none() {
        return Err(minibatch::Error::config(
            "--labels",
            "goes with --data (the targets of a .npy features file); a config names its own",
        ));
    }
    let model_raw = RawConfig::from_toml(
        &minibatch::checkpoint::model_config(&args.model)?,
        &args.model,
    )?;
    // The model as its file names it: then the training data its config points to is read
    // only when that is the data asked for (or for a file that does not name its model),
    // so a model moved without its training data still evaluates and predicts new data.
    let described = minibatch::checkpoint::model_description(&args.model)?
        .and_then(|text| minibatch::model::MlpSpec::parse(&text));
    let own_data = args.config.is_none() && args.data.is_none();
    let model_cfg = match (&described, own_data) {
        (Some(_), false) => None,
        // The training data, named by the saved config: say how to give other data when it
        // is not where that config says (a model moved to another directory or machine).
        _ => Some(model_raw.validate().map_err(|err| match err {
            minibatch::Error::Config { key, flag, msg } if key.starts_with("data.") => {
                minibatch::Error::Config {
                    key,
                    flag,
                    msg: format!(
                        "{msg} (the model's training data, as its saved config names it; \
                         give data with --data FILE or --config FILE)"
                    ),
                }
            }
            other => other,
        })?),
    };
    let spec = match (&model_cfg, described) {
        (Some(cfg), _) => cfg.model.clone(),
        (None, Some(spec)) => spec,
        (None, None) => unreachable!("validated above when the file does not name its model"),
    };
    // The file names its model, and its tensors (read next) must match; sized first, since
    // a damaged name could ask for more parameters than memory holds.
    let n_params = spec.widths().windows(2).try_fold(0u128, |n, w| {
        n.checked_add((w[0] as u128 + 1).checked_mul(w[1] as u128)?)
    });
    minibatch::memory::check(
        "model",
        &format!(
            "the {} parameters of {}",
            spec.describe(),
            args.model.display()
        ),
        n_params.and_then(|n| n.checked_mul(8)),
    )?;
    let model = Mlp::new(spec);
    let params = minibatch::checkpoint::load_params(&args.model, model.layout())?;
    // A model trained on standardised data carries its training statistics: read the data
    // raw and apply those, not statistics recomputed from whatever data is given now.
    let standardization = minibatch::checkpoint::load_standardization(&args.model)?;
    if let Some((mean, _)) = &standardization
        && mean.len() != model.spec().d_in
    {
        return Err(minibatch::Error::Parse {
            path: args.model.clone(),
            msg: format!(
                "its standardisation has {} features, and the model {}",
                mean.len(),
                model.spec().d_in
            ),
        });
    }
    let classes = trained_classes(args, &model_raw, model_cfg.as_ref(), &model)?;
    let names = classes
        .as_ref()
        .and_then(|c| c.names())
        .map(<[String]>::to_vec);
    let mut labelled = true;
    let (data_cfg, data_path) = match (&args.config, &args.data, &standardization) {
        (None, None, None) => {
            let path = evaluated_file(&model_raw.data);
            (model_cfg.expect("validated for its own data"), path)
        }
        (path, file, _) => {
            let mut raw = match (path, file) {
                (Some(path), _) => RawConfig::load(path)?,
                (None, Some(file)) => {
                    // The model's label settings, this file, all of its rows.
                    let mut raw = model_raw.clone();
                    let trained = &model_raw.data;
                    let format = minibatch::config::data_format(file, None);
                    // The CSV settings carry over to a CSV file only; a LIBSVM file's
                    // feature count is the model's (its rows may not reach the last index).
                    // (The training or the validation file: the CSV keys were for whichever
                    // was CSV.)
                    let csv = [&trained.path, &trained.valid_path]
                        .into_iter()
                        .flatten()
                        .any(|p| {
                            minibatch::config::data_format(p, trained.format.as_deref()) == "csv"
                        })
                        && format == "csv";
                    let delimiter = minibatch::config::csv_delimiter(
                        file,
                        trained.delimiter.as_deref().filter(|_| csv),
                    )
                    .unwrap_or(b',');
                    let unlabeled = unlabeled_ok
                        && match format.as_str() {
                            "csv" => {
                                minibatch::io::first_line_columns(file, delimiter)?
                                    == model.spec().d_in
                            }
                            "npy" => args.labels.is_none(),
                            _ => false,
                        };
                    if format == "npy" && !unlabeled && args.labels.is_none() {
                        return Err(minibatch::Error::config(
                            "--labels",
                            "is needed to evaluate a .npy features file: the targets' .npy",
                        ));
                    }
                    labelled = !unlabeled;
                    raw.data = minibatch::config::RawData {
                        path: Some(file.clone()),
                        labels: args.labels.clone(),
                        label: trained.label.clone().filter(|_| csv),
                        header: trained.header.filter(|_| csv),
                        delimiter: trained.delimiter.clone().filter(|_| csv),
                        // The model's head says what the targets are, whatever its
                        // training data named (a synthetic linear set names no task).
                        task: match model.spec().head {
                            minibatch::model::Head::Mse => Some("regression".into()),
                            _ => trained.task.clone(),
                        },
                        standardize: trained.standardize,
                        d: (format == "libsvm").then_some(model.spec().d_in),
                        unlabeled,
                        ..Default::default()
                    };
                    // Messages about these keys name the flags that gave them.
                    raw.mark_overridden("data.path", "--data");
                    raw.mark_overridden("data.labels", "--labels");
                    raw.train.batch_size = Some(1);
                    // Name the model's kind and head, so they are not inferred from this file.
                    let spec = model.spec();
                    if spec.hidden.is_empty() {
                        raw.model.kind = Some(spec.head.linear_kind().into());
                        raw.model.head = None;
                    } else {
                        raw.model.kind = Some("mlp".into());
                        raw.model.head = Some(spec.head.name().into());
                    }
                    raw
                }
                (None, None) => model_raw,
            };
            if standardization.is_some() {
                raw.data.standardize = None;
            }
            raw.data.trained_classes = classes;
            let path = evaluated_file(&raw.data);
            (raw.validate()?, path)
        }
    };
    let d_in = model.spec().d_in;
    if data_cfg.data.d != d_in {
        let d = data_cfg.data.d;
        return Err(match data_path {
            Some(path) => minibatch::Error::Data {
                path,
                line: 0,
                msg: format!("has {d} feature{}; the model expects {d_in}", super::s(d)),
            },
            None => minibatch::Error::config(
                "data.d",
                format!("is {d}; the model expects {d_in} features"),
            ),
        });
    }
    let head = model.spec().head;
    let wanted = head.n_classes();
    if data_cfg.data.n_classes != wanted {
        return Err(minibatch::Error::config(
            "data",
            format!(
                "the model expects {}, the data has {}",
                wanted.map_or("real targets".into(), |k| format!("{k} classes")),
                data_cfg
                    .data
                    .n_classes
                    .map_or("real targets".into(), |k| format!("{k} classes"))
            ),
        ));
    }
    let (train, valid) = data::load(&data_cfg.data, data_cfg.seed);
    let file_rows = match &valid {
        Some(_) => data_cfg
            .data
            .file
            .as_ref()
            .and_then(|f| f.valid_rows.clone()),
        None => None,
    };
    let rows = valid.unwrap_or(train);
    if let (Some(trained), Some(given)) = (
        minibatch::checkpoint::load_feature_names(&args.model)?,
        rows.feature_names(),
    ) && trained != given
    {
        let msg = minibatch::data::feature_mismatch(&trained, given, "the model's training data");
        return Err(data_error(data_path.as_deref(), "data", msg));
    }
    let rows = match standardization {
        Some((mean, std)) => {
            let mut rows = (*rows).clone();
            rows.standardize(&mean, &std).map_err(|row| {
                // A validation split's row as its file counts it.
                let row = file_rows.as_ref().map_or(row, |rows| rows[row]);
                data_error(
                    data_path.as_deref(),
                    "data.standardize",
                    data::past_f32(row + 1),
                )
            })?;
            std::sync::Arc::new(rows)
        }
        None => rows,
    };
    Ok(SavedModel {
        model,
        params,
        data: rows,
        names,
        labelled,
        file_rows,
        data_path,
    })
}

/// The classes the model's outputs stand for, to read other files' labels as (so a label
/// the model never saw is an error, and a file may lack some classes): the names saved with
/// the model; for a file saved before names were recorded, those of its training data as
/// read now (`model_cfg`, or the model's config validated here, when that data is still
/// there); else the class ids 0..k. `None` for regression.
fn trained_classes(
    args: &EvalArgs,
    model_raw: &RawConfig,
    model_cfg: Option<&minibatch::Config>,
    model: &Mlp,
) -> Result<Option<minibatch::io::Classes>> {
    use minibatch::io::Classes;
    let Some(k) = model.spec().head.n_classes() else {
        return Ok(None);
    };
    if let Some(names) = minibatch::checkpoint::load_class_names(&args.model)? {
        if names.len() != k {
            return Err(minibatch::Error::Parse {
                path: args.model.clone(),
                msg: format!(
                    "metadata `classes` names {} class{}, and the model has {k} classes",
                    names.len(),
                    super::s(names.len()).replace('s', "es")
                ),
            });
        }
        return Ok(Some(Classes::Names(names)));
    }
    let read_now;
    let model_cfg = match model_cfg {
        Some(cfg) => Some(cfg),
        None => {
            read_now = model_raw.validate().ok();
            read_now.as_ref()
        }
    };
    Ok(Some(
        match model_cfg
            .and_then(|c| c.data.file.as_ref())
            .map(|f| &f.classes)
        {
            Some(Classes::Names(names)) => Classes::Names(names.clone()),
            _ => Classes::Ids(k),
        },
    ))
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let saved = saved_model(args, false)?;
    let outputs = saved.outputs()?;
    let SavedModel {
        model, data, names, ..
    } = saved;
    // A class as the user's labels named it.
    let class = |c: usize| names.as_ref().map_or(c.to_string(), |n| n[c].clone());
    let m = minibatch::metrics::evaluate(model.spec().head, outputs.view(), data.targets());
    outln!(
        "{} on {} row{}: mean loss {}",
        model.spec().describe(),
        m.rows,
        super::s(m.rows),
        super::loss(m.mean_loss)
    );
    if let (Some(mse), Some(r2)) = (m.mse, m.r2) {
        let mse_text = super::loss(mse);
        if r2.is_finite() {
            outln!("MSE {mse_text}, R^2 {r2:.4}");
        } else if !mse.is_finite() {
            outln!("MSE {mse_text}, R^2 undefined (the errors are not finite)");
        } else {
            outln!("MSE {mse_text}, R^2 undefined (the targets are constant)");
        }
    }
    if let (Some(accuracy), Some(confusion)) = (m.accuracy, &m.confusion) {
        outln!(
            "accuracy {:.2}%\nconfusion matrix (rows: target class, columns: predicted):",
            100.0 * accuracy
        );
        let width = (0..confusion.len())
            .map(|c| class(c).len())
            .max()
            .unwrap_or(0)
            .max(6);
        out!("{:width$} ", "");
        for p in 0..confusion.len() {
            out!(" {:>width$}", class(p));
        }
        outln!();
        for (t, row) in confusion.iter().enumerate() {
            out!("{:>width$} ", class(t));
            for count in row {
                out!(" {count:>width$}");
            }
            outln!();
        }
    }
    Ok(())
}

pub fn predict(args: &PredictArgs, quiet: bool) -> Result<()> {
    // The output is checked first, and never over the model or the data it is made from.
    let e = &args.eval;
    let trained =
        RawConfig::from_toml(&minibatch::checkpoint::model_config(&e.model)?, &e.model)?.data;
    let inputs: Vec<&std::path::Path> = [
        Some(&e.model),
        e.config.as_ref(),
        e.data.as_ref(),
        e.labels.as_ref(),
        trained.path.as_ref(),
        trained.labels.as_ref(),
        trained.valid_path.as_ref(),
        trained.valid_labels.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.as_path())
    .collect();
    // `-`: the CSV goes to standard output (for a pipe), and nothing else does.
    let to_stdout = args.out.as_os_str() == "-";
    if !to_stdout {
        minibatch::checkpoint::check_output("--out", &args.out, &inputs)?;
    }
    let saved = saved_model(&args.eval, true)?;
    let outputs = saved.outputs()?;
    let SavedModel {
        model,
        data,
        names,
        labelled,
        file_rows,
        ..
    } = saved;
    // Classes as the user's labels named them (ids when the labels were ids), as CSV
    // fields: quoted where a name holds a comma or a quote.
    let field = |text: String| {
        if text.contains([',', '"']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text
        }
    };
    let class = |c: usize| field(names.as_ref().map_or(c.to_string(), |n| n[c].clone()));
    let head = model.spec().head;
    let mut csv = String::from("row,target,prediction");
    let n_classes = head.n_classes().unwrap_or(0);
    for c in 0..n_classes {
        match &names {
            Some(n) => csv += &format!(",{}", field(format!("p_{}", n[c]))),
            None => csv += &format!(",p{c}"),
        }
    }
    csv.push('\n');
    for (i, (z, &y)) in outputs.rows().into_iter().zip(data.targets()).enumerate() {
        let z = z.as_slice().expect("row-major");
        let i = file_rows.as_ref().map_or(i, |rows| rows[i]);
        // The target column stays empty for data without labels.
        let target = match head {
            _ if !labelled => String::new(),
            minibatch::model::Head::Mse => y.to_string(),
            _ => class(y as usize),
        };
        match head {
            minibatch::model::Head::Mse => csv += &format!("{i},{target},{}\n", z[0]),
            minibatch::model::Head::Logistic => {
                let p1 = minibatch::model::sigmoid(z[0]);
                let predicted = class(usize::from(z[0] > 0.0));
                csv += &format!("{i},{target},{predicted},{},{}\n", 1.0 - p1, p1);
            }
            minibatch::model::Head::Softmax { .. } => {
                let lse = minibatch::model::log_sum_exp(ndarray::ArrayView1::from(z));
                let predicted = minibatch::metrics::predicted_class(head, z);
                csv += &format!("{i},{target},{}", class(predicted));
                for v in z {
                    csv += &format!(",{}", (v - lse).exp());
                }
                csv.push('\n');
            }
        }
    }
    if to_stdout {
        out!("{csv}");
        return Ok(());
    }
    minibatch::checkpoint::write_atomic(&args.out, csv.as_bytes())?;
    // (Not into the predictions themselves, when they went to standard output.)
    if !quiet && !minibatch::checkpoint::is_stdout(&args.out) {
        outln!(
            "wrote {} prediction{} to {}",
            outputs.nrows(),
            super::s(outputs.nrows()),
            args.out.display()
        );
    }
    Ok(())
}
