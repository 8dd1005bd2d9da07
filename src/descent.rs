//! `minibatch descent`: the seed's picture, drawn from the engine. Linear regression
//! y = w x + b has two parameters, so its loss is a bowl over the (w, b) plane; this module
//! trains it with the real trainer from one start, once with B = N (the smooth full-batch
//! path) and with mini-batches (jittery paths), records every step's parameters, and draws
//! them over contour lines of the true loss, as an SVG and as a standalone HTML page with a
//! batch-size slider and a Refresh button that switches to another seed's recorded path.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::path::Path;

use serde::Serialize;

use crate::checkpoint::write_files_in;
use ndarray::{Array1, Array2};
use ndarray_rand::rand_distr::{Distribution, StandardNormal};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::config::RawConfig;
use crate::data::{Dataset, mix, stream};
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::sampler::{Sampler, Sampling, default_steps_per_epoch};
use crate::train::Trainer;

/// What to draw.
#[derive(Debug, Clone)]
pub struct DescentPlan {
    pub n: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub lr: f32,
    pub seed: u64,
    /// Jittery paths per batch size (the page's Refresh cycles through them; the SVG draws
    /// `shown_seeds` of them).
    pub seeds: usize,
    pub shown_seeds: usize,
    pub noise: f32,
}

/// One recorded path: (w, b) before the first step and after every step.
pub type Path2 = Vec<(f64, f64)>;

/// The loss L(w, b) = mean((w x + b - y)^2) of the dataset, a quadratic known exactly from
/// its moments.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bowl {
    sxx: f64,
    sx: f64,
    sxy: f64,
    sy: f64,
    syy: f64,
}

impl Bowl {
    pub fn of(data: &Dataset) -> Self {
        let n = data.n() as f64;
        let (mut sxx, mut sx, mut sxy, mut sy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&x, &y) in data.features().iter().zip(data.targets()) {
            let (x, y) = (f64::from(x), f64::from(y));
            sxx += x * x;
            sx += x;
            sxy += x * y;
            sy += y;
            syy += y * y;
        }
        Bowl {
            sxx: sxx / n,
            sx: sx / n,
            sxy: sxy / n,
            sy: sy / n,
            syy: syy / n,
        }
    }

    pub fn loss(&self, w: f64, b: f64) -> f64 {
        w * w * self.sxx + 2.0 * w * b * self.sx + b * b - 2.0 * w * self.sxy - 2.0 * b * self.sy
            + self.syy
    }

    /// The learning rate below which full-batch descent on this bowl converges: 2 over the
    /// largest eigenvalue of the Hessian, 2 [[E x^2, E x], [E x, 1]].
    pub fn stable_lr(&self) -> f64 {
        let (a, c) = (self.sxx, self.sx);
        2.0 / ((a + 1.0) + ((a - 1.0).powi(2) + 4.0 * c * c).sqrt())
    }

    /// The full-batch gradient of the mean loss.
    pub fn gradient(&self, w: f64, b: f64) -> (f64, f64) {
        (
            2.0 * (w * self.sxx + b * self.sx - self.sxy),
            2.0 * (w * self.sx + b - self.sy),
        )
    }

    /// The least-squares solution (the bottom of the bowl).
    pub fn minimum(&self) -> (f64, f64) {
        let det = self.sxx - self.sx * self.sx;
        let w = (self.sxy - self.sx * self.sy) / det;
        (w, self.sy - w * self.sx)
    }

