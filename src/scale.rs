//! `minibatch scale`: how far more threads speed up one config, and what stops them.
//!
//! For each batch size and thread count it trains the config (validation off) with the span
//! recorder listening, and reports examples/s, the speedup over the first thread count given,
//! parallel efficiency S/p, the Karp-Flatt serial fraction e = (1/S - 1/p) / (1 - 1/p), and
//! the per-phase shares of step time from the recorded spans, which say where the lost
//! efficiency goes (serial packing, the reduction, the update, idle workers). From e it
//! predicts, by Amdahl's law, the speedup of 16 and 64 cores.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::bench::{amdahl_in_shards, serial_fraction_in_shards};
use crate::checkpoint::write_files_in;
use crate::config::RawConfig;
use crate::data;
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::profile::{Recorder, profile};
use crate::train::Trainer;

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    pub batch_size: usize,
    /// Shards per batch: the most threads its parallel part can use.
    pub shards: usize,
    pub threads: usize,
    pub examples_per_sec: f64,
    pub speedup: f64,
    pub efficiency: f64,
    /// Karp-Flatt serial fraction; empty for the baseline thread count.
    pub serial_fraction: Option<f64>,
    pub prepare_share: f64,
    pub shards_share: f64,
    pub reduce_share: f64,
    pub update_share: f64,
    /// Mean share of step time the workers spent inside shards.
    pub worker_busy_share: f64,
}

/// Runs the sweep. `recorder` must be installed as a layer of the global subscriber (the
/// binary does this), so that spans on the pool's threads reach it.
pub fn run(
    raw: &RawConfig,
    threads: &[usize],
    batch_sizes: &[usize],
    recorder: &Recorder,
    mut progress: impl FnMut(&str),
) -> Result<Vec<ScaleRow>> {
    if threads.is_empty() || threads.contains(&0) {
        return Err(Error::config(
            "--threads",
            "give one or more thread counts, each at least 1",
        ));
    }
    // The training rows `train` would use (a validation split is left out, not evaluated).
    let raw = raw.clone();
    let base = raw.validate()?;
    progress(&base.data.load_note());
    let (train, _) = data::load(&base.data, base.seed);
    let given_sizes = !batch_sizes.is_empty();
    let batch_sizes = if batch_sizes.is_empty() {
        vec![base.train.batch_size.get()]
    } else {
        batch_sizes.to_vec()
    };
    let mut rows = Vec::new();
    for &batch_size in &batch_sizes {
        let mut baseline: Option<(usize, f64)> = None;
        for &t in threads {
            let mut raw = raw.clone();
            raw.train.batch_size = Some(batch_size);
            raw.train.threads = Some(t);
            if given_sizes {
                raw.mark_overridden("train.batch_size", "--batch-sizes");
            }
            let cfg = raw.validate()?;
            progress(&format!("B = {batch_size}, {t} thread(s)"));
            let mut trainer = Trainer::new(
                Mlp::new(cfg.model.clone()),
                cfg.data.d,
                &cfg.train,
                cfg.seed,
            )?;
            let warm: Vec<usize> = (0..batch_size).collect();
            trainer.step(&train, &warm, 0.0)?;
            recorder.clear();
            let report = trainer.fit(&train, None, |_| {})?;
            let seconds: f64 = report.epochs.iter().map(|e| e.seconds).sum();
            let examples_per_sec = report.examples as f64 / seconds.max(1e-12);
            let phases = profile(recorder, t);
            let (p0, x0) = *baseline.get_or_insert((t, examples_per_sec));
            let speedup = examples_per_sec / x0;
            let relative_threads = t as f64 / p0 as f64;
            let shards = crate::shard::n_shards(batch_size, cfg.train.shard_rows);
            rows.push(ScaleRow {
                batch_size,
                shards,
                threads: t,
                examples_per_sec,
                speedup,
                efficiency: speedup / relative_threads,
                // A batch of one shard runs on one thread by design (see
                // `Trainer::step_one_shard`): no fraction of it is parallel.
                serial_fraction: if p0 == 1 {
                    serial_fraction_in_shards(speedup, t, shards)
                } else {
                    None
                },
                prepare_share: phases.share("prepare"),
                shards_share: phases.share("shards"),
                reduce_share: phases.share("reduce"),
                update_share: phases.share("update"),
                worker_busy_share: phases.worker_busy_share(),
            });
        }
    }
    Ok(rows)
}

/// Amdahl's predictions (16 and 64 cores, at most the batch's shards at once) from the
/// serial fraction measured at the largest thread count of each batch size: (B, fraction,
/// 16 cores, 64 cores, shards).
pub fn predictions(rows: &[ScaleRow]) -> Vec<(usize, f64, f64, f64, usize)> {
    let mut out = Vec::new();
    let mut batch_sizes: Vec<usize> = rows.iter().map(|r| r.batch_size).collect();
    batch_sizes.dedup();
    for b in batch_sizes {
        if let Some((e, shards)) = rows
            .iter()
            .filter(|r| r.batch_size == b && r.serial_fraction.is_some())
            .max_by_key(|r| r.threads)
            .and_then(|r| Some((r.serial_fraction?, r.shards)))
        {
            let predict = |threads| amdahl_in_shards(e, threads, shards);
            out.push((b, e, predict(16), predict(64), shards));
        }
    }
    out
}

pub const CSV_HEADER: &str = "batch_size,threads,examples_per_sec,speedup,efficiency,serial_fraction,\
prepare_share,shards_share,reduce_share,update_share,worker_busy_share";

