//! Saved parameters and checkpoints: safetensors files that numpy and PyTorch read directly.
//!
//! One tensor per layout entry, under the layout's name and shape, little-endian f32; the
//! header's string metadata carries `format` (`minibatch-params-v1`), the model description,
//! the config as TOML and, when the training labels were words, the class names, so a file
//! says what produced it and what its outputs mean; a model trained on standardised
//! features also holds `standardize.mean` and `standardize.std`. A checkpoint
//! (`minibatch-checkpoint-v1`) adds the optimizer's state (`optimizer.m`, `optimizer.v`)
//! and the position and shape of the run (epoch, step, seed, batch size, sampling, ...), so
//! that a resumed run gives the same bits. Writes go to a temporary file in
//! the same directory, are synced, then renamed over the target: a crash leaves either the
//! old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::optim::OptimizerState;
use crate::params::ParamLayout;
use crate::train::{Position, TrainState};

pub const FORMAT: &str = "minibatch-params-v1";

/// Writes `params` (laid out by `layout`) with extra string `metadata` to `path`, atomically.
///
/// The header is written here rather than by `safetensors::serialize`, whose metadata map is
/// a `HashMap` that orders keys differently in every process: a file's bytes must depend on
/// the parameters and settings only. Keys are sorted, tensors follow the layout's order, and
/// the header is padded with spaces to a multiple of 8 bytes, as the format recommends.
pub fn save_params(
    path: &Path,
    layout: &ParamLayout,
    params: &[f32],
    standardization: Option<&(Vec<f32>, Vec<f32>)>,
    class_names: Option<&[String]>,
    metadata: &[(&str, String)],
) -> Result<()> {
    assert_eq!(
        params.len(),
        layout.n_params(),
        "buffer does not match its layout"
    );
    let d = [standardization.map_or(0, |(mean, _)| mean.len())];
    let tensors = model_tensors(layout, params, standardization, &d);
    let mut metadata = metadata.to_vec();
    metadata.extend(names_entry(CLASSES, class_names));
    write_tensors(path, &tensors, FORMAT, &metadata)
}

/// Metadata key of the class names, in class id order, as a JSON list of strings: class
/// ids are positions in the sorted training labels, so only the names say which id is
/// which label in another file.
pub const CLASSES: &str = "classes";

/// Metadata key of the feature columns' names (a CSV header's), as a JSON list of strings:
/// another file's header is checked against them.
pub const FEATURES: &str = "features";

/// The metadata entry `key` for a list of names (`CLASSES`, `FEATURES`), if there is one.
pub fn names_entry(key: &'static str, names: Option<&[String]>) -> Option<(&'static str, String)> {
    names.map(|names| {
        (
            key,
            serde_json::to_string(names).expect("strings serialise"),
        )
    })
}

/// The class names saved with a model or checkpoint; `None` for numeric labels, regression,
/// and files written before the names were recorded.
pub fn load_class_names(path: &Path) -> Result<Option<Vec<String>>> {
    load_names(path, CLASSES, "class names")
}

/// The feature names saved with a model or checkpoint; `None` where the training data
/// named none (and for files written before they were recorded).
pub fn load_feature_names(path: &Path) -> Result<Option<Vec<String>>> {
    load_names(path, FEATURES, "column names")
}

/// The list of names under metadata `key`, if the file has one.
fn load_names(path: &Path, key: &str, what: &str) -> Result<Option<Vec<String>>> {
    let bytes = read_file(path)?;
    let info = metadata(path, &bytes)?;
    info.get(key)
        .map(|text| {
            serde_json::from_str(text).map_err(|_| Error::Parse {
                path: path.to_path_buf(),
                msg: format!("metadata `{key}` is not a JSON list of {what}"),
            })
        })
        .transpose()
}

/// The model a saved file names (`MlpSpec::describe`'s words), if it names one.
pub fn model_description(path: &Path) -> Result<Option<String>> {
    let bytes = read_file(path)?;
    Ok(metadata(path, &bytes)?.get("model").cloned())
}

