//! The run's settings: raw as read from TOML and the command line, then validated.
//!
//! `RawConfig` mirrors the file (every field optional, unknown keys rejected by name);
//! command-line overrides are written into it *before* validation so a bad `--batch-size 0`
//! and a bad `batch_size = 0` get the same message. `RawConfig::validate` turns it into
//! `Config`, whose types make the invalid states unrepresentable (`NonZeroUsize` for counts,
//! a finite positive learning rate). Its fields stay public for the library's own
//! sweeps (`tune` sets a candidate's batch size and rate on a validated config), so the
//! trainer still checks what a caller could break: the batch size against N.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Activation, Head, MlpSpec};
use crate::optim::{OptimConfig, OptimKind};
use crate::sampler::Sampling;
use crate::schedule::{Decay, Schedule};

/// `train.epochs` when the config does not say.
pub const DEFAULT_EPOCHS: usize = 5;

/// `train.lr` when the config gives none.
pub const DEFAULT_LR: f64 = 0.05;

/// The most worker threads a run may ask for: each costs a stack and a start-up (2,000
/// took 14 s to start), and more than the cores only take turns on them.
pub const MAX_THREADS: usize = 1024;

/// A TOML type error in the words of a config's reader rather than Rust's type names
/// ("expected usize" -> "expected a whole number >= 0").
fn plain_types(msg: &str) -> String {
    let mut msg = msg.replace(" as i128,", ",");
    for (rust, plain) in [
        ("expected usize", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        ("expected f64", "expected a number"),
        ("expected path string", "expected a path (a string)"),
    ] {
        msg = msg.replace(rust, plain);
    }
    // `expected struct RawSchedule`: one of this file's tables.
    while let Some(at) = msg.find("expected struct ") {
        let name_end = msg[at + 16..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(msg.len(), |i| at + 16 + i);
        msg.replace_range(
            at..name_end,
            "expected a table (`[section]` or `{ key = ... }`)",
        );
    }
    msg
}

/// A table with no key set, left out when a config is written (a saved model's).
fn is_unset<T: Default + PartialEq>(table: &T) -> bool {
    *table == T::default()
}

/// The config file as written, every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "is_unset")]
    pub data: RawData,
    #[serde(default, skip_serializing_if = "is_unset")]
    pub model: RawModel,
    #[serde(default, skip_serializing_if = "is_unset")]
    pub train: RawTrain,
    /// Keys set from the command line, so messages can name the flag too.
    #[serde(skip)]
    overridden: BTreeSet<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    /// A data file (CSV, LIBSVM or the features .npy) instead of a synthetic set.
    pub path: Option<std::path::PathBuf>,
    pub format: Option<String>,
    /// The targets .npy, for format = "npy".
    pub labels: Option<std::path::PathBuf>,
    /// CSV label column: a name (with a header) or a 0-based index; default the last.
    pub label: Option<LabelKey>,
    pub header: Option<bool>,
    pub delimiter: Option<String>,
    /// "classification" (default) or "regression".
    pub task: Option<String>,
    /// A separate validation file (and its labels .npy), in the same format.
    pub valid_path: Option<std::path::PathBuf>,
    pub valid_labels: Option<std::path::PathBuf>,
    /// Standardise each feature with the training rows' mean and standard deviation.
    pub standardize: Option<bool>,
    pub synthetic: Option<String>,
    pub n: Option<usize>,
    pub d: Option<usize>,
    pub classes: Option<usize>,
    pub noise: Option<f64>,
    pub valid_fraction: Option<f64>,
    /// The classes of a saved model whose data this is (for eval and predict): labels are
    /// read as these instead of being derived from the file. Never written to a file.
    #[serde(skip)]
    pub trained_classes: Option<crate::io::Classes>,
    /// A CSV without a label column (data for `predict`): every column is a feature. Never
    /// written to a file.
    #[serde(skip)]
    pub unlabeled: bool,
}

/// The field separator of the CSV file at `path`: a `.tsv` file's is a tab whatever
/// `data.delimiter` says (it may be meant for the other file), else `delimiter` (one
/// ASCII character, or `\t`), else a comma. `None`: a delimiter that is neither.
pub fn csv_delimiter(path: &std::path::Path, delimiter: Option<&str>) -> Option<u8> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
    {
        return Some(b'\t');
    }
    match delimiter {
        None => Some(b','),
        Some("\\t" | "\t") => Some(b'\t'),
        Some(d) if d.len() == 1 => Some(d.as_bytes()[0]),
        Some(_) => None,
    }
}

