//! The run's settings: raw as read from TOML and the command line, then validated.
//!
//! `RawConfig` mirrors the file (every field optional, unknown keys rejected by name);
//! command-line overrides are written into it *before* validation so a bad `--batch-size 0`
//! and a bad `batch_size = 0` get the same message. `RawConfig::validate` turns it into
//! `Config`, whose types make the invalid states unrepresentable (`NonZeroUsize` for counts,
//! a finite positive learning rate), so the trainer never re-checks them.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Activation, Head, MlpSpec};
use crate::optim::OptimConfig;
use crate::sampler::Sampling;

/// The config file as written, every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub seed: Option<u64>,
    #[serde(default)]
    pub data: RawData,
    #[serde(default)]
    pub model: RawModel,
    #[serde(default)]
    pub train: RawTrain,
    /// Keys set from the command line, so messages can name the flag too.
    #[serde(skip)]
    overridden: BTreeSet<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    pub synthetic: Option<String>,
    pub n: Option<usize>,
    pub d: Option<usize>,
    pub classes: Option<usize>,
    pub noise: Option<f64>,
    pub valid_fraction: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub kind: Option<String>,
    pub hidden: Option<Vec<usize>>,
    pub activation: Option<String>,
    pub head: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    pub synthetic: Synthetic,
    pub n_train: usize,
    pub n_valid: usize,
    pub d: usize,
    /// `None` for regression targets.
    pub n_classes: Option<usize>,
    pub noise: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: NonZeroUsize,
    pub batch_size: NonZeroUsize,
    pub lr: f32,
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
            msg: e.to_string().trim_end().to_string(),
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
            synthetic,
            n_train,
            n_valid,
            d,
            n_classes,
            noise: noise as f32,
        })
    }

    fn validate_model(&self, data: &DataConfig) -> Result<MlpSpec> {
        let raw = &self.model;
        let default_kind = match data.synthetic {
            Synthetic::Teacher => "mlp",
            Synthetic::Logistic => "logistic",
            Synthetic::Linear => "linear",
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
        match (head, data.n_classes) {
            (Head::Mse, Some(k)) => {
                return Err(self.err(
                    "model.kind",
                    format!("a regression head needs real targets, the data has {k} classes"),
                ));
            }
            (Head::Logistic, None) | (Head::Softmax { .. }, None) => {
                return Err(self.err(
                    "model.kind",
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
        let activation = match raw.activation.as_deref().unwrap_or("relu") {
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            other => {
                return Err(self.err(
                    "model.activation",
                    format!("unknown activation `{other}`; expected one of relu, tanh, sigmoid"),
                ));
            }
        };
        Ok(MlpSpec {
            d_in: data.d,
            hidden,
            activation,
            head,
        })
    }

    fn validate_train(&self, data: &DataConfig) -> Result<TrainConfig> {
        let raw = &self.train;
        let epochs = NonZeroUsize::new(raw.epochs.unwrap_or(5))
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
        let lr = raw.lr.unwrap_or(0.05);
        if !(lr.is_finite() && lr > 0.0) {
            return Err(self.err("train.lr", format!("must be a finite number > 0, got {lr}")));
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
            Some(t) => NonZeroUsize::new(t).ok_or_else(|| {
                self.err(
                    "train.threads",
                    "must be at least 1 (omit it to use every core)",
                )
            })?,
            None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        };
        let optimizer = match raw.optimizer.as_deref().unwrap_or("sgd") {
            "sgd" => OptimConfig::Sgd,
            other => {
                return Err(self.err(
                    "train.optimizer",
                    format!("unknown optimizer `{other}`; expected sgd"),
                ));
            }
        };
        Ok(TrainConfig {
            epochs,
            batch_size,
            lr: lr as f32,
            sampling,
            steps_per_epoch,
            shard_rows,
            threads,
            optimizer,
        })
    }
}