/// The header's string metadata (empty if it has none).
fn metadata(path: &Path, bytes: &[u8]) -> Result<std::collections::HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// A file's `format` for messages, in words.
fn describe_format(format: Option<&str>) -> String {
    format.map_or("no format field".into(), |f| format!("format `{f}`"))
}

/// The parameters under their layout names, then the standardisation, if any (`d` holds
/// its length): what both a parameter file and a checkpoint start with.
fn model_tensors<'a>(
    layout: &'a ParamLayout,
    params: &'a [f32],
    standardization: Option<&'a (Vec<f32>, Vec<f32>)>,
    d: &'a [usize; 1],
) -> Vec<(&'a str, &'a [usize], &'a [f32])> {
    let mut tensors: Vec<(&str, &[usize], &[f32])> = layout
        .entries()
        .iter()
        .map(|e| (e.name.as_str(), e.shape(), &params[e.range()]))
        .collect();
    if let Some((mean, std)) = standardization {
        tensors.push((STANDARDIZE_MEAN, d, mean));
        tensors.push((STANDARDIZE_STD, d, std));
    }
    tensors
}

/// Writes named f32 tensors, in the given order, with `format` and `metadata` in the header.
fn write_tensors(
    path: &Path,
    tensors: &[(&str, &[usize], &[f32])],
    format: &str,
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut info: BTreeMap<&str, &str> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    info.insert("format", format);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(info));
    let mut offset = 0;
    for (name, shape, values) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + values.len() * 4]}),
        );
        offset += values.len() * 4;
    }
    let mut header =
        serde_json::to_string(&header).expect("a map of strings and numbers serialises");
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for (_, _, values) in tensors {
        for v in *values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    write_atomic(path, &bytes)
}

pub const CHECKPOINT_FORMAT: &str = "minibatch-checkpoint-v1";

/// Tensor names of the training rows' per-feature mean and standard deviation, saved with
/// a model trained on standardised data.
pub const STANDARDIZE_MEAN: &str = "standardize.mean";
pub const STANDARDIZE_STD: &str = "standardize.std";

/// The standardisation saved with a model, if any.
pub fn load_standardization(path: &Path) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let bytes = read_file(path)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    let bad = |msg: String| Error::Parse {
        path: path.to_path_buf(),
        msg,
    };
    let vector = |name: &str| -> Result<Option<Vec<f32>>> {
        let Ok(t) = file.tensor(name) else {
            return Ok(None);
        };
        if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
            return Err(bad(format!(
                "`{name}` is {:?} of shape {:?}; expected a 1-D F32 tensor",
                t.dtype(),
                t.shape()
            )));
        }
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("`{name}` holds {} at index {i}", values[i])));
        }
        Ok(Some(values))
    };
    match (vector(STANDARDIZE_MEAN)?, vector(STANDARDIZE_STD)?) {
        (None, None) => Ok(None),
        (Some(mean), Some(std)) => {
            if mean.len() != std.len() {
                return Err(bad(format!(
                    "`{STANDARDIZE_MEAN}` has {} values and `{STANDARDIZE_STD}` {}",
                    mean.len(),
                    std.len()
                )));
            }
            if let Some(i) = std.iter().position(|&s| s <= 0.0) {
                return Err(bad(format!(
                    "`{STANDARDIZE_STD}` holds {} at index {i}; deviations are > 0",
                    std[i]
                )));
            }
            Ok(Some((mean, std)))
        }
        (Some(_), None) | (None, Some(_)) => Err(bad(format!(
            "holds one of `{STANDARDIZE_MEAN}` and `{STANDARDIZE_STD}` without the other"
        ))),
    }
}

/// Everything a run needs to continue with the same bits: parameters, optimizer state,
/// position and the schedule's step count, plus the config that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub params: Vec<f32>,
    pub optimizer: OptimizerState,
    pub position: Position,
    pub steps: u64,
    /// What the position means (absent in files written before it was recorded).
    pub run: Option<RunShape>,
    /// The run's config as TOML (without the thread count, which does not change results).
    pub config: String,
}

