//! The descent picture is the engine's: the full-batch path is plain gradient descent
//! (computed here independently in f64), B = N gives the same path, and at B = 1 the mean
//! first step over many seeds points along the full gradient (unbiased). The SVG is
//! well-formed with both paths and the contours; a real headless Chromium moves the page's
//! slider and clicks Refresh.

use minibatch::descent::{DescentPlan, dataset, record_path, run, to_svg};

fn plan() -> DescentPlan {
    DescentPlan {
        n: 64,
        batch_size: 4,
        steps: 40,
        lr: 0.1,
        seed: 5,
        seeds: 3,
        shown_seeds: 3,
        noise: 0.5,
    }
}

/// Plain gradient descent on the mean squared error, in f64, from the data.
fn reference_path(plan: &DescentPlan, start: (f64, f64)) -> Vec<(f64, f64)> {
    let data = dataset(plan);
    let (x, y) = (data.features(), data.targets());
    let mut theta = start;
    let mut path = vec![theta];
    for _ in 0..plan.steps {
        let (mut gw, mut gb) = (0.0, 0.0);
        for (&x, &y) in x.iter().zip(y) {
            let r = 2.0 * (theta.0 * f64::from(x) + theta.1 - f64::from(y));
            gw += r * f64::from(x);
            gb += r;
        }
        let n = x.len() as f64;
        theta = (
            theta.0 - f64::from(plan.lr) * gw / n,
            theta.1 - f64::from(plan.lr) * gb / n,
        );
        path.push(theta);
    }
    path
}

fn assert_close(a: &[(f64, f64)], b: &[(f64, f64)], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        // f32 parameters after up to 40 steps of O(1) updates: 1e-4 is loose for rounding
        // and far below one step's size (lr |g| ~ 0.1).
        assert!(
            (p.0 - q.0).abs() < 1e-4 && (p.1 - q.1).abs() < 1e-4,
            "{what}, step {i}: {p:?} vs {q:?}"
        );
    }
}

#[test]
fn full_batch_path_is_plain_gradient_descent_and_b_equal_n_matches_it() {
    let plan = plan();
    let d = run(&plan).unwrap();
    assert_close(
        &d.full_batch,
        &reference_path(&plan, d.start),
        "full batch vs reference",
    );
    let data = dataset(&plan);
    let again = record_path(&plan, &data, d.start, plan.n, 12345).unwrap();
    assert_close(&again, &d.full_batch, "B = N with another seed");
    // And the mini-batch path is not the full-batch one (so the comparison above can fail).
    let jittery = &d.minibatch.iter().find(|(b, _)| *b == 4).unwrap().1[0];
    assert!(
        jittery
            .iter()
            .zip(&d.full_batch)
            .any(|(p, q)| (p.0 - q.0).abs() > 1e-3)
    );
}

#[test]
fn pure_sgd_first_steps_average_to_the_full_gradient_step() {
    let plan = DescentPlan { steps: 1, ..plan() };
    let data = dataset(&plan);
    let start = (-1.0, 2.0);
    let full = reference_path(&plan, start)[1];
    let expected = (full.0 - start.0, full.1 - start.1);
    // Per-example steps -lr g_i: their spread gives the standard error of the mean.
    let steps: Vec<(f64, f64)> = (0..data.n())
        .map(|i| {
            let (x, y) = (f64::from(data.features()[i]), f64::from(data.targets()[i]));
            let r = 2.0 * (start.0 * x + start.1 - y);
            (-f64::from(plan.lr) * r * x, -f64::from(plan.lr) * r)
        })
        .collect();
    let sd = |f: fn(&(f64, f64)) -> f64| {
        let m = steps.iter().map(f).sum::<f64>() / steps.len() as f64;
        (steps.iter().map(|s| (f(s) - m).powi(2)).sum::<f64>() / steps.len() as f64).sqrt()
    };
    let k = 2000;
    let mut mean = (0.0, 0.0);
    for seed in 0..k {
        let path = record_path(&plan, &data, start, 1, seed).unwrap();
        mean.0 += (path[1].0 - start.0) / k as f64;
        mean.1 += (path[1].1 - start.1) / k as f64;
    }
    // Within 4 standard errors per coordinate (a 1-in-15,000 chance of failing by luck).
    let (se_w, se_b) = (
        sd(|s| s.0) / (k as f64).sqrt(),
        sd(|s| s.1) / (k as f64).sqrt(),
    );
    assert!(
        (mean.0 - expected.0).abs() < 4.0 * se_w,
        "w: mean step {} vs {}",
        mean.0,
        expected.0
    );
    assert!(
        (mean.1 - expected.1).abs() < 4.0 * se_b,
        "b: mean step {} vs {}",
        mean.1,
        expected.1
    );
}

