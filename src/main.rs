//! The `minibatch` binary: parse arguments, install the log subscriber, run the command, and
//! turn any error into one message on stderr and an exit code (2: bad input, 1: run failure,
//! 130: interrupted by Ctrl-C). Under an MPI launcher it also learns its rank and size, and
//! a rank that fails alone ends the whole job.

/// `println!` for the commands' results. A stdout closed early (output piped into `head`)
/// loses the rest of the text, not the run: training goes on to its saves and checkpoints
/// instead of panicking in a print. Any other failed write (a full disk behind a redirect)
/// is remembered for `main` to report as the command's failure.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::stdout_result(writeln!(std::io::stdout(), $($arg)*));
    }};
}
/// `eprintln!` that drops what a closed stderr refuses (a pipe whose reader left): the
/// exit code still tells, where `eprintln!` would panic.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
/// `print!` as `outln!` is `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::stdout_result(write!(std::io::stdout(), $($arg)*));
    }};
}

mod cli;
mod commands;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::Parser;
use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;

use minibatch::profile::Recorder;
use minibatch::{Config, RawConfig, Result};

use cli::{Cli, Command, ConfigArgs};
use commands::{model, report, train};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let recorder = match &cli.command {
        Command::Train(args) if args.trace.is_some() || args.profile => Some(Recorder::new()),
        Command::Scale(_) => Some(Recorder::new()),
        _ => None,
    };
    install_subscriber(&cli, recorder.clone());
    let mut launch = match Launch::join(&cli.command) {
        Ok(launch) => launch,
        // Every process the launcher started refuses alike: rank 0 says why, and its status
        // is the job's. The others exit quietly with success: the launcher ends the whole job
        // when the first rank fails, which could cut rank 0 off before it printed.
        Err(_) if minibatch::cluster::launcher_rank().is_some_and(|r| r > 0) => {
            return ExitCode::SUCCESS;
        }
        Err(err) => return fail(&err, &Launch::default()),
    };
    let result = match &cli.command {
        Command::Train(args) => train::train(args, cli.quiet, recorder.as_ref(), launch.comm()),
        _ if launch.size > 1 => Err(only_train(&format!("{} ranks here", launch.size))),
        Command::Layout(args) => model::layout(args),
        Command::Bench(args) => report::bench(args, cli.quiet),
        Command::Tune(args) => report::tune(args, cli.quiet),
        Command::Descent(args) => model::descent(args, cli.quiet),
        Command::Eval(args) => model::eval(args),
        Command::Predict(args) => model::predict(args, cli.quiet),
        Command::Scale(args) => report::scale(
            args,
            cli.quiet,
            recorder.as_ref().expect("installed for scale"),
        ),
    };
    // What reached standard output is part of the result: a write that failed (other than
    // into a closed pipe) fails the command.
    stdout_result(std::io::stdout().flush());
    let result = result.and(match STDOUT_ERROR.get() {
        Some(source) => Err(minibatch::Error::Write {
            path: "standard output".into(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        }),
        None => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err, &launch),
    }
}

/// The first failed write to standard output, if any.
static STDOUT_ERROR: OnceLock<std::io::Error> = OnceLock::new();

/// Records a failed write to standard output, unless its reader left (`| head`).
fn stdout_result(result: std::io::Result<()>) {
    if let Err(err) = result
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = STDOUT_ERROR.set(err);
    }
}

/// Prints the error (naming the rank when there are several) and ends the process. A rank
/// that fails alone ends the whole job: the others would wait for it forever.
fn fail(err: &minibatch::Error, launch: &Launch) -> ExitCode {
    let code = err.exit_code();
    if launch.size <= 1 {
        errln!("minibatch: {err}");
        return ExitCode::from(code);
    }
    // Every rank meets these at the same step (the gathered loss is the same everywhere, and
    // stops are agreed): rank 0 reports them and every rank exits normally.
    let every_rank = matches!(
        err,
        minibatch::Error::Interrupted { .. }
            | minibatch::Error::InterruptedBeforeTraining
            | minibatch::Error::NonFinite { .. }
            | minibatch::Error::Overflow { .. }
            | minibatch::Error::RanksDiffer(_)
            | minibatch::Error::SingleProcess(_)
    );
    if !every_rank || launch.rank == 0 {
        errln!("minibatch: rank {} of {}: {err}", launch.rank, launch.size);
    }
    #[cfg(feature = "mpi")]
    if every_rank {
        minibatch::cluster::mpi::barrier();
    } else {
        minibatch::cluster::mpi::abort(i32::from(code));
    }
    ExitCode::from(code)
}