/// What a checkpoint's position counts in: a step is a batch of `batch_size` rows drawn by
/// `seed`'s `sampling` sampler, `steps_per_epoch` to an epoch, and the optimizer's state is `optimizer`'s.
/// A run resumed with any of them changed would skip or repeat rows, or start the state
/// afresh, without a word; resuming checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunShape {
    pub batch_size: u64,
    pub seed: u64,
    pub steps_per_epoch: u64,
    /// `OptimConfig::kind_name`: sgd, momentum, nesterov, adam or adamw.
    pub optimizer: String,
    /// `shuffle` or `uniform` (which rows the steps draw); empty in files written before
    /// it was recorded.
    pub sampling: String,
    /// Rows per shard the run used (1 to the batch; a file with another is refused). A
    /// resumed run may take other shards, with a note, since only the sums' order changes.
    /// Recorded because the default follows a rule that a later build may change; 0 in
    /// files written before.
    pub shard_rows: u64,
}

/// What every checkpoint of a run records besides the training state: the model (as
/// `MlpSpec::describe` names it, so a checkpoint rebuilds its model as a --save file does),
/// the config, what its position counts in, its layout, and the standardisation and class
/// names of its data.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub model: String,
    pub config: String,
    pub run: RunShape,
    pub layout: ParamLayout,
    pub standardization: Option<(Vec<f32>, Vec<f32>)>,
    pub class_names: Option<Vec<String>>,
    pub feature_names: Option<Vec<String>>,
}

/// Writes a checkpoint atomically: the parameters under their layout names (so it also
/// loads as a parameter file, in numpy and PyTorch too), the optimizer buffers as
/// `optimizer.m` and `optimizer.v`, the rest in the header's metadata.
pub fn save_checkpoint(path: &Path, state: &TrainState<'_>, record: &RunRecord) -> Result<()> {
    let standardization = record.standardization.as_ref();
    let (m, v) = state.optimizer.buffers();
    let (m_shape, v_shape) = ([m.len()], [v.len()]);
    let d = [standardization.map_or(0, |(mean, _)| mean.len())];
    let mut tensors = model_tensors(&record.layout, state.params, standardization, &d);
    if !m.is_empty() {
        tensors.push(("optimizer.m", &m_shape, m));
    }
    if !v.is_empty() {
        tensors.push(("optimizer.v", &v_shape, v));
    }
    let run = &record.run;
    let mut metadata = vec![
        ("epoch", state.position.epoch.to_string()),
        ("step_in_epoch", state.position.step_in_epoch.to_string()),
        ("steps", state.steps.to_string()),
        ("optimizer_t", state.optimizer.steps_taken().to_string()),
        ("model", record.model.clone()),
        ("config", record.config.clone()),
        ("batch_size", run.batch_size.to_string()),
        ("seed", run.seed.to_string()),
        ("steps_per_epoch", run.steps_per_epoch.to_string()),
        ("optimizer", run.optimizer.clone()),
        ("sampling", run.sampling.clone()),
        ("shard_rows", run.shard_rows.to_string()),
    ];
    metadata.extend(names_entry(CLASSES, record.class_names.as_deref()));
    metadata.extend(names_entry(FEATURES, record.feature_names.as_deref()));
    write_tensors(path, &tensors, CHECKPOINT_FORMAT, &metadata)
}

/// The config a checkpoint was written with (to rebuild its model before loading it).
pub fn checkpoint_config(path: &Path) -> Result<String> {
    file_config(path, &[CHECKPOINT_FORMAT])
}

/// The config a parameter file or checkpoint was written with.
pub fn model_config(path: &Path) -> Result<String> {
    file_config(path, &[FORMAT, CHECKPOINT_FORMAT])
}

