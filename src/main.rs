//! The `minibatch` binary: parse arguments, install the log subscriber, run the command, and
//! turn any error into one message on stderr and an exit code (2: bad input, 1: run failure).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use minibatch::checkpoint::save_params;
use minibatch::{Config, EpochReport, Mlp, Model, RawConfig, Result, Trainer, data};

use cli::{Cli, Command, ConfigArgs, TrainArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_subscriber(&cli);
    let result = match &cli.command {
        Command::Train(args) => train(args, cli.quiet),
        Command::Layout(args) => layout(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("minibatch: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn install_subscriber(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The config as given (file plus flags, kept to record in saved files) and validated.
fn load_config(args: &ConfigArgs) -> Result<(RawConfig, Config)> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    args.overrides.apply(&mut raw);
    let cfg = raw.validate()?;
    Ok((raw, cfg))
}

fn layout(args: &ConfigArgs) -> Result<()> {
    let (_, cfg) = load_config(args)?;
    let model = Mlp::new(cfg.model.clone());
    println!(
        "{} ({} parameters)",
        cfg.model.describe(),
        model.layout().n_params()
    );
    for entry in model.layout().entries() {
        println!(
            "  {:<4} {:<14} offset {}",
            entry.name,
            format!("{:?}", entry.shape),
            entry.offset
        );
    }
    Ok(())
}

fn train(args: &TrainArgs, quiet: bool) -> Result<()> {
    let (raw, cfg) = load_config(&args.config)?;
    let model = Mlp::new(cfg.model.clone());
    let n_params = model.layout().n_params();
    let mut trainer = Trainer::new(model, cfg.data.d, &cfg.train, cfg.seed)?;
    let (train, valid) = trainer.install(|| data::synthetic(&cfg.data, cfg.seed));
    let t = &cfg.train;
    let shards = minibatch::shard::n_shards(t.batch_size.get(), t.shard_rows);
    if !quiet {
        println!(
            "{} ({n_params} params) | train {} x {}{} | B {} in {shards} shard{} of {} rows | {} thread{} | {}, {}",
            cfg.model.describe(),
            train.n(),
            train.d(),
            valid
                .as_ref()
                .map(|v| format!(", valid {}", v.n()))
                .unwrap_or_default(),
            t.batch_size,
            if shards == 1 { "" } else { "s" },
            t.shard_rows.get().min(t.batch_size.get()),
            t.threads,
            if t.threads.get() == 1 { "" } else { "s" },
            t.optimizer.describe(),
            t.schedule.describe(),
        );
    }
    let report = trainer.fit(&train, valid.as_ref(), |epoch| {
        if !quiet {
            println!("{}", epoch_line(epoch));
        }
    })?;
    if !quiet {
        let last = report.epochs.last().expect("at least one epoch");
        println!(
            "done: {} epochs, {} steps, {} examples in {:.2} s ({:.0} examples/s); final train loss {:.4}{}",
            report.epochs.len(),
            report.steps,
            report.examples,
            report.seconds,
            report.examples as f64 / report.seconds.max(1e-12),
            last.train.mean_loss(),
            last.valid
                .map(|v| format!(", valid loss {:.4}", v.mean_loss()))
                .unwrap_or_default(),
        );
    }
    if let Some(path) = &args.save {
        let config_text = toml::to_string(&raw.recorded()).unwrap_or_default();
        save_params(
            path,
            trainer.model().layout(),
            trainer.params(),
            &[("model", cfg.model.describe()), ("config", config_text)],
        )?;
        if !quiet {
            println!("saved parameters to {}", path.display());
        }
    }
    Ok(())
}

fn epoch_line(r: &EpochReport) -> String {
    let mut line = format!(
        "epoch {:>3}/{}  train loss {:.4}",
        r.epoch,
        r.epochs,
        r.train.mean_loss()
    );
    if r.is_classifier {
        line += &format!(" acc {:5.2}%", 100.0 * r.train.accuracy());
    }
    if let Some(v) = r.valid {
        line += &format!("  valid loss {:.4}", v.mean_loss());
        if r.is_classifier {
            line += &format!(" acc {:5.2}%", 100.0 * v.accuracy());
        }
    }
    line += &format!("  {:>10.0} ex/s  {:.2} s", r.examples_per_sec(), r.seconds);
    line
}
