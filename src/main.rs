//! The `minibatch` binary: parse arguments, install the log subscriber, run the command, and
//! turn any error into one message on stderr and an exit code (2: bad input, 1: run failure).

mod cli;
mod commands;

use std::io::Write;
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
    let result = match &cli.command {
        Command::Train(args) => train::train(args, cli.quiet, recorder.as_ref()),
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("minibatch: {err}");
            ExitCode::from(err.exit_code())
        }
    }
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
    let log = tracing_subscriber::fmt::layer()
        .with_writer(|| LogLine(Vec::new()))
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