fn file_config(path: &Path, formats: &[&str]) -> Result<String> {
    let bytes = read_file(path)?;
    let info = metadata(path, &bytes)?;
    let bad = |msg: String| Error::Parse {
        path: path.to_path_buf(),
        msg,
    };
    match (info.get("format").map(String::as_str), info.get("config")) {
        (Some(format), Some(config)) if formats.contains(&format) => Ok(config.clone()),
        (Some(format), None) if formats.contains(&format) => {
            Err(bad("has no `config` in its metadata".into()))
        }
        (format, _) => Err(bad(format!(
            "is not a {} ({})",
            if formats.len() == 1 {
                "checkpoint"
            } else {
                "minibatch model file"
            },
            describe_format(format)
        ))),
    }
}

/// Reads a checkpoint written by `save_checkpoint` for a model with `layout`.
pub fn load_checkpoint(path: &Path, layout: &ParamLayout) -> Result<Checkpoint> {
    let bytes = read_file(path)?;
    let corrupt = |msg: String| Error::Parse {
        path: path.to_path_buf(),
        msg,
    };
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let params = params_from(path, &file, layout)?;
    let info = metadata(path, &bytes)?;
    let format = info.get("format").map(String::as_str);
    if format != Some(CHECKPOINT_FORMAT) {
        return Err(corrupt(format!(
            "is not a checkpoint ({}, expected `{CHECKPOINT_FORMAT}`)",
            describe_format(format)
        )));
    }
    let number = |key: &str| -> Result<u64> {
        info.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(format!("metadata `{key}` is missing or not a number")))
    };
    let buffer = |name: &str| -> Result<Vec<f32>> {
        match file.tensor(name) {
            Ok(t) if t.dtype() == Dtype::F32 => {
                let values: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                // Moments that are not finite (or a negative second moment) would stop the
                // run later, blamed on the learning rate, or freeze a parameter (m / inf).
                let bad = values
                    .iter()
                    .position(|&v| !v.is_finite() || (name == "optimizer.v" && v < 0.0));
                match bad {
                    Some(i) => Err(corrupt(format!(
                        "`{name}` holds {} at flat index {i}; optimizer moments must be finite{}",
                        values[i],
                        if name == "optimizer.v" {
                            " and not negative"
                        } else {
                            ""
                        }
                    ))),
                    None => Ok(values),
                }
            }
            Ok(t) => Err(corrupt(format!(
                "tensor `{name}` is {:?}, expected F32",
                t.dtype()
            ))),
            Err(_) => Ok(Vec::new()),
        }
    };
    Ok(Checkpoint {
        params,
        optimizer: OptimizerState {
            m: buffer("optimizer.m")?,
            v: buffer("optimizer.v")?,
            t: number("optimizer_t")?,
        },
        position: Position {
            epoch: number("epoch")? as usize,
            step_in_epoch: number("step_in_epoch")? as usize,
        },
        steps: number("steps")?,
        run: match info.get("optimizer") {
            Some(optimizer) => {
                let batch_size = number("batch_size")?;
                let shard_rows = match info.get("shard_rows") {
                    None => 0,
                    Some(_) => {
                        let rows = number("shard_rows")?;
                        if !(1..=batch_size).contains(&rows) {
                            return Err(corrupt(format!(
                                "metadata `shard_rows` is {rows}, not a shard of its batch \
                                 of {batch_size} rows (1 to {batch_size})"
                            )));
                        }
                        rows
                    }
                };
                Some(RunShape {
                    batch_size,
                    shard_rows,
                    seed: number("seed")?,
                    steps_per_epoch: number("steps_per_epoch")?,
                    optimizer: optimizer.clone(),
                    sampling: info.get("sampling").cloned().unwrap_or_default(),
                })
            }
            None => None,
        },
        config: info.get("config").cloned().unwrap_or_default(),
    })
}

/// Reads a parameter file written by `save_params` (or any safetensors file with the same
/// tensor names and shapes) into a flat buffer laid out by `layout`.
pub fn load_params(path: &Path, layout: &ParamLayout) -> Result<Vec<f32>> {
    let bytes = read_file(path)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    params_from(path, &file, layout)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Err(read_err(std::io::Error::other(
            "is a directory, expected a safetensors file (a --save file or a checkpoint)",
        )));
    }
    std::fs::read(path).map_err(read_err)
}