/// A data file's format: `data.format` when given, else by the file's extension (`.npy`;
/// `.svm`, `.libsvm`, `.svmlight`; anything else is CSV).
pub fn data_format(path: &std::path::Path, given: Option<&str>) -> String {
    if let Some(format) = given {
        return format.to_string();
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match extension.as_str() {
        "npy" => "npy",
        "svm" | "libsvm" | "svmlight" => "libsvm",
        _ => "csv",
    }
    .to_string()
}

/// A CSV label column, by name or by 0-based index.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged, expecting = "a column index (0, 1, ...) or a column name")]
pub enum LabelKey {
    Index(usize),
    Name(String),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub kind: Option<String>,
    pub hidden: Option<Vec<usize>>,
    pub activation: Option<String>,
    pub head: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrain {
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub sampling: Option<String>,
    pub drop_last: Option<bool>,
    pub steps_per_epoch: Option<usize>,
    pub shard_rows: Option<usize>,
    pub threads: Option<usize>,
    pub optimizer: Option<String>,
    pub momentum: Option<f64>,
    pub dampening: Option<f64>,
    pub weight_decay: Option<f64>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub eps: Option<f64>,
    pub clip_norm: Option<f64>,
    pub lr_scaling: Option<String>,
    pub reference_batch_size: Option<usize>,
    pub schedule: Option<RawSchedule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub kind: Option<String>,
    pub warmup_steps: Option<u64>,
    pub warmup_epochs: Option<f64>,
    pub every_steps: Option<u64>,
    pub every_epochs: Option<f64>,
    pub gamma: Option<f64>,
    pub min_lr: Option<f64>,
}

impl RawTrain {
    /// The sampling a flag gives (`--sampling`): the config's key of the other sampling is
    /// dropped (`steps_per_epoch` means nothing to a shuffled epoch, `drop_last` nothing to
    /// uniform draws), as `--optimizer` drops another rule's keys.
    pub fn set_sampling(&mut self, name: &str) {
        match name {
            "shuffle" => self.steps_per_epoch = None,
            "uniform" => self.drop_last = None,
            _ => {}
        }
        self.sampling = Some(name.to_string());
    }

    /// The optimizer a flag gives (`--optimizer`): when it changes the config's, the keys of
    /// the config's that do not apply to the new one are dropped (a flag overrides the
    /// config: `--optimizer adam` on a momentum config means Adam, and `--optimizer sgd`
    /// means plain SGD, not the config's momentum under another name).
    pub fn set_optimizer(&mut self, name: &str) {
        // The same name keeps its keys, except `sgd`: from a flag it means plain SGD.
        if self.optimizer.as_deref() == Some(name) && name != "sgd" {
            return;
        }
        if matches!(name, "adam" | "adamw" | "sgd") {
            (self.momentum, self.dampening) = (None, None);
        }
        if !matches!(name, "adam" | "adamw") {
            (self.beta1, self.beta2, self.eps) = (None, None, None);
        }
        self.optimizer = Some(name.to_string());
    }
}

impl RawSchedule {
    /// The kind a flag gives (`--schedule`): keys of the config's own kind that do not apply
    /// to the new one are dropped (a flag overrides the config; `min_lr` of a cosine config
    /// means nothing to `--schedule step`).
    pub fn set_kind(&mut self, kind: &str) {
        if self.kind.as_deref() == Some(kind) {
            return;
        }
        if !matches!(kind, "step" | "exponential") {
            (self.every_steps, self.every_epochs, self.gamma) = (None, None, None);
        }
        if kind != "cosine" {
            self.min_lr = None;
        }
        self.kind = Some(kind.to_string());
    }

    /// Warmup in steps from a flag (`--warmup-steps`), in place of the config's warmup in
    /// either unit.
    pub fn set_warmup_steps(&mut self, steps: u64) {
        (self.warmup_steps, self.warmup_epochs) = (Some(steps), None);
    }
}

/// A validated run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub seed: u64,
    pub data: DataConfig,
    pub model: MlpSpec,
    pub train: TrainConfig,
}

/// The built-in synthetic datasets (the three standard workloads), all seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    /// MNIST-shaped classification: centred features, labels from a fixed random teacher.
    Teacher,
    /// Binary labels drawn from a logistic model over standardised features.
    Logistic,
    /// Real targets from a linear model plus Gaussian noise.
    Linear,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    /// The data read from files, when `data.path` is given (then `synthetic` is unused).
    pub file: Option<std::sync::Arc<crate::data::LoadedData>>,
    pub synthetic: Synthetic,
    pub n_train: usize,
    pub n_valid: usize,
    pub d: usize,
    /// `None` for regression targets.
    pub n_classes: Option<usize>,
    pub noise: f32,
}