/// The processes an MPI launcher (mpirun, mpiexec) started, as this process sees them.
#[derive(Default)]
struct Launch {
    rank: usize,
    size: usize,
    comm: Option<Box<dyn minibatch::cluster::Collective>>,
    /// Finalises MPI when dropped, after the command.
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Launch {
    /// Joins the launcher's other processes, if one started this one; only `train` runs
    /// across ranks.
    fn join(command: &Command) -> Result<Self> {
        // `fast` asks for ranks; `exact`, the default, is what one process does anyway.
        let asks_for_ranks = matches!(
            command,
            Command::Train(args) if args.reduction == Some(minibatch::cluster::Reduction::Fast)
        );
        let Some(size) = minibatch::cluster::launcher_size() else {
            if asks_for_ranks {
                return Err(minibatch::Error::Cluster(format!(
                    "--reduction fast applies to runs across MPI ranks: start the run with \
                     `mpirun -n R minibatch train ...`{}",
                    if cfg!(feature = "mpi") {
                        ""
                    } else {
                        ", with a minibatch built with MPI (cargo build --release --features mpi)"
                    }
                )));
            }
            return Ok(Launch::default());
        };
        #[cfg(not(feature = "mpi"))]
        {
            let processes = match size {
                0 => "processes the launcher started".to_string(),
                n => format!("{n} processes the launcher started"),
            };
            if !matches!(command, Command::Train(_)) && size != 1 {
                return Err(only_train(&format!("the {processes} would each run it")));
            }
            if size != 1 || asks_for_ranks {
                let what = if size == 1 {
                    "and --reduction fast needs MPI ranks".to_string()
                } else {
                    format!("so the {processes} would each train alone")
                };
                return Err(minibatch::Error::Cluster(format!(
                    "this minibatch was built without MPI, {what}. Build it with MPI (needs an MPI \
                     library and libclang, e.g. `apt install openmpi-bin libopenmpi-dev \
                     libclang-dev`): cargo build --release --features mpi"
                )));
            }
            Ok(Launch::default())
        }
        #[cfg(feature = "mpi")]
        {
            // MPI knows the size itself (the environment may not name it).
            let _ = size;
            let (universe, mpi) = minibatch::cluster::mpi::init()?;
            use minibatch::cluster::Collective;
            if mpi.size() > 1 {
                // A panicking rank would otherwise wait in MPI_Finalize for ranks that wait
                // for it in the next collective: end the whole job instead.
                let report = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    report(info);
                    minibatch::cluster::mpi::abort(101);
                }));
            }
            let launch = Launch {
                rank: mpi.rank(),
                size: mpi.size(),
                comm: Some(Box::new(mpi)),
                _universe: Some(universe),
            };
            // A command other than train is refused by `main` with the ranks joined, so
            // that rank 0 can say why before the others exit.
            Ok(launch)
        }
    }

    fn comm(&mut self) -> Option<Box<dyn minibatch::cluster::Collective>> {
        self.comm.take()
    }
}

/// The refusal of a command other than train under a launcher of several processes.
fn only_train(why: &str) -> minibatch::Error {
    minibatch::Error::SingleProcess(format!(
        "only `minibatch train` runs across MPI ranks: run this command without the launcher \
         ({why})"
    ))
}

/// Log lines to stderr, filtered by RUST_LOG or -v/-q; and, for --trace/--profile, the span
/// recorder, which listens to every span of this crate whatever the log filter says.
fn install_subscriber(cli: &Cli, recorder: Option<Recorder>) {
    use tracing_subscriber::prelude::*;
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let spans = filter
        .max_level_hint()
        .is_some_and(|level| level >= tracing_subscriber::filter::LevelFilter::DEBUG);
    // Under an MPI launcher every rank logs: say whose line it is.
    let prefix: &'static str = match minibatch::cluster::launcher_rank() {
        Some(rank) if minibatch::cluster::launcher_size() != Some(1) => {
            format!("[rank {rank}] ").leak()
        }
        _ => "",
    };
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(move || LogLine(prefix.as_bytes().to_vec()))
        // From -vv on (or a RUST_LOG that lets debug through), a line as each span the filter
        // lets through closes (a step, with its busy and idle time; at -vvv or trace its
        // shards, reduction and update too).
        .with_span_events(if spans {
            tracing_subscriber::fmt::format::FmtSpan::CLOSE
        } else {
            tracing_subscriber::fmt::format::FmtSpan::NONE
        })
        .with_filter(filter);
    let recording = recorder.map(|r| {
        r.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("minibatch", tracing::Level::TRACE),
        )
    });
    tracing_subscriber::registry()
        .with(log)
        .with(recording)
        .init();
}

/// The config as given (file plus flags, kept to record in saved files) and validated.
pub(crate) fn load_config(args: &ConfigArgs) -> Result<(RawConfig, Config)> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    args.overrides.apply(&mut raw);
    let cfg = raw.validate()?;
    Ok((raw, cfg))
}

/// The live progress bar of `train`, if any, so log lines can step around it.
pub(crate) static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// One log event's text, written to stderr in one piece, above the progress bar if one is
/// drawn.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().write_all(&self.0);
        };
        match BAR.get() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