/// The tensors of `layout`, by name, from a deserialised file.
fn params_from(path: &Path, file: &SafeTensors<'_>, layout: &ParamLayout) -> Result<Vec<f32>> {
    let corrupt = |msg: String| Error::Parse {
        path: path.to_path_buf(),
        msg,
    };
    // A tensor the model lacks: the file is another model's (a deeper one whose first
    // layers happen to fit), not these parameters.
    let known = |name: &str| {
        layout.entries().iter().any(|e| e.name == name)
            || [
                STANDARDIZE_MEAN,
                STANDARDIZE_STD,
                "optimizer.m",
                "optimizer.v",
            ]
            .contains(&name)
    };
    if let Some(extra) = file.names().into_iter().filter(|n| !known(n)).min() {
        return Err(corrupt(format!(
            "has a tensor `{extra}` that the model does not have (expected {})",
            layout.describe()
        )));
    }
    let mut params = vec![0.0f32; layout.n_params()];
    for entry in layout.entries() {
        let tensor = file.tensor(&entry.name).map_err(|_| {
            corrupt(format!(
                "has no tensor `{}` (expected {})",
                entry.name,
                layout.describe()
            ))
        })?;
        if tensor.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor `{}` is {:?}, expected F32",
                entry.name,
                tensor.dtype()
            )));
        }
        if tensor.shape() != entry.shape() {
            return Err(corrupt(format!(
                "`{}` has shape {:?}, expected {:?} (the model of the config in use)",
                entry.name,
                tensor.shape(),
                entry.shape()
            )));
        }
        let values = &mut params[entry.range()];
        for (dst, src) in values.iter_mut().zip(tensor.data().chunks_exact(4)) {
            *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
        }
        // Training never saves a non-finite parameter; one here would poison every output
        // (or hide behind a ReLU and come back in the next save).
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(corrupt(format!(
                "`{}` holds {} at flat index {i}; parameters must be finite",
                entry.name, values[i]
            )));
        }
    }
    Ok(params)
}

/// Creates `dir` and its parents if missing.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes each `(file name, bytes)` into `dir` (created if missing) as `write_atomic`
/// does, all or none: every destination is checked, then every file written to its
/// temporary name, then all renamed (a directory in the way of the second file left the
/// first written alone).
pub fn write_files_in(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    create_dir(dir)?;
    let mut staged = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        let path = dir.join(name);
        let write_err = |source| Error::Write {
            path: path.clone(),
            source,
        };
        match destination(&path).map_err(write_err)? {
            Destination::Replace(target) => staged.push((path.clone(), target, *bytes)),
            // Nothing to stage: written at once (a report's files are rarely devices).
            other => write_to(&path, other, bytes)?,
        }
    }
    let temps: Vec<PathBuf> = staged
        .iter()
        .map(|(_, target, _)| temp_path(target))
        .collect();
    // On a failure no temporary file stays behind (those renamed before are in place).
    let fail = |i: usize, path: &PathBuf, source| {
        temps[i..]
            .iter()
            .for_each(|t| drop(std::fs::remove_file(t)));
        Err(Error::Write {
            path: path.clone(),
            source,
        })
    };
    for (tmp, (path, _, bytes)) in temps.iter().zip(&staged) {
        if let Err(source) = write_synced(tmp, bytes) {
            return fail(0, path, source);
        }
    }
    for (i, (tmp, (path, target, _))) in temps.iter().zip(&staged).enumerate() {
        if let Err(source) = std::fs::rename(tmp, target) {
            return fail(i, path, source);
        }
    }
    Ok(())
}

/// Where `write_atomic` puts the bytes for a path.
enum Destination {
    /// A regular file, or none yet: a sibling temporary file renamed over this path (the
    /// file a chain of links ends at; the links stay).
    Replace(PathBuf),
    /// A device, FIFO or socket: written where it is. Renaming over it would put a regular
    /// file in its place (`--save /dev/null` run as root replaced the device).
    InPlace(PathBuf),
    /// An open descriptor of this process (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`):
    /// written through it, so a shell's `>> log` appends and a pipe gets the bytes, where
    /// reopening the file it names would truncate or replace it.
    Descriptor(i32),
}