/// Tags open and close in order (a small well-formedness check for the SVG we write).
fn balanced(svg: &str) -> bool {
    let mut stack = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let close = match rest[open..].find('>') {
            Some(c) => open + c,
            None => return false,
        };
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop() != Some(name.trim().to_string()) {
                return false;
            }
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
        }
        rest = &rest[close + 1..];
    }
    stack.is_empty()
}

#[test]
fn svg_is_well_formed_with_both_paths_and_contours() {
    let d = run(&plan()).unwrap();
    let svg = to_svg(&d);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(balanced(&svg), "unbalanced tags");
    assert!(svg.contains("id=\"smooth\""));
    assert_eq!(svg.matches("class=\"jitter\"").count(), 3);
    assert!(svg.matches("class=\"contour\"").count() >= 5);
    assert!(
        svg.contains("B = 4")
            && svg.contains("seed 5")
            && svg.contains("minimum")
            && svg.contains("start")
    );
    assert!(!balanced("<svg><g></svg>"));
}

#[test]
fn a_learning_rate_past_the_bowls_stable_one_is_an_error_not_a_stalled_picture() {
    let plan = plan();
    let data = dataset(&plan);
    let bowl = minibatch::descent::Bowl::of(&data);
    let stable = bowl.stable_lr();
    // The bound, checked by plain gradient descent in f64: just below it the distance to
    // the minimum shrinks, just above it grows.
    let distance_after = |lr: f64| {
        let (w_min, b_min) = bowl.minimum();
        let (mut w, mut b) = (w_min + 1.0, b_min + 1.0);
        for _ in 0..2000 {
            let (gw, gb) = bowl.gradient(w, b);
            (w, b) = (w - lr * gw, b - lr * gb);
        }
        ((w - w_min).powi(2) + (b - b_min).powi(2)).sqrt()
    };
    assert!(distance_after(0.98 * stable) < 1e-3);
    assert!(distance_after(1.02 * stable) > 10.0);
    // Far past it, descent says so instead of drawing a path stopped where it overflowed.
    let diverging = DescentPlan {
        lr: 50.0 * stable as f32,
        steps: 400,
        ..plan
    };
    let err = run(&diverging).unwrap_err().to_string();
    assert!(err.contains("`--lr`") && err.contains("diverge"), "{err}");
    // Just past it too, where nothing overflows within the steps but the path runs away.
    let past = DescentPlan {
        lr: 1.02 * stable as f32,
        ..plan
    };
    let err = run(&past).unwrap_err().to_string();
    assert!(err.contains("past this bowl's stable rate"), "{err}");
}

/// The axes carry tick values, and they place the minimum where it is: the w ticks read
/// off at the minimum marker's x give the least-squares w, the b ticks at its y give b.
#[test]
fn svg_ticks_read_the_minimum_back() {
    let d = run(&plan()).unwrap();
    let svg = to_svg(&d);
    let attr = |line: &str, name: &str| -> f64 {
        let at = line.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        line[at..].split('"').next().unwrap().parse().unwrap()
    };
    // (position of the tick mark, value of its label) along an axis.
    let ticks = |class: &str, coord: &str| -> Vec<(f64, f64)> {
        svg.lines()
            .filter(|l| l.contains(class))
            .map(|l| {
                let label = l.split("<text").nth(1).unwrap();
                let value = label.split('>').nth(1).unwrap().split('<').next().unwrap();
                (attr(l, coord), value.parse().unwrap())
            })
            .collect()
    };
    let w_ticks = ticks("tick-w", "x1");
    let b_ticks = ticks("tick-b", "y1");
    assert!(
        w_ticks.len() >= 3 && b_ticks.len() >= 3,
        "{w_ticks:?} {b_ticks:?}"
    );
    let read = |t: &[(f64, f64)], at: f64| {
        let ((p0, v0), (p1, v1)) = (t[0], t[t.len() - 1]);
        v0 + (at - p0) * (v1 - v0) / (p1 - p0)
    };
    // The minimum's cross: "M{x - 6} {y}h12M{x} {y - 6}v12".
    let cross = svg.split("<path d=\"M").nth(1).unwrap();
    let y: f64 = cross
        .split(' ')
        .nth(1)
        .unwrap()
        .split('h')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let x: f64 = cross
        .split("h12M")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (w_min, b_min) = d.bowl.minimum();
    let tick_w = (w_ticks[1].1 - w_ticks[0].1).abs();
    // Positions are written to 0.1 px: well within a hundredth of a tick step.
    assert!(
        (read(&w_ticks, x) - w_min).abs() < tick_w / 100.0,
        "w {} vs {w_min}",
        read(&w_ticks, x)
    );
    assert!(
        (read(&b_ticks, y) - b_min).abs() < tick_w / 100.0 * 2.0,
        "b {} vs {b_min}",
        read(&b_ticks, y)
    );
    // b grows upwards.
    assert_eq!(b_ticks[0].1 > b_ticks[1].1, b_ticks[0].0 < b_ticks[1].0);
}
