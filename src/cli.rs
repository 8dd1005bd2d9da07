//! Command-line arguments (binary only: the library never sees clap).
//!
//! Every flag that overrides a config key is written into the `RawConfig` before validation,
//! so flag and file values get the same checks and the same messages.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use minibatch::RawConfig;

#[derive(Debug, Parser)]
#[command(
    name = "minibatch",
    version,
    about = "Data-parallel mini-batch SGD on every core, bit-identical for any thread count",
    long_about = "Trains models by mini-batch stochastic gradient descent. Each batch is cut into \
shards whose gradients are computed in parallel and summed by a fixed tree, then one parameter \
step is taken. The result does not depend on the number of threads.\n\n\
Configs are TOML files (see configs/ and the README's config reference); flags override keys."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v: per-epoch events, -vv: per-step spans). RUST_LOG,
    /// when set, takes precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, display_order = 1000)]
    pub verbose: u8,
    /// Print nothing but errors and the results asked for (eval's figures, layout's table,
    /// descent --text): no headers, epoch lines, progress or notes.
    #[arg(
        short,
        long,
        global = true,
        display_order = 1000,
        conflicts_with = "verbose"
    )]
    pub quiet: bool,
}

/// Commands taking numbers accept negative ones as values (`--lr -1`), so that the range
/// check, not the parser, answers them.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from a config and print loss, accuracy and speed per epoch.
    #[command(allow_negative_numbers = true)]
    Train(TrainArgs),
    /// Print the parameter layout (tensor names, shapes, offsets) a config's model uses;
    /// reads and checks the config's data first (the input width comes from it).
    Layout(ConfigArgs),
    /// Measure training speed of the standard workloads against this machine's peak FMA
    /// rate and memory bandwidth, both measured in the same run.
    #[command(allow_negative_numbers = true)]
    Bench(BenchArgs),
    /// Train a config on several thread counts and batch sizes and report speedup, parallel
    /// efficiency, the Karp-Flatt serial fraction and the per-phase breakdown that explains
    /// lost efficiency; writes scale.csv and scale.svg and predicts 16- and 64-core speedup.
    #[command(allow_negative_numbers = true)]
    Scale(ScaleArgs),
    /// Recommend a batch size: measure throughput per batch size, estimate the gradient
    /// noise scale while training the config, and minimise the time to a given loss;
    /// optionally train each candidate to a target loss. Writes tune.csv and tune.svg.
    #[command(allow_negative_numbers = true)]
    Tune(TuneArgs),
    /// Draw smooth (full-batch) and jittery (mini-batch) descent paths on the loss bowl of
    /// a two-parameter linear regression, trained by the engine: descent.svg, and
    /// descent.html with a batch-size slider and a Refresh button.
    #[command(allow_negative_numbers = true)]
    Descent(DescentArgs),
    /// Evaluate a saved model (a --save file or a checkpoint) on its config's data: loss,
    /// accuracy and a confusion matrix for classifiers, MSE and R^2 for regression.
    Eval(EvalArgs),
    /// Write a saved model's predictions for its config's data as CSV.
    Predict(PredictArgs),
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model: a file written by `train --save` or a checkpoint.
    #[arg(short, long, value_name = "PATH")]
    pub model: PathBuf,
    /// Data to evaluate on, as a config (default: the config saved with the model). The
    /// validation split is used when the config has one, else the training rows.
    #[arg(short, long, value_name = "FILE", conflicts_with = "data")]
    pub config: Option<PathBuf>,
    /// Data to evaluate on, as a file (CSV, LIBSVM or .npy, read with the label settings the
    /// model was trained with); every row is used.
    #[arg(short, long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// The targets .npy that goes with a --data .npy file (eval needs it; predict without it
    /// leaves the target column empty).
    #[arg(long, value_name = "FILE", requires = "data")]
    pub labels: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub eval: EvalArgs,
    /// CSV file to write (`-`: standard output): row (its 0-based place in its data file),
    /// target, prediction (the class, or the value), and for classifiers each class's
    /// probability.
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DescentArgs {
    /// Batch size of the jittery path, 1..=N.
    #[arg(short, long, default_value_t = 4)]
    pub batch_size: usize,
    /// Examples of the dataset (y = w x + b + noise).
    #[arg(long, default_value_t = 128)]
    pub n: usize,
    /// Steps per path.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f32,
    /// Seed of the data and of the first jittery path.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Recorded jittery paths per batch size (Refresh cycles through them).
    #[arg(long, default_value_t = 8)]
    pub seeds: usize,
    /// How many of them the SVG draws at once (more than one shows the paths scattering
    /// around the smooth one: noisy but unbiased).
    #[arg(long, default_value_t = 1)]
    pub show_seeds: usize,
    /// Standard deviation of the targets' noise.
    #[arg(long, default_value_t = 0.5)]
    pub noise: f32,
    /// Also print the picture as text (o full batch, * mini-batch, S start, X minimum).
    #[arg(long)]
    pub text: bool,
    /// Directory for descent.svg and descent.html.
    #[arg(short, long, default_value = "descent-out")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TuneArgs {
    /// TOML config file; its batch size and learning rate are the reference B0 and lr0.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Candidate batch sizes; default powers of two from 8 to N/8.
    #[arg(short, long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Thread counts to compare; default the config's.
    #[arg(short, long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Also train each candidate until its (smoothed) training loss reaches this value, for
    /// at most 200 epochs (or --budget examples).
    #[arg(long, value_name = "LOSS")]
    pub target_loss: Option<f64>,
    /// Also train each candidate for this many examples (alone or as a cap with --target-loss).
    #[arg(long, value_name = "EXAMPLES")]
    pub budget: Option<u64>,
    /// How a candidate's learning rate follows from the config's: noise (McCandlish et al.,
    /// the default), linear, sqrt or none.
    #[arg(long, default_value = "noise")]
    pub lr_rule: String,
    /// Seconds of training per throughput measurement.
    #[arg(long, default_value_t = 0.3)]
    pub seconds: f64,
    /// Directory for tune.csv and tune.svg.
    #[arg(short, long, default_value = "tune-out")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// TOML config file (default: the built-in quickstart-like MLP).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Thread counts, rising from 1 (the baseline), e.g. 1,2,4; default 1, 2, 4, ... up to
    /// every core.
    #[arg(short, long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Batch sizes, e.g. 128,512; default the config's.
    #[arg(short, long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Epochs per measurement.
    #[arg(short, long, default_value_t = 1)]
    pub epochs: usize,
    /// Directory for scale.csv and scale.svg.
    #[arg(short, long, default_value = "scale-out")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads: w1 (MLP 784-256-256-10), w2 (logistic regression, d = 1000, N = 1M:
    /// 4 GB of features), w3 (linear regression, d = 10, B = 1), or `all`.
    #[arg(short, long, value_delimiter = ',', default_value = "w1,w3")]
    pub workload: Vec<String>,
    /// Batch sizes; default: each workload's standard ones (w1: 32,128,512,2048; w2:
    /// 256,4096; w3: 1).
    #[arg(short, long, value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Thread counts to compare, each once; the speedup column is over the 1-thread row of
    /// the same workload, batch size and shard size, when 1 is among them. Default: 1 and
    /// every core this process may run on.
    #[arg(short, long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Rows per shard to compare (e.g. 32,64,128) instead of the default chosen from the
    /// batch size: more shards give more cores work; on few cores shards run in groups of
    /// up to 512 rows, so their size matters less there.
    #[arg(long, value_delimiter = ',')]
    pub shard_rows: Vec<usize>,
    /// Rows of each workload's dataset instead of its standard N (e.g. to fit w2 in less
    /// memory).
    #[arg(long)]
    pub n: Option<usize>,
    /// Epochs timed per row; the fastest one counts, since a shared machine slows some.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Measure every row this many times, in rounds over all of a workload's rows, and
    /// report its fastest epoch of all: a shared machine's slow stretches outlast a row's
    /// epochs, and rounds spread its measurements over the run (the measurements take this
    /// many times as long; the data and the limits are made and measured once).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML config file; without one the built-in defaults are used (a small MLP on the
    /// MNIST-shaped synthetic set).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Write the final parameters to this safetensors file (readable by numpy and PyTorch).
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,
    /// Write a Chrome trace-event JSON of every span (run, epoch, step, shard, reduce,
    /// update, ...), one track per worker thread; open it in Perfetto (ui.perfetto.dev) or
    /// chrome://tracing. Records every step: keep runs short.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Print a per-phase profile at the end: count, total, mean, p50, p99 and share of step
    /// time per span, and each worker's busy and idle time.
    #[arg(long)]
    pub profile: bool,
    /// Write checkpoints (parameters, optimizer state, position, config) into this
    /// directory: at the end of every epoch, every --checkpoint-every steps, at the end of
    /// the run and on Ctrl-C. Each is written to a temporary file and renamed. A directory
    /// holding checkpoints past the step the run starts from is refused (they would be
    /// overwritten).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Also checkpoint every this many steps.
    #[arg(long, value_name = "STEPS")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints of this run to keep in the directory (the newest); files already there
    /// are never removed.
    #[arg(long, default_value_t = 3, value_name = "N", requires = "checkpoint")]
    pub keep: usize,
    /// Continue the run saved in this checkpoint (its config, unless --config is given;
    /// flags still override). The final parameters are the same bits as an uninterrupted run.
    #[arg(long, value_name = "PATH", conflicts_with = "init")]
    pub resume: Option<PathBuf>,
    /// Start from the parameters in this file (a --save file or a checkpoint); names and
    /// shapes must match the model.
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// Across MPI ranks (`mpirun -n R minibatch train ...`, with a build that has the `mpi`
    /// feature): how the ranks' gradients meet. `exact` (default) follows the single-process
    /// tree, so the parameters are the same bits for any rank and thread count; `fast` sums
    /// each rank's shards and calls MPI's all-reduce (one collective instead of two, the
    /// summation order left to the MPI library).
    #[arg(long, value_name = "exact|fast")]
    pub reduction: Option<minibatch::cluster::Reduction>,
}