/// The descriptor a path names, if it is an entry of this process's descriptor directory
/// however spelt (`/proc/self/fd/1`, `/dev/fd/1`, `/proc/<pid>/task/<tid>/fd/1`; the links
/// `/dev/stdout` and `/dev/stderr` lead there): the directory is recognised once
/// canonical, not by its name.
fn descriptor_of(path: &Path) -> Option<i32> {
    let dir = path.parent()?.canonicalize().ok()?;
    let parts: Vec<&str> = dir.to_str()?.split('/').collect();
    let ours = std::process::id().to_string();
    let is_fd_dir = match parts[..] {
        ["", "proc", pid, "fd"] => pid == ours,
        ["", "proc", pid, "task", _, "fd"] => pid == ours,
        _ => false,
    };
    if !is_fd_dir {
        return None;
    }
    path.file_name()?.to_str()?.parse().ok()
}

/// Follows links one at a time (a link's target is taken from its own directory) to what
/// `path` finally names.
fn destination(path: &Path) -> std::io::Result<Destination> {
    let mut current = path.to_path_buf();
    // As the kernel's own limit on links followed in one lookup.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Some(fd) = descriptor_of(&current) {
                    return Ok(Destination::Descriptor(fd));
                }
                let target = std::fs::read_link(&current)?;
                current = match current.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Ok(meta) if meta.is_dir() => return Err(std::io::Error::other("is a directory")),
            Ok(meta) if !meta.is_file() => return Ok(Destination::InPlace(current)),
            // A regular file, or a new one (whose directory the write or the probe finds
            // missing, if it is).
            Ok(_) => return Ok(Destination::Replace(current)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Destination::Replace(current));
            }
            Err(err) => return Err(err),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// Creates `path`, writes `bytes` and syncs them.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes `bytes` for `path` where `destination` said.
fn write_to(path: &Path, destination: Destination, bytes: &[u8]) -> Result<()> {
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    match destination {
        Destination::Replace(target) => {
            let tmp = temp_path(&target);
            let result = write_synced(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &target));
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result.map_err(write_err)
        }
        Destination::InPlace(target) => std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .and_then(|mut file| file.write_all(bytes))
            .map_err(write_err),
        Destination::Descriptor(fd) => {
            // What this process printed to standard output so far goes first.
            let _ = std::io::stdout().flush();
            // SAFETY: dup has no preconditions; a descriptor it returns is ours to own.
            let copy = unsafe { libc::dup(fd) };
            if copy < 0 {
                return Err(write_err(std::io::Error::last_os_error()));
            }
            // SAFETY: `copy` is a fresh descriptor owned by nothing else.
            let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(copy) };
            match file.write_all(bytes) {
                // A reader that left early (`| head`), as for `-o -`: not an error.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.map_err(write_err),
            }
        }
    }
}

/// Writes `bytes` to a sibling temporary file, syncs it and renames it over `path`: the
/// file is whole or as it was. A link's file is replaced, not the link; a device or FIFO
/// is written where it is, and a descriptor path (`/dev/stdout`) through the descriptor.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let destination = destination(path).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })?;
    write_to(path, destination, bytes)
}

/// The file `write_atomic` would write for `path`: the end of its links (the path itself
/// for a descriptor, or where the links cannot be followed).
pub fn resolved(path: &Path) -> PathBuf {
    match destination(path) {
        Ok(Destination::Replace(target) | Destination::InPlace(target)) => target,
        _ => path.to_path_buf(),
    }
}

/// Whether `path` names this process's standard output (`/dev/stdout`, `/dev/fd/1`, a
/// link to one), where the commands' own lines go too.
pub fn is_stdout(path: &Path) -> bool {
    matches!(destination(path), Ok(Destination::Descriptor(1)))
}