    /// Points of the contour L = level: the ellipse (t - t*)^T H (t - t*) = level - L*
    /// with H = [[sxx, sx], [sx, 1]], traced through H^(-1/2).
    fn contour(&self, level: f64, points: usize) -> Vec<(f64, f64)> {
        let (w0, b0) = self.minimum();
        let c = level - self.loss(w0, b0);
        if c <= 0.0 {
            return Vec::new();
        }
        let (a, off, d) = (self.sxx, self.sx, 1.0);
        let mean = (a + d) / 2.0;
        let spread = (((a - d) / 2.0).powi(2) + off * off).sqrt();
        let (l1, l2) = (mean + spread, mean - spread);
        let angle = 0.5 * (2.0 * off).atan2(a - d);
        let (cos, sin) = (angle.cos(), angle.sin());
        (0..=points)
            .map(|i| {
                let t = std::f64::consts::TAU * i as f64 / points as f64;
                let (u, v) = ((c / l1).sqrt() * t.cos(), (c / l2).sqrt() * t.sin());
                (w0 + cos * u - sin * v, b0 + sin * u + cos * v)
            })
            .collect()
    }
}

/// Everything drawn: the data's bowl, the start, the smooth path and the jittery ones.
#[derive(Debug, Clone)]
pub struct Descent {
    pub bowl: Bowl,
    pub start: (f64, f64),
    pub full_batch: Path2,
    /// Per batch size: `seeds` recorded paths.
    pub minibatch: Vec<(usize, Vec<Path2>)>,
    pub plan: DescentPlan,
}

/// The dataset a plan trains on: x ~ N(1, 0.6^2), y = 0.8 x - 0.5 + noise N(0, 1). The
/// features' non-zero mean tilts and stretches the bowl, so the full-batch path curves
/// the way it does on real problems instead of running straight down a round one.
pub fn dataset(plan: &DescentPlan) -> Dataset {
    let mut rng = StdRng::seed_from_u64(mix(plan.seed, stream::DESCENT_DATA));
    let x: Vec<f32> = (0..plan.n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(&mut rng);
            1.0 + 0.6 * z
        })
        .collect::<Vec<f32>>();
    let y: Vec<f32> = x
        .iter()
        .map(|&x| {
            let eps: f32 = StandardNormal.sample(&mut rng);
            0.8 * x - 0.5 + plan.noise * eps
        })
        .collect();
    Dataset::new(
        Array2::from_shape_vec((plan.n, 1), x).expect("n x 1"),
        Array1::from(y),
        None,
    )
    .expect("finite synthetic values")
}

/// Trains from the plan's start with batch size `b` for `plan.steps` steps with the real
/// trainer, sampling with `seed`, and returns (w, b) before and after every step.
pub fn record_path(
    plan: &DescentPlan,
    data: &Dataset,
    start: (f64, f64),
    b: usize,
    seed: u64,
) -> Result<Path2> {
    let mut raw = RawConfig::default();
    raw.data.synthetic = Some("linear".into());
    raw.data.n = Some(plan.n);
    raw.data.d = Some(1);
    raw.train.batch_size = Some(b);
    raw.train.lr = Some(f64::from(plan.lr));
    raw.train.threads = Some(1);
    let cfg = raw.validate()?;
    let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), 1, &cfg.train, plan.seed)?;
    // Layout of the linear model: w1 (1, 1), then b1 (1,).
    trainer.set_params(&[start.0 as f32, start.1 as f32])?;
    let batch = NonZeroUsize::new(b).expect("validated");
    let sampling = Sampling::Shuffle { drop_last: false };
    let mut sampler = Sampler::new(
        plan.n,
        batch,
        sampling,
        default_steps_per_epoch(plan.n, batch, sampling),
        seed,
    );
    let mut path = vec![start];
    let mut epoch = 0;
    sampler.start_epoch(epoch);
    while path.len() <= plan.steps {
        let Some(idx) = sampler.next_batch() else {
            epoch += 1;
            sampler.start_epoch(epoch);
            continue;
        };
        let idx = idx.to_vec();
        let stats = trainer.step(data, &idx, plan.lr)?;
        if !stats.loss_sum.is_finite() {
            // The trainer leaves the parameters where the loss overflowed: a path that
            // stops there would be drawn as if it had arrived.
            return Err(Error::config(
                "--lr",
                format!(
                    "{} makes the B = {b} path diverge (its loss overflowed at step {}); on this \
                     bowl full-batch descent converges below lr {:.3}, smaller batches need less",
                    crate::optim::show(plan.lr),
                    path.len(),
                    Bowl::of(data).stable_lr()
                ),
            ));
        }
        let p = trainer.params();
        path.push((f64::from(p[0]), f64::from(p[1])));
    }
    Ok(path)
}