/// Flags that override config keys of the same name.
#[derive(Debug, Args)]
pub struct Overrides {
    /// Worker threads (`train.threads`); default: every core (under an MPI launcher, the
    /// rank's share of them). Results are identical for any value.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Examples per step (`train.batch_size`), 1..=N: 1 is pure SGD, N is full-batch
    /// descent. Without it or the key: 128 (or N when smaller).
    #[arg(short, long, value_name = "B")]
    pub batch_size: Option<usize>,
    /// Passes over the training set (`train.epochs`). Without it or the key: 5.
    #[arg(short, long, value_name = "E")]
    pub epochs: Option<usize>,
    /// Learning rate (`train.lr`), finite and > 0. Without it or the key: 0.05.
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Seed for data, initialisation and sampling (`seed`). Without it or the key: 0.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Rows per shard (`train.shard_rows`). Without it or the key: ceil(B / 16) within
    /// [64, 256], and a batch of 32-127 rows in two halves (so two cores share it); at
    /// most B. Unlike the thread count, it changes the bits (the
    /// reduction's order): a resumed run given another says so.
    #[arg(long, value_name = "R")]
    pub shard_rows: Option<usize>,
    /// `shuffle` (a permutation per epoch) or `uniform` (B distinct rows drawn per step)
    /// (`train.sampling`). Without it or the key: shuffle.
    #[arg(long, value_name = "MODE")]
    pub sampling: Option<String>,
    /// `sgd`, `momentum`, `nesterov`, `adam` or `adamw` (`train.optimizer`). Without it or
    /// the key: sgd.
    #[arg(long, value_name = "NAME")]
    pub optimizer: Option<String>,
    /// Momentum mu in [0, 1) (`train.momentum`). Without it or the key: 0.9 for momentum
    /// and nesterov, 0 for sgd (sgd with a momentum is heavy-ball momentum, as PyTorch's).
    #[arg(long, value_name = "MU")]
    pub momentum: Option<f64>,
    /// Weight decay >= 0: L2, or decoupled for adamw (`train.weight_decay`). Without it or
    /// the key: 0.
    #[arg(long, value_name = "WD")]
    pub weight_decay: Option<f64>,
    /// Clip the mean gradient's global L2 norm to this (`train.clip_norm`). Without it or
    /// the key: no clipping.
    #[arg(long, value_name = "C")]
    pub clip_norm: Option<f64>,
    /// Learning-rate schedule: constant, step, exponential or cosine
    /// (`train.schedule.kind`; its other keys come from the config). Without it or the key:
    /// constant.
    #[arg(long, value_name = "KIND")]
    pub schedule: Option<String>,
    /// Linear warmup steps before the schedule (`train.schedule.warmup_steps`). Without it
    /// or the key: none.
    #[arg(long, value_name = "STEPS")]
    pub warmup_steps: Option<u64>,
    /// Drop each epoch's short last batch (`train.drop_last`).
    #[arg(long)]
    pub drop_last: bool,
}

