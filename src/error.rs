//! The library's one error type and the exit code each kind maps to.
//!
//! Every message names what the user can fix (a config key, a file and line, a tensor and its
//! shapes) and what is allowed. The binary prints it once and exits with `exit_code()`; the
//! library never prints and never exits.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value in the config (or the command-line flag that overrides it) is not allowed.
    /// `key` may be a flag of its own (`--steps`), which is named as such.
    #[error("{}`{key}`{}: {msg}", if key.starts_with('-') { "" } else { "config " }, flag.map(|f| format!(" (set by {f})")).unwrap_or_default())]
    Config {
        key: String,
        flag: Option<&'static str>,
        msg: String,
    },
    /// A file could be read but its content is malformed (TOML syntax, wrong types, ...).
    #[error("{}: {msg}", .path.display())]
    Parse { path: PathBuf, msg: String },
    /// A data file is malformed at a line (0: the file as a whole).
    #[error("{}{}: {msg}", .path.display(), if *.line > 0 { format!(":{}", .line) } else { String::new() })]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A file the user named cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An output file cannot be written; nothing half-written is left behind.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An output path is checked before the work that fills it and cannot be written (a
    /// missing or read-only directory, a directory where a file is wanted).
    #[error("cannot write {}: {source}", .path.display())]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tensor does not have the shape the model's layout expects.
    #[error("`{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// The run was stopped by SIGINT or SIGTERM after writing a checkpoint.
    #[error("interrupted at epoch {epoch}, step {step}; checkpoint written to {}; resume with: {program} train --resume {}{again}", .checkpoint.display(), crate::checkpoint::shell_word(.checkpoint))]
    Interrupted {
        checkpoint: PathBuf,
        epoch: usize,
        step: u64,
        /// How the run was started, to start the resumed one alike: the program's name, after
        /// `mpirun -n R` across ranks.
        program: String,
        /// The interrupted command's output flags, for the resumed one to repeat (the
        /// checkpoint holds the config, not where the results go).
        again: String,
    },
    /// SIGINT or SIGTERM came while the run was being set up (reading or generating its
    /// data): nothing was trained, so there is nothing to checkpoint.
    #[error("interrupted before the first step; nothing was trained or written")]
    InterruptedBeforeTraining,
    /// Training across processes cannot start as asked (built without MPI, a launcher
    /// the command does not support, an MPI library without thread support).
    #[error("{0}")]
    Cluster(String),
    /// A command that runs in one process was started by an MPI launcher on several: every
    /// rank finds it at once, before any work.
    #[error("{0}")]
    SingleProcess(String),
    /// The ranks of a run read different inputs; every rank finds it at once, before the
    /// first step, so all stop alike.
    #[error("{0}")]
    RanksDiffer(String),
    /// Training diverged: a batch's loss was not finite (the step was not applied).
    #[error(
        "loss became {value} at epoch {epoch}, step {step} (lr {}{}); {}",
        crate::optim::show(*lr),
        last_finite.map(|l| format!(", last finite batch loss {}", short(l))).unwrap_or_default(),
        if *step == 1 {
            "the starting parameters give it, before any update: check the data's scale \
             (data.standardize) or the --init file"
        } else {
            "try a smaller learning rate (or weight decay)"
        }
    )]
    NonFinite {
        value: f64,
        epoch: usize,
        step: u64,
        lr: f32,
        /// The last batch loss that was finite, if this process took a step before.
        last_finite: Option<f64>,
    },
    /// Training diverged: an update whose batch's loss (computed before it) was finite left
    /// parameters that are not finite, or so large that the validation loss is not.
    #[error(
        "{what} became non-finite by epoch {epoch}, step {step}: an update overflowed; try a \
         smaller learning rate (or weight decay)"
    )]
    Overflow {
        what: &'static str,
        epoch: usize,
        step: u64,
    },
}

impl Error {
    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            flag: None,
            msg: msg.into(),
        }
    }

    /// 2 for input the user can correct (as clap does for bad flags), 1 for failures at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config { .. }
            | Error::Parse { .. }
            | Error::Data { .. }
            | Error::Read { .. }
            | Error::Unwritable { .. }
            | Error::Shape { .. }
            | Error::Cluster(_)
            | Error::SingleProcess(_)
            | Error::RanksDiffer(_) => 2,
            Error::Write { .. } | Error::NonFinite { .. } | Error::Overflow { .. } => 1,
            Error::Interrupted { .. } | Error::InterruptedBeforeTraining => 130,
        }
    }
}

/// A loss in a message: as it is, or in exponent form when huge.
fn short(x: f64) -> String {
    if x != 0.0 && !(1e-3..1e6).contains(&x.abs()) {
        format!("{x:.4e}")
    } else {
        format!("{x:.4}")
    }
}