/// Examples a picture may have: 100,000 take seconds (each path shuffles them all; a
/// million took minutes).
const MAX_N: usize = 100_000;

/// The targets' noise a picture may have: far beyond the bowl's scale of about 1 already
/// (1e30 overflowed the loss, blamed on the learning rate).
const MAX_NOISE: f32 = 1e6;

/// Seeds a picture may draw: 1,000 take seconds and a page of about 15 MB.
const MAX_SEEDS: usize = 1000;

/// The batch sizes the page's slider offers: powers of two from 1, and N.
pub fn slider_batch_sizes(n: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
        .take_while(|&b| b < n)
        .collect();
    sizes.push(n);
    sizes
}

pub fn run(plan: &DescentPlan) -> Result<Descent> {
    if plan.n < 2 {
        return Err(Error::config("--n", "needs at least 2 examples"));
    }
    if plan.batch_size == 0 || plan.batch_size > plan.n {
        return Err(Error::config(
            "--batch-size",
            format!(
                "{} is not in 1..={} (the examples)",
                plan.batch_size, plan.n
            ),
        ));
    }
    if plan.n > MAX_N {
        return Err(Error::config(
            "--n",
            format!(
                "at most {MAX_N} (every path shuffles all the examples, and the bowl of two \
                 parameters looks the same from a few thousand), got {}",
                plan.n
            ),
        ));
    }
    if !(plan.noise.is_finite() && (0.0..=MAX_NOISE).contains(&plan.noise)) {
        return Err(Error::config(
            "--noise",
            format!(
                "must be in [0, {MAX_NOISE}] (targets of 0.8 x - 0.5 with noise of this standard \
                 deviation), got {}",
                plan.noise
            ),
        ));
    }
    for (flag, value) in [
        ("--steps", plan.steps),
        ("--seeds", plan.seeds),
        ("--show-seeds", plan.shown_seeds),
    ] {
        if value == 0 {
            return Err(Error::config(flag, "must be at least 1"));
        }
    }
    if plan.seeds > MAX_SEEDS {
        return Err(Error::config(
            "--seeds",
            format!(
                "at most {MAX_SEEDS} (each seed adds a path per slider position to the page), \
                 got {}",
                plan.seeds
            ),
        ));
    }
    if plan.shown_seeds > plan.seeds {
        return Err(Error::config(
            "--show-seeds",
            format!(
                "{} paths shown, but only {} seeds are drawn (--seeds)",
                plan.shown_seeds, plan.seeds
            ),
        ));
    }
    if !(plan.lr.is_finite() && plan.lr > 0.0) {
        return Err(Error::config(
            "--lr",
            format!("must be a finite number > 0, got {}", plan.lr),
        ));
    }
    // Every path keeps its steps, and the page holds them again as text: about 64 bytes a
    // point (16 as numbers, the rest in the JSON and SVG being written).
    let paths = 1 + (slider_batch_sizes(plan.n).len() + 1).saturating_mul(plan.seeds);
    crate::memory::check(
        "--steps",
        &format!("{paths} paths of {} steps", plan.steps),
        crate::memory::bytes(plan.steps.saturating_add(1), paths, 64),
    )?;
    let data = dataset(plan);
    let bowl = Bowl::of(&data);
    // Past the stable rate the full-batch path runs off the picture (or overflows): the
    // picture would show nothing of descent.
    if f64::from(plan.lr) >= bowl.stable_lr() {
        return Err(Error::config(
            "--lr",
            format!(
                "{} is past this bowl's stable rate {:.3}: full-batch descent diverges from \
                 there (smaller batches need less)",
                crate::optim::show(plan.lr),
                bowl.stable_lr()
            ),
        ));
    }
    let (w_min, b_min) = bowl.minimum();
    // Start up and to the left of the bottom, where the bowl's shape shows.
    let start = (w_min - 2.5, b_min + 2.0);
    let full_batch = record_path(
        plan,
        &data,
        start,
        plan.n,
        mix(plan.seed, stream::DESCENT_FULL),
    )?;
    let mut sizes = slider_batch_sizes(plan.n);
    if !sizes.contains(&plan.batch_size) {
        sizes.push(plan.batch_size);
        sizes.sort_unstable();
    }
    let minibatch = sizes
        .iter()
        .map(|&b| {
            let paths = (0..plan.seeds)
                .map(|s| {
                    record_path(
                        plan,
                        &data,
                        start,
                        b,
                        mix(plan.seed, stream::DESCENT_PATHS + s as u64),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((b, paths))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Descent {
        bowl,
        start,
        full_batch,
        minibatch,
        plan: plan.clone(),
    })
}

/// Maps (w, b) to picture coordinates, keeping every path and the start in view.
struct Frame {
    w0: f64,
    b0: f64,
    scale: f64,
    width: f64,
    height: f64,
}

impl Frame {
    fn new(d: &Descent, width: f64, height: f64) -> Self {
        let all = d
            .full_batch
            .iter()
            .chain(d.minibatch.iter().flat_map(|(_, ps)| ps.iter().flatten()));
        let (mut lo_w, mut hi_w, mut lo_b, mut hi_b) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for &(w, b) in all.chain(std::iter::once(&d.bowl.minimum())) {
            if w.is_finite() && b.is_finite() {
                (lo_w, hi_w, lo_b, hi_b) = (lo_w.min(w), hi_w.max(w), lo_b.min(b), hi_b.max(b));
            }
        }
        let pad = 0.15 * (hi_w - lo_w).max(hi_b - lo_b).max(1e-6);
        let (lo_w, hi_w, lo_b, hi_b) = (lo_w - pad, hi_w + pad, lo_b - pad, hi_b + pad);
        let scale = ((width - 80.0) / (hi_w - lo_w)).min((height - 80.0) / (hi_b - lo_b));
        Frame {
            w0: (lo_w + hi_w) / 2.0,
            b0: (lo_b + hi_b) / 2.0,
            scale,
            width,
            height,
        }
    }

    fn at(&self, (w, b): (f64, f64)) -> (f64, f64) {
        (
            self.width / 2.0 + (w - self.w0) * self.scale,
            self.height / 2.0 + 10.0 - (b - self.b0) * self.scale,
        )
    }

    /// Tick marks with their values along the bottom (w) and left (b) edges, four to eight a
    /// side at round steps (1, 2 or 5 times a power of ten).
    fn ticks(&self) -> String {
        let half = (
            self.width / 2.0 / self.scale,
            self.height / 2.0 / self.scale,
        );
        let mut out = String::new();
        for (axis, center, half) in [("w", self.w0, half.0), ("b", self.b0, half.1)] {
            let step = round_step(2.0 * half / 8.0);
            let digits = (-step.log10().floor()).max(0.0) as usize;
            // Inside the edges by a margin, so labels stay in the picture.
            let (lo, hi) = (center - 0.9 * half, center + 0.9 * half);
            let mut v = (lo / step).ceil() * step;
            while v <= hi {
                let label = format!("{:.digits$}", if v.abs() < step / 2.0 { 0.0 } else { v });
                let _ = if axis == "w" {
                    let (x, _) = self.at((v, self.b0));
                    let y = self.height;
                    writeln!(
                        out,
                        "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#555555\"/><text class=\"tick-w\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555555\">{label}</text>",
                        y - 6.0,
                        y - 9.0
                    )
                } else {
                    let (_, y) = self.at((self.w0, v));
                    writeln!(
                        out,
                        "<line class=\"tick\" x1=\"0\" y1=\"{y:.1}\" x2=\"6\" y2=\"{y:.1}\" stroke=\"#555555\"/><text class=\"tick-b\" x=\"9\" y=\"{:.1}\" fill=\"#555555\">{label}</text>",
                        y + 4.0
                    )
                };
                v += step;
            }
        }
        out
    }

    fn points(&self, path: &[(f64, f64)]) -> String {
        path.iter()
            .map(|&p| {
                let (x, y) = self.at(p);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The round step (1, 2 or 5 times a power of ten) at least `raw`.
fn round_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.max(1e-12).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * power)
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 520.0;

/// The static part of the picture: background, contours, the smooth path, start and
/// minimum, axes labels. `jitter` is drawn between the contours and the smooth path.
fn picture(d: &Descent, frame: &Frame, jitter: &str, legend: &str) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"descent\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let (w_min, b_min) = d.bowl.minimum();
    let bottom = d.bowl.loss(w_min, b_min);
    let top = d.bowl.loss(d.start.0, d.start.1);
    for k in 1..=8 {
        // Levels spaced so the rings look evenly spaced in the bowl: quadratic in k.
        let level = bottom + (top - bottom) * (k as f64 / 7.0).powi(2);
        let ring = frame.points(&d.bowl.contour(level, 96));
        let _ = writeln!(
            svg,
            "<polyline class=\"contour\" fill=\"none\" stroke=\"#bbbbbb\" points=\"{ring}\"/>"
        );
    }
    svg.push_str(jitter);
    let _ = writeln!(
        svg,
        "<polyline id=\"smooth\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2.5\" points=\"{}\"/>",
        frame.points(&d.full_batch)
    );
    let (sx, sy) = frame.at(d.start);
    let (mx, my) = frame.at((w_min, b_min));
    let _ = writeln!(
        svg,
        "<circle cx=\"{sx:.1}\" cy=\"{sy:.1}\" r=\"5\" fill=\"black\"/><text x=\"{:.1}\" y=\"{:.1}\">start</text>\n\
         <path d=\"M{:.1} {my:.1}h12M{mx:.1} {:.1}v12\" stroke=\"black\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">minimum</text>",
        sx + 8.0,
        sy - 8.0,
        mx - 6.0,
        my - 6.0,
        mx + 8.0,
        my + 16.0
    );
    svg.push_str(&frame.ticks());
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Descent on the loss bowl of y = w x + b (N = {}, seed {})</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"14\">w</text><text x=\"8\" y=\"92\" font-size=\"14\">b</text>\n\
         <line x1=\"20\" y1=\"44\" x2=\"44\" y2=\"44\" stroke=\"#1f77b4\" stroke-width=\"2.5\"/><text x=\"50\" y=\"48\">full batch (B = N = {}): exact gradient</text>\n{legend}",
        WIDTH / 2.0,
        d.plan.n,
        d.plan.seed,
        WIDTH - 8.0,
        HEIGHT - 26.0,
        d.plan.n
    );
    svg.push_str("</svg>\n");
    svg
}

/// The SVG: the smooth path and `shown_seeds` jittery paths at the plan's batch size.
pub fn to_svg(d: &Descent) -> String {
    let frame = Frame::new(d, WIDTH, HEIGHT);
    let paths = &d
        .minibatch
        .iter()
        .find(|(b, _)| *b == d.plan.batch_size)
        .expect("the plan's batch size is recorded")
        .1;
    let mut jitter = String::new();
    for (i, path) in paths.iter().take(d.plan.shown_seeds).enumerate() {
        let opacity = if i == 0 { 1.0 } else { 0.45 };
        let _ = writeln!(
            jitter,
            "<polyline class=\"jitter\" fill=\"none\" stroke=\"#d62728\" stroke-opacity=\"{opacity}\" stroke-width=\"1.5\" points=\"{}\"/>",
            frame.points(path)
        );
    }
    let shown = d.plan.shown_seeds.min(paths.len());
    let legend = format!(
        "<line x1=\"20\" y1=\"62\" x2=\"44\" y2=\"62\" stroke=\"#d62728\" stroke-width=\"1.5\"/><text x=\"50\" y=\"66\">mini-batch B = {}: {} seed{} ({} steps, lr {})</text>\n",
        d.plan.batch_size,
        shown,
        if shown == 1 { "" } else { "s" },
        d.plan.steps,
        d.plan.lr
    );
    picture(d, &frame, &jitter, &legend)
}

/// A standalone page: the picture with a batch-size slider and a Refresh button. The
/// jittery paths for every slider position and seed are embedded, as recorded by the
/// trainer; nothing is fetched.
pub fn to_html(d: &Descent) -> String {
    let frame = Frame::new(d, WIDTH, HEIGHT);
    let data: Vec<(usize, Vec<String>)> = d
        .minibatch
        .iter()
        .map(|(b, paths)| (*b, paths.iter().map(|p| frame.points(p)).collect()))
        .collect();
    let initial = data
        .iter()
        .position(|(b, _)| *b == d.plan.batch_size)
        .unwrap_or(0);
    let jitter = format!(
        "<g id=\"others\"></g><polyline id=\"jitter\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"{}\"/>\n",
        data[initial].1[0]
    );
    let legend = "<line x1=\"20\" y1=\"62\" x2=\"44\" y2=\"62\" stroke=\"#d62728\" stroke-width=\"1.5\"/><text id=\"legend\" x=\"50\" y=\"66\"></text>\n";
    let svg = picture(d, &frame, &jitter, legend);
    let json = serde_json::json!({
        "sizes": data.iter().map(|(b, _)| b).collect::<Vec<_>>(),
        "paths": data.iter().map(|(_, p)| p).collect::<Vec<_>>(),
        "initial": initial,
        "steps": d.plan.steps,
        // As the SVG shows it (an f32 widened to f64 would print 0.10000000149011612).
        "lr": d.plan.lr.to_string(),
    });
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>minibatch: smooth vs jittery descent</title>
<script>
window.__errors = [];
window.addEventListener('error', function (e) {{ window.__errors.push(String(e.message)); }});
var __consoleError = console.error;
console.error = function () {{ window.__errors.push(Array.prototype.join.call(arguments, ' ')); __consoleError.apply(console, arguments); }};
</script>
<style>body {{ font-family: sans-serif; margin: 20px; }} .controls {{ margin: 8px 0; }} label {{ margin-right: 12px; }}</style>
</head><body>
<p>Both paths start at the same spot and head for the bottom of the loss bowl. The blue one follows the
exact full-batch gradient; the red one follows mini-batch estimates: the same direction on average,
with a random wobble each step. Drag the slider: a small batch is very noisy, a large one tightens the
path toward the smooth one. Refresh shows another set of random batches. Every path was recorded by
the <code>minibatch</code> trainer.</p>
<div class="controls">
<label>batch size <input type="range" id="batch" min="0" max="{max}" step="1" value="{initial}"> <span id="batch-value"></span></label>
<button id="refresh" type="button">Refresh</button>
<label><input type="checkbox" id="all-seeds"> show every seed</label>
</div>
{svg}
<script>
var DATA = {json};
var seed = 0;
function draw() {{
  var i = Number(document.getElementById('batch').value);
  var b = DATA.sizes[i];
  var paths = DATA.paths[i];
  document.getElementById('batch-value').textContent = String(b);
  document.getElementById('jitter').setAttribute('points', paths[seed % paths.length]);
  document.getElementById('legend').textContent = 'mini-batch B = ' + b + ', seed ' + (seed % paths.length + 1) + ' of ' + paths.length + ' (' + DATA.steps + ' steps, lr ' + DATA.lr + ')';
  var others = document.getElementById('others');
  while (others.firstChild) {{ others.removeChild(others.firstChild); }}
  if (document.getElementById('all-seeds').checked) {{
    paths.forEach(function (p) {{
      var line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
      line.setAttribute('points', p); line.setAttribute('fill', 'none');
      line.setAttribute('stroke', '#d62728'); line.setAttribute('stroke-opacity', '0.3');
      others.appendChild(line);
    }});
  }}
}}
document.getElementById('batch').addEventListener('input', draw);
document.getElementById('all-seeds').addEventListener('change', draw);
document.getElementById('refresh').addEventListener('click', function () {{ seed += 1; draw(); }});
draw();
</script>
</body></html>
"#,
        max = data.len() - 1,
    )
}

/// The picture as text, `cols` x `rows` characters: contour rings `.`, the full-batch path
/// `o`, the first mini-batch path at the plan's batch size `*`, start `S`, minimum `X`. For
/// terminals and for documents that cannot hold an image.
pub fn to_text(d: &Descent, cols: usize, rows: usize) -> String {
    let frame = Frame::new(d, WIDTH, HEIGHT);
    let mut grid = vec![vec![' '; cols]; rows];
    let put = |p: (f64, f64), c: char, grid: &mut Vec<Vec<char>>| {
        let (x, y) = frame.at(p);
        let (col, row) = (
            (x / WIDTH * cols as f64) as isize,
            ((y - 20.0) / (HEIGHT - 20.0) * rows as f64) as isize,
        );
        if (0..cols as isize).contains(&col) && (0..rows as isize).contains(&row) {
            grid[row as usize][col as usize] = c;
        }
    };
    let (w_min, b_min) = d.bowl.minimum();
    let (bottom, top) = (d.bowl.loss(w_min, b_min), d.bowl.loss(d.start.0, d.start.1));
    // Every other ring of the SVG, sparsely: the paths are what the text is for.
    for k in [2, 4, 6, 8] {
        for p in d
            .bowl
            .contour(bottom + (top - bottom) * (k as f64 / 7.0).powi(2), 90)
        {
            put(p, '.', &mut grid);
        }
    }
    // Dense points along each segment so the paths read as lines.
    let trace = |path: &[(f64, f64)], c: char, grid: &mut Vec<Vec<char>>| {
        for pair in path.windows(2) {
            for t in 0..=8 {
                let f = t as f64 / 8.0;
                put(
                    (
                        pair[0].0 + f * (pair[1].0 - pair[0].0),
                        pair[0].1 + f * (pair[1].1 - pair[0].1),
                    ),
                    c,
                    grid,
                );
            }
        }
    };
    let jittery = &d
        .minibatch
        .iter()
        .find(|(b, _)| *b == d.plan.batch_size)
        .expect("recorded")
        .1[0];
    trace(jittery, '*', &mut grid);
    trace(&d.full_batch, 'o', &mut grid);
    put(d.start, 'S', &mut grid);
    put((w_min, b_min), 'X', &mut grid);
    grid.into_iter()
        .map(|row| row.into_iter().collect::<String>().trim_end().to_string() + "\n")
        .collect()
}

/// The files `write_outputs` writes into its directory (checked before the work).
pub const OUTPUT_FILES: [&str; 2] = ["descent.svg", "descent.html"];

/// Writes `OUTPUT_FILES` into `dir` (created if missing), both or neither.
pub fn write_outputs(dir: &Path, d: &Descent) -> Result<()> {
    write_files_in(
        dir,
        &[
            (OUTPUT_FILES[0], to_svg(d).as_bytes()),
            (OUTPUT_FILES[1], to_html(d).as_bytes()),
        ],
    )
}