impl Overrides {
    pub fn apply(&self, raw: &mut RawConfig) {
        macro_rules! set {
            ($field:expr, $value:expr, $key:literal, $flag:literal) => {
                if let Some(v) = $value.clone() {
                    $field = Some(v);
                    raw.mark_overridden($key, $flag);
                }
            };
        }
        set!(
            raw.train.threads,
            self.threads,
            "train.threads",
            "--threads"
        );
        set!(
            raw.train.batch_size,
            self.batch_size,
            "train.batch_size",
            "--batch-size"
        );
        set!(raw.train.epochs, self.epochs, "train.epochs", "--epochs");
        set!(raw.train.lr, self.lr, "train.lr", "--lr");
        set!(raw.seed, self.seed, "seed", "--seed");
        set!(
            raw.train.shard_rows,
            self.shard_rows,
            "train.shard_rows",
            "--shard-rows"
        );
        if let Some(name) = &self.sampling {
            raw.train.set_sampling(name);
            raw.mark_overridden("train.sampling", "--sampling");
        }
        if let Some(name) = &self.optimizer {
            raw.train.set_optimizer(name);
            raw.mark_overridden("train.optimizer", "--optimizer");
        }
        set!(
            raw.train.momentum,
            self.momentum,
            "train.momentum",
            "--momentum"
        );
        set!(
            raw.train.weight_decay,
            self.weight_decay,
            "train.weight_decay",
            "--weight-decay"
        );
        set!(
            raw.train.clip_norm,
            self.clip_norm,
            "train.clip_norm",
            "--clip-norm"
        );
        if let Some(kind) = &self.schedule {
            raw.train
                .schedule
                .get_or_insert_with(Default::default)
                .set_kind(kind);
            raw.mark_overridden("train.schedule.kind", "--schedule");
        }
        if let Some(steps) = self.warmup_steps {
            raw.train
                .schedule
                .get_or_insert_with(Default::default)
                .set_warmup_steps(steps);
            raw.mark_overridden("train.schedule.warmup_steps", "--warmup-steps");
        }
        set!(
            raw.train.drop_last,
            self.drop_last.then_some(true),
            "train.drop_last",
            "--drop-last"
        );
    }
}