impl DataConfig {
    /// What loading the training rows is about to do, for a progress line.
    pub fn load_note(&self) -> String {
        let (n, d) = (self.n_train, self.d);
        if self.file.is_some() {
            format!("preparing the {n} x {d} features read from the data file")
        } else {
            format!("generating {n} x {d} features")
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: NonZeroUsize,
    pub batch_size: NonZeroUsize,
    /// The learning rate of every step (its `base_lr` is `train.lr` after batch-size scaling).
    pub schedule: Schedule,
    pub sampling: Sampling,
    pub steps_per_epoch: NonZeroUsize,
    pub shard_rows: NonZeroUsize,
    pub threads: NonZeroUsize,
    pub optimizer: OptimConfig,
}

impl RawConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            msg: plain_types(e.to_string().trim_end()),
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::Read {
                path: path.to_path_buf(),
                source: std::io::Error::other("is a directory, expected a TOML file"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The settings that decide the result, for recording in saved files: everything but
    /// the thread count, which changes the speed only (so files from 1 and 64 threads match).
    pub fn recorded(&self) -> RawConfig {
        let mut raw = self.clone();
        raw.train.threads = None;
        raw
    }

    /// Records that `key` came from the command-line `flag`, for error messages.
    pub fn mark_overridden(&mut self, key: &'static str, flag: &'static str) {
        self.overridden.insert((key, flag));
    }

    fn err(&self, key: &'static str, msg: impl Into<String>) -> Error {
        Error::Config {
            key: key.to_string(),
            flag: self
                .overridden
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, flag)| *flag),
            msg: msg.into(),
        }
    }

    pub fn validate(&self) -> Result<Config> {
        let data = self.validate_data()?;
        let model = self.validate_model(&data)?;
        let train = self.validate_train(&data)?;
        Ok(Config {
            seed: self.seed.unwrap_or(0),
            data,
            model,
            train,
        })
    }

    fn validate_data(&self) -> Result<DataConfig> {
        let raw = &self.data;
        if raw.path.is_some() {
            return self.validate_file_data();
        }
        for (key, given) in [
            ("data.format", raw.format.is_some()),
            ("data.labels", raw.labels.is_some()),
            ("data.label", raw.label.is_some()),
            ("data.header", raw.header.is_some()),
            ("data.valid_path", raw.valid_path.is_some()),
            ("data.valid_labels", raw.valid_labels.is_some()),
            ("data.standardize", raw.standardize.is_some()),
            ("data.delimiter", raw.delimiter.is_some()),
            ("data.task", raw.task.is_some()),
        ] {
            if given {
                return Err(self.err(key, "applies to data read from a file; set data.path"));
            }
        }
        let synthetic = match raw.synthetic.as_deref().unwrap_or("teacher") {
            "teacher" => Synthetic::Teacher,
            "logistic" => Synthetic::Logistic,
            "linear" => Synthetic::Linear,
            other => {
                return Err(self.err(
                    "data.synthetic",
                    format!("unknown dataset `{other}`; expected one of teacher, logistic, linear"),
                ));
            }
        };
        let (default_n, default_d) = match synthetic {
            Synthetic::Teacher => (60_000, 784),
            Synthetic::Logistic => (100_000, 1_000),
            Synthetic::Linear => (100_000, 10),
        };
        let n = raw.n.unwrap_or(default_n);
        if n == 0 {
            return Err(self.err("data.n", "must be at least 1"));
        }
        let d = raw.d.unwrap_or(default_d);
        if d == 0 {
            return Err(self.err("data.d", "must be at least 1"));
        }
        let n_classes = match synthetic {
            Synthetic::Teacher => {
                let k = raw.classes.unwrap_or(10);
                if k < 2 {
                    return Err(self.err("data.classes", "must be at least 2"));
                }
                Some(k)
            }
            Synthetic::Logistic => {
                if raw.classes.is_some_and(|k| k != 2) {
                    return Err(
                        self.err("data.classes", "the logistic dataset has exactly 2 classes")
                    );
                }
                Some(2)
            }
            Synthetic::Linear => {
                if raw.classes.is_some() {
                    return Err(self.err(
                        "data.classes",
                        "the linear dataset has real targets, not classes",
                    ));
                }
                None
            }
        };
        // Generated in memory: features and a target per row.
        crate::memory::check(
            "data.n",
            &format!("{n} synthetic rows of {d} features"),
            crate::memory::bytes(n, d + 1, 4),
        )?;
        if raw.noise.is_some() && synthetic != Synthetic::Linear {
            return Err(self.err(
                "data.noise",
                "applies to synthetic = \"linear\" only (the other sets draw their labels \
                 from their own model)",
            ));
        }
        let noise = raw.noise.unwrap_or(0.1);
        if !(noise.is_finite() && noise >= 0.0) {
            return Err(self.err(
                "data.noise",
                format!("must be finite and >= 0, got {noise}"),
            ));
        }
        let valid_fraction = raw.valid_fraction.unwrap_or(0.0);
        if !(0.0..1.0).contains(&valid_fraction) {
            return Err(self.err(
                "data.valid_fraction",
                format!("must be in [0, 1), got {valid_fraction}"),
            ));
        }
        let n_valid = (n as f64 * valid_fraction).round() as usize;
        let n_train = n - n_valid;
        if n_train == 0 {
            return Err(self.err("data.valid_fraction", "leaves no training rows"));
        }
        Ok(DataConfig {
            file: None,
            synthetic,
            n_train,
            n_valid,
            d,
            n_classes,
            noise: noise as f32,
        })
    }

    /// Reads the data files now, so the model can be checked against their shape and
    /// classes; errors name the file, line and column.
    fn validate_file_data(&self) -> Result<DataConfig> {
        use crate::io::{CsvOptions, LabelColumn, Task};
        let raw = &self.data;
        let path = raw.path.clone().expect("checked by the caller");
        for (key, given) in [
            ("data.synthetic", raw.synthetic.is_some()),
            ("data.n", raw.n.is_some()),
            ("data.classes", raw.classes.is_some()),
            ("data.noise", raw.noise.is_some()),
        ] {
            if given {
                return Err(self.err(key, "applies to synthetic data, not to data.path"));
            }
        }
        let task = match raw.task.as_deref().unwrap_or("classification") {
            "classification" => Task::Classification,
            "regression" => Task::Regression,
            other => {
                return Err(self.err(
                    "data.task",
                    format!("unknown task `{other}`; expected classification or regression"),
                ));
            }
        };
        if raw.d == Some(0) {
            return Err(self.err("data.d", "must be at least 1"));
        }
        let format = data_format(&path, raw.format.as_deref());
        // A validation file is read in its own format (by its extension, unless
        // data.format names one for both).
        let valid_format = raw
            .valid_path
            .as_deref()
            .map(|p| data_format(p, raw.format.as_deref()));
        let any_csv = if format == "csv" || valid_format.as_deref() == Some("csv") {
            "csv"
        } else {
            &format
        };
        // Keys of one format given for another would be silently unused.
        let format_keys: [(&str, bool, &str, &str); 5] = [
            ("data.labels", raw.labels.is_some(), "npy", &format),
            (
                "data.valid_labels",
                raw.valid_labels.is_some(),
                "npy",
                valid_format.as_deref().unwrap_or(&format),
            ),
            // The CSV keys apply to whichever of the files is CSV.
            ("data.label", raw.label.is_some(), "csv", any_csv),
            ("data.header", raw.header.is_some(), "csv", any_csv),
            ("data.delimiter", raw.delimiter.is_some(), "csv", any_csv),
        ];
        for (key, given, applies_to, format) in format_keys {
            if given && format != applies_to {
                return Err(self.err(
                    key,
                    format!("applies to format = \"{applies_to}\", and this data is {format}"),
                ));
            }
        }
        // Each file's own (`csv_delimiter`, below); checked here once.
        if let Some(d) = raw.delimiter.as_deref()
            && csv_delimiter(Path::new(""), Some(d)).is_none()
        {
            return Err(self.err(
                "data.delimiter",
                format!("must be one ASCII character (or \\t), got `{d}`"),
            ));
        }
        // The training file sets the classes (unless they are given, for a saved model's
        // data), and the validation file is read against them.
        let mut classes = raw.trained_classes.clone().unwrap_or_default();
        let mut read = |path: &std::path::Path,
                        path_key: &'static str,
                        labels: Option<&std::path::PathBuf>,
                        labels_key: &'static str,
                        d: Option<usize>|
         -> Result<crate::data::Dataset> {
            // A file that is not there is named with the key that gave it, and where a
            // relative path was looked for.
            let missing = |err: Error| match err {
                Error::Read {
                    path: missing,
                    source,
                } if source.kind() == std::io::ErrorKind::NotFound => {
                    let key = if labels.is_some_and(|l| *l == missing) {
                        labels_key
                    } else {
                        path_key
                    };
                    let from = match std::env::current_dir() {
                        Ok(dir) if missing.is_relative() => {
                            format!(" (relative paths are taken from {})", dir.display())
                        }
                        _ => String::new(),
                    };
                    self.err(
                        key,
                        format!("cannot read {}: {source}{from}", missing.display()),
                    )
                }
                other => other,
            };
            match data_format(path, raw.format.as_deref()).as_str() {
                "csv" => {
                    let csv = CsvOptions {
                        header: raw.header,
                        label: match &raw.label {
                            _ if raw.unlabeled => LabelColumn::None,
                            None => LabelColumn::Last,
                            Some(LabelKey::Index(i)) => LabelColumn::Index(*i),
                            Some(LabelKey::Name(n)) => LabelColumn::Name(n.clone()),
                        },
                        delimiter: csv_delimiter(path, raw.delimiter.as_deref()).unwrap_or(b','),
                        task,
                    };
                    crate::io::read_csv(path, &csv, &mut classes)
                }
                "libsvm" => crate::io::read_libsvm(path, d, task, &mut classes),
                "npy" if raw.unlabeled && labels.is_none() => {
                    crate::io::read_npy_unlabeled(path, task, &classes)
                }
                "npy" => {
                    let labels = labels.ok_or_else(|| {
                        self.err(labels_key, "format = \"npy\" needs the targets' .npy file")
                    })?;
                    crate::io::read_npy_pair(path, labels, task, &mut classes)
                }
                other => Err(self.err(
                    "data.format",
                    format!("unknown format `{other}`; expected csv, libsvm or npy"),
                )),
            }
            .map_err(missing)
        };
        let train = read(
            &path,
            "data.path",
            raw.labels.as_ref(),
            "data.labels",
            raw.d,
        )?;
        // A sparse validation file is read at the training data's width: its rows need
        // not reach the last feature.
        let valid = match &raw.valid_path {
            Some(valid_path) => Some(read(
                valid_path,
                "data.valid_path",
                raw.valid_labels.as_ref(),
                "data.valid_labels",
                Some(train.d()),
            )?),
            None => None,
        };
        // A validation file whose header has the training columns in another order (or
        // others) would be scored on the wrong features.
        if let (Some(valid), Some(valid_path)) = (&valid, &raw.valid_path)
            && let (Some(trained), Some(given)) = (train.feature_names(), valid.feature_names())
            && trained != given
            // (Another width is refused below, with the widths.)
            && trained.len() == given.len()
        {
            return Err(Error::Data {
                path: valid_path.clone(),
                line: 1,
                msg: crate::data::feature_mismatch(trained, given, "the training file"),
            });
        }
        let valid_fraction = raw.valid_fraction.unwrap_or(0.0);
        if !(0.0..1.0).contains(&valid_fraction) {
            return Err(self.err(
                "data.valid_fraction",
                format!("must be in [0, 1), got {valid_fraction}"),
            ));
        }
        if valid.is_some() && valid_fraction > 0.0 {
            return Err(self.err(
                "data.valid_fraction",
                "give data.valid_path or data.valid_fraction, not both",
            ));
        }
        // One class leaves a classifier nothing to learn (and a one-output softmax is no
        // softmax): the labels are likely real targets, or the wrong column. (Data given to a
        // saved model may hold fewer classes than it was trained on.)
        let targets = train.targets();
        if raw.trained_classes.is_none()
            && train.n_classes().is_some()
            && targets.iter().all(|&t| t == targets[0])
        {
            let class = classes
                .names()
                .and_then(|names| names.get(targets[0] as usize).cloned())
                .unwrap_or_else(|| targets[0].to_string());
            return Err(self.err(
                "data.path",
                format!(
                    "the labels hold one class ({class}); a classifier needs two or more (set \
                     data.task = \"regression\" for real targets, or data.label for another \
                     column)"
                ),
            ));
        }
        let loaded = crate::data::LoadedData::new(
            train,
            valid,
            valid_fraction,
            self.seed.unwrap_or(0),
            raw.standardize.unwrap_or(false),
            classes,
        )
        .map_err(|(part, msg)| Error::Data {
            path: match (part, &raw.valid_path) {
                (crate::data::Part::Valid, Some(valid_path)) => valid_path.clone(),
                _ => path.clone(),
            },
            line: 0,
            msg,
        })?;
        if let Some(d) = raw.d
            && d != loaded.train.d()
        {
            return Err(self.err(
                "data.d",
                format!(
                    "is {d}, but {} has {} features",
                    path.display(),
                    loaded.train.d()
                ),
            ));
        }
        // Its labels were read as the training file's classes, so only the width can differ.
        if let Some(v) = &loaded.valid
            && v.d() != loaded.train.d()
        {
            let valid_path = raw
                .valid_path
                .as_deref()
                .unwrap_or(std::path::Path::new(""));
            return Err(self.err(
                "data.valid_path",
                format!(
                    "{} has {} features; the training file {} has {}",
                    valid_path.display(),
                    v.d(),
                    path.display(),
                    loaded.train.d()
                ),
            ));
        }
        Ok(DataConfig {
            synthetic: Synthetic::Teacher,
            n_train: loaded.train.n(),
            n_valid: loaded.valid.as_ref().map_or(0, |v| v.n()),
            d: loaded.train.d(),
            n_classes: loaded.train.n_classes(),
            noise: 0.0,
            file: Some(std::sync::Arc::new(loaded)),
        })
    }

    fn validate_model(&self, data: &DataConfig) -> Result<MlpSpec> {
        let raw = &self.model;
        // Hidden layers ask for an MLP; without them the data decides.
        let default_kind = match (&data.file, data.synthetic, data.n_classes) {
            _ if raw.hidden.is_some() => "mlp",
            (Some(_), _, None) => "linear",
            (Some(_), _, Some(2)) => "logistic",
            (Some(_), _, Some(_)) => "softmax",
            (None, Synthetic::Teacher, _) => "mlp",
            (None, Synthetic::Logistic, _) => "logistic",
            (None, Synthetic::Linear, _) => "linear",
        };
        let kind = raw.kind.as_deref().unwrap_or(default_kind);
        let head_for_data = match data.n_classes {
            None => Head::Mse,
            Some(2) if kind == "logistic" => Head::Logistic,
            Some(k) if kind == "logistic" => {
                return Err(self.err(
                    "model.kind",
                    format!("logistic regression needs 2 classes, the data has {k}; use softmax"),
                ));
            }
            Some(k) => Head::Softmax { n_classes: k },
        };
        let (hidden, head) = match kind {
            "linear" | "logistic" | "softmax" => {
                if raw.hidden.as_ref().is_some_and(|h| !h.is_empty()) {
                    return Err(self.err(
                        "model.hidden",
                        format!("a {kind} model has no hidden layers; use kind = \"mlp\""),
                    ));
                }
                let head = match (kind, data.n_classes) {
                    ("linear", _) => Head::Mse,
                    ("logistic", _) => Head::Logistic,
                    (_, Some(n_classes)) => Head::Softmax { n_classes },
                    (_, None) => {
                        return Err(self.err(
                            "model.kind",
                            "softmax needs class labels; the data has real targets",
                        ));
                    }
                };
                (Vec::new(), head)
            }
            "mlp" => {
                let hidden = raw.hidden.clone().unwrap_or_else(|| vec![128]);
                if hidden.is_empty() {
                    return Err(self.err(
                        "model.hidden",
                        "an mlp needs at least one hidden layer (e.g. [128]); for none use kind = \"linear\", \"logistic\" or \"softmax\"",
                    ));
                }
                if let Some(i) = hidden.iter().position(|&h| h == 0) {
                    return Err(self.err(
                        "model.hidden",
                        format!("hidden layer {i} has 0 units; every layer needs at least 1"),
                    ));
                }
                let head = match raw.head.as_deref() {
                    None => head_for_data,
                    Some("mse") => Head::Mse,
                    Some("logistic") => Head::Logistic,
                    Some("softmax") => match data.n_classes {
                        Some(k) => Head::Softmax { n_classes: k },
                        None => {
                            return Err(self.err(
                                "model.head",
                                "softmax needs class labels; the data has real targets",
                            ));
                        }
                    },
                    Some(other) => {
                        return Err(self.err(
                            "model.head",
                            format!(
                                "unknown head `{other}`; expected one of mse, logistic, softmax"
                            ),
                        ));
                    }
                };
                (hidden, head)
            }
            other => {
                return Err(self.err(
                    "model.kind",
                    format!(
                        "unknown model `{other}`; expected one of linear, logistic, softmax, mlp"
                    ),
                ));
            }
        };
        if raw.head.is_some() && kind != "mlp" {
            return Err(self.err(
                "model.head",
                format!("only an mlp takes a head; a {kind} model has its own"),
            ));
        }
        let activation = match raw.activation.as_deref() {
            None => Activation::Relu,
            Some(name) => Activation::from_name(name).ok_or_else(|| {
                let names: Vec<&str> = Activation::ALL.iter().map(|a| a.name()).collect();
                self.err(
                    "model.activation",
                    format!(
                        "unknown activation `{name}`; expected one of {}",
                        names.join(", ")
                    ),
                )
            })?,
        };
        if raw.activation.is_some() && kind != "mlp" {
            return Err(self.err(
                "model.activation",
                format!(
                    "applies to the hidden layers of an mlp; a {kind} model has none{}",
                    if raw.kind.is_none() {
                        " (give model.hidden, or kind = \"mlp\")"
                    } else {
                        ""
                    }
                ),
            ));
        }
        // The key that chose the head: an mlp's `head` when given, else the kind.
        let head_key = if raw.head.is_some() {
            "model.head"
        } else {
            "model.kind"
        };
        match (head, data.n_classes) {
            (Head::Mse, Some(k)) => {
                return Err(self.err(
                    head_key,
                    format!("a regression head needs real targets, the data has {k} classes"),
                ));
            }
            (Head::Logistic, None) | (Head::Softmax { .. }, None) => {
                return Err(self.err(
                    head_key,
                    "a classifier needs class labels; the data has real targets",
                ));
            }
            (Head::Logistic, Some(k)) if k != 2 => {
                return Err(self.err(
                    "model.head",
                    format!("logistic needs 2 classes, the data has {k}; use softmax"),
                ));
            }
            _ => {}
        }
        Ok(MlpSpec {
            d_in: data.d,
            hidden,
            activation,
            head,
        })
    }

    fn validate_train(&self, data: &DataConfig) -> Result<TrainConfig> {
        let raw = &self.train;
        let epochs = NonZeroUsize::new(raw.epochs.unwrap_or(DEFAULT_EPOCHS))
            .ok_or_else(|| self.err("train.epochs", "must be at least 1"))?;
        let batch_size = raw.batch_size.unwrap_or(128.min(data.n_train));
        let batch_size = NonZeroUsize::new(batch_size)
            .ok_or_else(|| self.err("train.batch_size", "must be at least 1"))?;
        if batch_size.get() > data.n_train {
            return Err(self.err(
                "train.batch_size",
                format!(
                    "{} is larger than the training set ({} rows); use at most {}",
                    batch_size, data.n_train, data.n_train
                ),
            ));
        }
        let lr = raw.lr.unwrap_or(DEFAULT_LR);
        if !(lr.is_finite() && lr > 0.0) {
            return Err(self.err("train.lr", format!("must be a finite number > 0, got {lr}")));
        }
        let scale = self.lr_scale(batch_size)?;
        let lr = lr * scale;
        if !((lr as f32).is_finite() && lr as f32 > 0.0) {
            let scaled = if scale == 1.0 {
                ""
            } else {
                " after batch-size scaling"
            };
            return Err(self.err(
                "train.lr",
                format!("{lr:e}{scaled} is outside the range of f32 (about 1e-45 to 3e38)"),
            ));
        }
        let drop_last = raw.drop_last.unwrap_or(false);
        let sampling = match raw.sampling.as_deref().unwrap_or("shuffle") {
            "shuffle" => Sampling::Shuffle { drop_last },
            "uniform" => {
                if raw.drop_last.is_some() {
                    return Err(
                        self.err("train.drop_last", "applies to sampling = \"shuffle\" only")
                    );
                }
                Sampling::Uniform
            }
            other => {
                return Err(self.err(
                    "train.sampling",
                    format!("unknown sampling `{other}`; expected shuffle or uniform"),
                ));
            }
        };
        let steps_per_epoch = match (raw.steps_per_epoch, sampling) {
            (Some(_), Sampling::Shuffle { .. }) => {
                return Err(self.err(
                    "train.steps_per_epoch",
                    "applies to sampling = \"uniform\" only (a shuffled epoch is one pass over the data)",
                ));
            }
            (Some(s), Sampling::Uniform) => NonZeroUsize::new(s)
                .ok_or_else(|| self.err("train.steps_per_epoch", "must be at least 1"))?,
            (None, sampling) => {
                crate::sampler::default_steps_per_epoch(data.n_train, batch_size, sampling)
            }
        };
        let shard_rows = match raw.shard_rows {
            Some(rows) => NonZeroUsize::new(rows).ok_or_else(|| {
                self.err(
                    "train.shard_rows",
                    "must be at least 1 (omit it to choose from the batch size)",
                )
            })?,
            None => crate::shard::auto_shard_rows(batch_size),
        };
        let threads = match raw.threads {
            Some(t) if t > MAX_THREADS => {
                return Err(self.err(
                    "train.threads",
                    format!(
                        "{t} is more than {MAX_THREADS}; threads past the cores only queue for them (omit it to use every core)"
                    ),
                ));
            }
            Some(t) => NonZeroUsize::new(t).ok_or_else(|| {
                self.err(
                    "train.threads",
                    "must be at least 1 (omit it to use every core)",
                )
            })?,
            None => crate::cluster::default_threads(),
        };
        let optimizer = self.validate_optimizer()?;
        let total_steps = epochs
            .get()
            .checked_mul(steps_per_epoch.get())
            .ok_or_else(|| {
                self.err(
                    "train.epochs",
                    format!("{epochs} epochs of {steps_per_epoch} steps are too many"),
                )
            })? as u64;
        let schedule = self.validate_schedule(lr as f32, steps_per_epoch.get(), total_steps)?;
        Ok(TrainConfig {
            epochs,
            batch_size,
            schedule,
            sampling,
            steps_per_epoch,
            shard_rows,
            threads,
            optimizer,
        })
    }

    /// The update rule the train keys give, with their defaults: the optimizer and the
    /// learning-rate schedule for batches of `batch_size`, `steps_per_epoch` steps an epoch
    /// and `total_steps` in the run. Reads no data: a resumed run compares its own with its
    /// checkpoint's config's.
    pub fn update_rule(
        &self,
        batch_size: NonZeroUsize,
        steps_per_epoch: usize,
        total_steps: u64,
    ) -> Result<(OptimConfig, Schedule)> {
        let lr = self.train.lr.unwrap_or(DEFAULT_LR) * self.lr_scale(batch_size)?;
        let schedule = self.validate_schedule(lr as f32, steps_per_epoch, total_steps)?;
        Ok((self.validate_optimizer()?, schedule))
    }

    /// The factor `train.lr_scaling` applies to `train.lr` for batch size B against
    /// `train.reference_batch_size` (B0): none 1, linear B / B0, sqrt sqrt(B / B0).
    fn lr_scale(&self, batch_size: NonZeroUsize) -> Result<f64> {
        let raw = &self.train;
        let reference = raw.reference_batch_size.unwrap_or(256);
        if reference == 0 {
            return Err(self.err("train.reference_batch_size", "must be at least 1"));
        }
        let ratio = batch_size.get() as f64 / reference as f64;
        match raw.lr_scaling.as_deref().unwrap_or("none") {
            "none" => {
                if raw.reference_batch_size.is_some() {
                    return Err(self.err(
                        "train.reference_batch_size",
                        "is only used with lr_scaling = \"linear\" or \"sqrt\"",
                    ));
                }
                Ok(1.0)
            }
            "linear" => Ok(ratio),
            "sqrt" => Ok(ratio.sqrt()),
            other => Err(self.err(
                "train.lr_scaling",
                format!("unknown rule `{other}`; expected none, linear or sqrt"),
            )),
        }
    }

    /// `value` as the f32 the run will use, which must be finite and > 0 (a value that
    /// is, but rounds to 0 or infinity in f32, is named as out of its range).
    fn positive_f32(&self, key: &'static str, value: f64) -> Result<f32> {
        if !(value.is_finite() && value > 0.0) {
            return Err(self.err(key, format!("must be a finite number > 0, got {value}")));
        }
        let v = value as f32;
        if !(v.is_finite() && v > 0.0) {
            return Err(self.err(
                key,
                format!("{value:e} is outside the range of f32 (about 1e-45 to 3e38)"),
            ));
        }
        Ok(v)
    }

    fn validate_optimizer(&self) -> Result<OptimConfig> {
        let raw = &self.train;
        let name = raw.optimizer.as_deref().unwrap_or("sgd");
        let unit =
            |key: &'static str, value: Option<f64>, default: f64, closed: bool| -> Result<f32> {
                let v = value.unwrap_or(default);
                // Checked as the f32 the optimizer will use: 0.99999999 rounds to 1.
                let v32 = v as f32;
                let ok = v32.is_finite() && v32 >= 0.0 && (v32 < 1.0 || (closed && v32 == 1.0));
                if ok {
                    Ok(v32)
                } else {
                    let range = if closed { "[0, 1]" } else { "[0, 1)" };
                    let rounds = if v < 1.0 && v32 == 1.0 {
                        " (which is 1 in f32)"
                    } else {
                        ""
                    };
                    Err(self.err(key, format!("must be in {range}, got {v}{rounds}")))
                }
            };
        let only_for = |key: &'static str, value: Option<f64>, family: &str| -> Result<()> {
            match value {
                Some(_) => Err(self.err(
                    key,
                    format!("applies to {family} only, not to optimizer `{name}`"),
                )),
                None => Ok(()),
            }
        };
        let weight_decay = raw.weight_decay.unwrap_or(0.0);
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(self.err(
                "train.weight_decay",
                format!("must be finite and >= 0, got {weight_decay}"),
            ));
        }
        if weight_decay > 0.0 {
            // Checked as the f32 the update uses.
            self.positive_f32("train.weight_decay", weight_decay)?;
        }
        let clip_norm = match raw.clip_norm {
            None => None,
            Some(c) => Some(self.positive_f32("train.clip_norm", c)?),
        };
        let kind = match name {
            "sgd" | "momentum" | "nesterov" => {
                for (key, value) in [
                    ("train.beta1", raw.beta1),
                    ("train.beta2", raw.beta2),
                    ("train.eps", raw.eps),
                ] {
                    only_for(key, value, "adam and adamw")?;
                }
                let default_momentum = if name == "sgd" { 0.0 } else { 0.9 };
                let momentum = unit("train.momentum", raw.momentum, default_momentum, false)?;
                let dampening = unit("train.dampening", raw.dampening, 0.0, true)?;
                if name != "sgd" && momentum == 0.0 {
                    return Err(self.err(
                        "train.momentum",
                        format!("optimizer `{name}` needs momentum > 0"),
                    ));
                }
                // (0, PyTorch's default, is accepted: it changes nothing.)
                if momentum == 0.0 && dampening > 0.0 {
                    return Err(self.err(
                        "train.dampening",
                        "applies to momentum; plain SGD (momentum 0) has none to damp",
                    ));
                }
                if name == "nesterov" && dampening != 0.0 {
                    return Err(self.err(
                        "train.dampening",
                        "Nesterov momentum requires dampening = 0",
                    ));
                }
                OptimKind::Sgd {
                    momentum,
                    dampening,
                    nesterov: name == "nesterov",
                }
            }
            "adam" | "adamw" => {
                only_for("train.momentum", raw.momentum, "sgd, momentum and nesterov")?;
                only_for(
                    "train.dampening",
                    raw.dampening,
                    "sgd, momentum and nesterov",
                )?;
                let eps = self.positive_f32("train.eps", raw.eps.unwrap_or(1e-8))?;
                OptimKind::Adam {
                    beta1: unit("train.beta1", raw.beta1, 0.9, false)?,
                    beta2: unit("train.beta2", raw.beta2, 0.999, false)?,
                    eps,
                    decoupled: name == "adamw",
                }
            }
            other => {
                return Err(self.err(
                    "train.optimizer",
                    format!("unknown optimizer `{other}`; expected one of sgd, momentum, nesterov, adam, adamw"),
                ));
            }
        };
        Ok(OptimConfig {
            kind,
            weight_decay: weight_decay as f32,
            clip_norm,
        })
    }

    fn validate_schedule(
        &self,
        base_lr: f32,
        steps_per_epoch: usize,
        total_steps: u64,
    ) -> Result<Schedule> {
        let Some(raw) = &self.train.schedule else {
            return Ok(Schedule {
                total_steps,
                ..Schedule::constant(base_lr)
            });
        };
        // A duration in steps or in epochs (converted, rounded), with the key it was given
        // by, which errors about it name.
        let steps = |key_steps: &'static str,
                     s: Option<u64>,
                     key_epochs: &'static str,
                     e: Option<f64>|
         -> Result<Option<(u64, &'static str)>> {
            match (s, e) {
                (Some(_), Some(_)) => Err(self.err(
                    key_epochs,
                    format!("give `{key_steps}` or `{key_epochs}`, not both"),
                )),
                (Some(s), None) => Ok(Some((s, key_steps))),
                (None, Some(e)) if e.is_finite() && e >= 0.0 => Ok(Some((
                    (e * steps_per_epoch as f64).round() as u64,
                    key_epochs,
                ))),
                (None, Some(e)) => Err(self.err(
                    key_epochs,
                    // A warmup may be none; a decay period must be some steps.
                    if key_epochs.ends_with("every_epochs") {
                        format!("must be finite and > 0, got {e}")
                    } else {
                        format!("must be finite and >= 0, got {e}")
                    },
                )),
                (None, None) => Ok(None),
            }
        };
        let warmup = steps(
            "train.schedule.warmup_steps",
            raw.warmup_steps,
            "train.schedule.warmup_epochs",
            raw.warmup_epochs,
        )?;
        let warmup_steps = warmup.map_or(0, |(s, _)| s);
        if let Some((_, key)) = warmup
            && warmup_steps >= total_steps
            && warmup_steps > 0
        {
            return Err(self.err(
                key,
                format!(
                    "a warmup of {} steps leaves nothing of the run's {total_steps} steps",
                    if warmup_steps == u64::MAX {
                        "more than 2^64".to_string()
                    } else {
                        warmup_steps.to_string()
                    }
                ),
            ));
        }
        let every = steps(
            "train.schedule.every_steps",
            raw.every_steps,
            "train.schedule.every_epochs",
            raw.every_epochs,
        )?;
        let gamma = match raw.gamma {
            None => None,
            Some(g) if g > 0.0 && g <= 1.0 => Some(self.positive_f32("train.schedule.gamma", g)?),
            Some(g) => {
                return Err(self.err(
                    "train.schedule.gamma",
                    format!("must be in (0, 1], got {g}"),
                ));
            }
        };
        let kind = raw.kind.as_deref().unwrap_or("constant");
        let unused = |key: &'static str, present: bool| -> Result<()> {
            if present {
                Err(self.err(key, format!("does not apply to schedule kind `{kind}`")))
            } else {
                Ok(())
            }
        };
        let decay = match kind {
            "constant" | "cosine" => {
                if let Some((_, key)) = every {
                    unused(key, true)?;
                }
                unused("train.schedule.gamma", gamma.is_some())?;
                if kind == "constant" {
                    unused("train.schedule.min_lr", raw.min_lr.is_some())?;
                    Decay::Constant
                } else {
                    let min_lr = raw.min_lr.unwrap_or(0.0);
                    if !(min_lr.is_finite() && min_lr >= 0.0 && (min_lr as f32) < base_lr) {
                        return Err(self.err(
                            "train.schedule.min_lr",
                            format!("must be in [0, lr) = [0, {base_lr}), got {min_lr}"),
                        ));
                    }
                    Decay::Cosine {
                        min_lr: min_lr as f32,
                    }
                }
            }
            "step" | "exponential" => {
                unused("train.schedule.min_lr", raw.min_lr.is_some())?;
                let (every, key) =
                    every.unwrap_or((steps_per_epoch as u64, "train.schedule.every_steps"));
                if every == 0 {
                    return Err(self.err(key, "must be at least 1 step"));
                }
                let gamma = gamma.unwrap_or(if kind == "step" { 0.1 } else { 0.9 });
                if kind == "step" {
                    Decay::Step { every, gamma }
                } else {
                    Decay::Exponential { every, gamma }
                }
            }
            other => {
                return Err(self.err(
                    "train.schedule.kind",
                    format!("unknown schedule `{other}`; expected one of constant, step, exponential, cosine"),
                ));
            }
        };
        Ok(Schedule {
            base_lr,
            decay,
            warmup_steps,
            total_steps,
        })
    }
}