/// Checks, before the work whose result goes to `path`, that `write_atomic` will be able to
/// write it: it is not a directory and a temporary file can be created beside it (and is
/// removed again), or it is a device, FIFO or open descriptor written where it is. An hour
/// of training lost to a mistyped `--save` directory is what this prevents.
pub fn check_writable(path: &Path) -> Result<()> {
    let unwritable = |source| Error::Unwritable {
        path: path.to_path_buf(),
        source,
    };
    match destination(path).map_err(unwritable)? {
        Destination::InPlace(_) => Ok(()),
        Destination::Descriptor(fd) => {
            // SAFETY: fcntl(F_GETFL) only reads the descriptor's status flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 {
                Err(unwritable(std::io::Error::last_os_error()))
            } else if flags & libc::O_ACCMODE == libc::O_RDONLY {
                Err(unwritable(std::io::Error::other(format!(
                    "descriptor {fd} is open for reading only"
                ))))
            } else {
                Ok(())
            }
        }
        Destination::Replace(target) => probe(&temp_path(&target)).map_err(unwritable),
    }
}

/// Creates `file` and removes it again: whether its directory takes new files.
fn probe(file: &Path) -> std::io::Result<()> {
    std::fs::File::create(file)?;
    let _ = std::fs::remove_file(file);
    Ok(())
}

/// `check_writable` for the output `flag` names, which must not be any of `inputs` (the
/// files the command reads: a model, data or config written over is lost).
pub fn check_output(flag: &str, path: &Path, inputs: &[&Path]) -> Result<()> {
    let canonical = path.canonicalize().ok();
    if let Some(input) = inputs
        .iter()
        .find(|i| canonical.is_some() && i.canonicalize().ok() == canonical)
    {
        return Err(Error::config(
            flag,
            format!(
                "{} is an input of this command; write elsewhere",
                input.display()
            ),
        ));
    }
    check_writable(path)
}

/// `check_writable` for an output directory (`write_files_in`'s): the directory, or the
/// nearest one above it that exists, must take a new file, and none of the `files` to be
/// written there may be a directory. Nothing is created: the directory is made when the
/// results are written, so a run stopped before leaves none.
pub fn check_output_dir(dir: &Path, files: &[&str]) -> Result<()> {
    let unwritable = |source| Error::Unwritable {
        path: dir.to_path_buf(),
        source,
    };
    // `ck/`, `ck/.`: the link `ck` itself is what to look at (a trailing slash follows it).
    let normal: PathBuf = dir.components().collect();
    let mut existing = normal.as_path();
    while !existing.exists() {
        // A link to a directory not there: creating it later fails (the link is there).
        if existing.symlink_metadata().is_ok() {
            return Err(Error::Unwritable {
                path: existing.to_path_buf(),
                source: std::io::Error::other(format!(
                    "is a link to {}, which is not there",
                    std::fs::read_link(existing).unwrap_or_default().display()
                )),
            });
        }
        existing = match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
    }
    if !existing.is_dir() {
        return Err(unwritable(std::io::Error::other(
            if existing == normal.as_path() {
                "exists and is not a directory".to_string()
            } else {
                format!("{} is not a directory", existing.display())
            },
        )));
    }
    for path in files.iter().map(|f| dir.join(f)) {
        match destination(&path) {
            Err(source) => return Err(Error::Unwritable { path, source }),
            // A link to a file in a directory not there (the output directory itself is
            // made when the files are written).
            Ok(Destination::Replace(target))
                if target != path && target.parent().is_some_and(|p| !p.exists()) =>
            {
                return Err(Error::Unwritable {
                    path,
                    source: std::io::Error::other(format!(
                        "is a link into {}, which is not there",
                        target.parent().unwrap_or(&target).display()
                    )),
                });
            }
            Ok(_) => {}
        }
    }
    probe(&existing.join(format!(".minibatch-probe-{}", std::process::id()))).map_err(unwritable)
}

/// `path` as one word of a shell command: as it is when it holds only characters no
/// shell treats specially, else in single quotes.
pub fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The temporary file `write_atomic` writes before renaming it over `path` (a sibling
/// named for this process).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