pub fn to_csv(rows: &[ScaleRow]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{:.1},{:.6},{:.6},{},{:.4},{:.4},{:.4},{:.4},{:.4}",
            r.batch_size,
            r.threads,
            r.examples_per_sec,
            r.speedup,
            r.efficiency,
            r.serial_fraction
                .map(|e| format!("{e:.6}"))
                .unwrap_or_default(),
            r.prepare_share,
            r.shards_share,
            r.reduce_share,
            r.update_share,
            r.worker_busy_share
        );
    }
    out
}

/// Speedup against threads, one line per batch size, with the ideal line: a plain SVG.
pub fn to_svg(rows: &[ScaleRow]) -> String {
    let (width, height, margin) = (640.0, 420.0, 60.0);
    let max_threads = rows.iter().map(|r| r.threads).max().unwrap_or(1).max(2) as f64;
    let max_speedup = rows.iter().map(|r| r.speedup).fold(max_threads, f64::max);
    // From 1x, or from 0 when some thread count ran slower than one thread.
    let low = if rows.iter().any(|r| r.speedup < 1.0) {
        0.0
    } else {
        1.0
    };
    let x = |t: f64| margin + (t - 1.0) / (max_threads - 1.0) * (width - 2.0 * margin);
    let y = |s: f64| {
        height
            - margin
            - (s - low).max(0.0) / (max_speedup - low).max(1e-9) * (height - 2.0 * margin)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">Speedup over 1 thread</text>\n",
        width / 2.0
    );
    // Axes and ticks.
    let _ = writeln!(
        svg,
        "<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{b}\" x2=\"{m}\" y2=\"{m}\" stroke=\"black\"/>",
        m = margin,
        b = height - margin,
        r = width - margin
    );
    for t in 1..=max_threads as usize {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>",
            x(t as f64),
            height - margin + 18.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">threads</text>",
        width / 2.0,
        height - 12.0
    );
    // Whole speedups, at most about eight of them, from the bottom of the axis.
    let step = ((max_speedup - low) / 8.0).ceil().max(1.0);
    let ticks = (0..)
        .map(|i| low + step * f64::from(i))
        .take_while(|&s| s <= max_speedup + 1e-9);
    for s in ticks {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{s:.1}x</text>",
            margin - 6.0,
            y(s) + 4.0
        );
    }
    // The ideal line.
    let _ = writeln!(
        svg,
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"gray\" stroke-dasharray=\"6 4\"/>",
        x(1.0),
        y(1.0),
        x(max_threads),
        y(max_threads)
    );
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut batch_sizes: Vec<usize> = rows.iter().map(|r| r.batch_size).collect();
    batch_sizes.dedup();
    for (i, b) in batch_sizes.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = rows
            .iter()
            .filter(|r| r.batch_size == *b)
            .map(|r| format!("{:.1},{:.1}", x(r.threads as f64), y(r.speedup)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">B = {b}</text>",
            margin + 10.0,
            margin + 16.0 * (i as f64 + 1.0)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"gray\">ideal</text>",
        margin + 10.0,
        margin + 16.0 * (batch_sizes.len() as f64 + 1.0)
    );
    svg.push_str("</svg>\n");
    svg
}

/// The files `write_outputs` writes into its directory (checked before the work).
pub const OUTPUT_FILES: [&str; 2] = ["scale.csv", "scale.svg"];

/// Writes `OUTPUT_FILES` into `dir` (created if missing), both or neither.
pub fn write_outputs(dir: &Path, rows: &[ScaleRow]) -> Result<()> {
    write_files_in(
        dir,
        &[
            (OUTPUT_FILES[0], to_csv(rows).as_bytes()),
            (OUTPUT_FILES[1], to_svg(rows).as_bytes()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(threads: usize, speedup: f64) -> ScaleRow {
        ScaleRow {
            batch_size: 32,
            shards: 2,
            threads,
            examples_per_sec: 1000.0 * speedup,
            speedup,
            efficiency: speedup / threads as f64,
            serial_fraction: None,
            prepare_share: 0.0,
            shards_share: 0.0,
            reduce_share: 0.0,
            update_share: 0.0,
            worker_busy_share: 0.0,
        }
    }

    /// The y of the polyline's points and of the tick labels, in the order drawn.
    fn ys(svg: &str) -> (Vec<f64>, Vec<(String, f64)>) {
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>");
        let points = points
            .split(' ')
            .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        let ticks = svg
            .lines()
            .filter(|l| l.contains("text-anchor=\"end\""))
            .map(|l| {
                let y = l.split("y=\"").nth(1).unwrap().split('"').next().unwrap();
                let label = l.split('>').nth(1).unwrap().split('<').next().unwrap();
                (label.to_string(), y.parse::<f64>().unwrap() - 4.0)
            })
            .collect();
        (points, ticks)
    }

    #[test]
    fn a_speedup_below_one_is_drawn_below_the_one_x_line_and_ticks_do_not_repeat() {
        let (points, ticks) = ys(&to_svg(&[row(1, 1.0), row(2, 0.83)]));
        let one = ticks.iter().find(|(l, _)| l == "1.0x").unwrap().1;
        // SVG's y grows downwards: the 2-thread point lies below the 1x line.
        assert!(points[1] > one, "{points:?} against 1x at {one}");
        assert!((points[0] - one).abs() < 0.2);
        let labels: Vec<&str> = ticks.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["0.0x", "1.0x", "2.0x"]);
        // Without a slowdown the axis starts at 1x, and 2x is not labelled twice.
        let (_, ticks) = ys(&to_svg(&[row(1, 1.0), row(2, 1.9)]));
        let labels: Vec<&str> = ticks.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["1.0x", "2.0x"]);
    }
}
