//! Where the time goes: a `tracing` layer that records every span the training loop opens,
//! and the two reports built from the recording: a Chrome trace-event file (`--trace`, one
//! track per worker thread, opens in Perfetto or chrome://tracing) and the per-phase profile
//! table (`--profile`).
//!
//! The library only emits spans (run, epoch, sample, step, prepare, shards, shard, gather,
//! fwd_bwd, reduce, exchange, update, eval); the binary installs this layer when asked. Each thread
//! appends to its own buffer, so recording costs one uncontended lock per span. Without the
//! layer the spans are disabled callsites that cost a load and a branch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::checkpoint::write_atomic;
use crate::error::Result;

/// One entered-and-exited interval of a span on one thread.
#[derive(Debug, Clone)]
pub struct SpanEvent {
    pub name: &'static str,
    /// Small per-process thread number, in order of first span.
    pub tid: usize,
    /// Nanoseconds since the recorder was created.
    pub start_ns: u64,
    pub dur_ns: u64,
    pub fields: Arc<Vec<(&'static str, String)>>,
}

/// The recording layer. Clone it to keep a handle for reading the events after the run.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    origin: Instant,
    /// `origin` on the wall clock (microseconds since 1970), so that the traces of several
    /// processes can be laid on one time axis.
    origin_unix_us: f64,
    /// Every thread's buffer and name, registered on its first span.
    threads: Mutex<Vec<(String, ThreadBuffer)>>,
    /// Distinguishes recorders, so a thread's cached buffer is only used with its own.
    id: usize,
}

/// One thread's recorded intervals; only that thread pushes, the reader locks at the end.
type ThreadBuffer = Arc<Mutex<Vec<SpanEvent>>>;

static RECORDER_IDS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// (recorder id, thread number, buffer) of the recorder this thread last wrote to.
    static BUFFER: std::cell::RefCell<Option<(usize, usize, ThreadBuffer)>> =
        const { std::cell::RefCell::new(None) };
}

/// Per-span state kept in the registry's extensions.
struct Timing {
    fields: Arc<Vec<(&'static str, String)>>,
    entered_ns: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            shared: Arc::new(Shared {
                origin: Instant::now(),
                origin_unix_us: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64() * 1e6),
                threads: Mutex::new(Vec::new()),
                id: RECORDER_IDS.fetch_add(1, Ordering::Relaxed),
            }),
        }
    }

    fn now_ns(&self) -> u64 {
        self.shared.origin.elapsed().as_nanos() as u64
    }

    fn push(&self, event_of: impl FnOnce(usize) -> SpanEvent) {
        BUFFER.with(|cell| {
            let mut cached = cell.borrow_mut();
            let stale = cached
                .as_ref()
                .is_none_or(|(id, _, _)| *id != self.shared.id);
            if stale {
                let buffer = Arc::new(Mutex::new(Vec::with_capacity(1024)));
                let mut threads = self.shared.threads.lock().expect("recorder lock");
                let name = std::thread::current().name().unwrap_or("main").to_string();
                threads.push((name, Arc::clone(&buffer)));
                *cached = Some((self.shared.id, threads.len() - 1, buffer));
            }
            let (_, tid, buffer) = cached.as_ref().expect("just set");
            buffer.lock().expect("thread buffer").push(event_of(*tid));
        });
    }

    /// Forgets everything recorded so far (threads keep their numbers).
    pub fn clear(&self) {
        let threads = self.shared.threads.lock().expect("recorder lock");
        for (_, buffer) in threads.iter() {
            buffer.lock().expect("thread buffer").clear();
        }
    }

    /// Every recorded interval, sorted by start time, and the thread names by number.
    pub fn events(&self) -> (Vec<SpanEvent>, Vec<String>) {
        let threads = self.shared.threads.lock().expect("recorder lock");
        let mut events: Vec<SpanEvent> = threads
            .iter()
            .flat_map(|(_, buffer)| buffer.lock().expect("thread buffer").clone())
            .collect();
        events.sort_by_key(|e| (e.start_ns, std::cmp::Reverse(e.dur_ns)));
        (
            events,
            threads.iter().map(|(name, _)| name.clone()).collect(),
        )
    }
}

#[derive(Default)]
struct FieldText(Vec<(&'static str, String)>);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = FieldText::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Timing {
                fields: Arc::new(fields.0),
                entered_ns: 0,
            });
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        let now = self.now_ns();
        if let Some(span) = ctx.span(id)
            && let Some(timing) = span.extensions_mut().get_mut::<Timing>()
        {
            timing.entered_ns = now;
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        let now = self.now_ns();
        let Some(span) = ctx.span(id) else { return };
        let extensions = span.extensions();
        let Some(timing) = extensions.get::<Timing>() else {
            return;
        };
        let (name, start, fields) = (span.name(), timing.entered_ns, Arc::clone(&timing.fields));
        drop(extensions);
        self.push(|tid| SpanEvent {
            name,
            tid,
            start_ns: start,
            dur_ns: now.saturating_sub(start),
            fields,
        });
    }
}

/// Writes the recording as Chrome trace-event JSON ("X" complete events in microseconds,
/// plus thread-name metadata so each worker gets a named track).
pub fn write_chrome_trace(
    path: &Path,
    recorder: &Recorder,
    (rank, ranks): (usize, usize),
) -> Result<()> {
    let (events, threads) = recorder.events();
    // Across MPI ranks each file is a process of its own (pid rank + 1, named), on the wall
    // clock: files loaded together line up (exactly on one machine, to the clocks' agreement
    // across machines). Alone, time starts at 0.
    let pid = rank + 1;
    let origin_us = if ranks > 1 {
        recorder.shared.origin_unix_us
    } else {
        0.0
    };
    let mut out = Vec::with_capacity(events.len() * 120);
    out.extend_from_slice(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n");
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.extend_from_slice(b",\n");
        }
        first = false;
    };
    let process = if ranks > 1 {
        format!("minibatch rank {rank} of {ranks}")
    } else {
        "minibatch".to_string()
    };
    sep(&mut out);
    let meta = serde_json::json!({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": process}});
    out.extend_from_slice(meta.to_string().as_bytes());
    for (tid, name) in threads.iter().enumerate() {
        sep(&mut out);
        let meta = serde_json::json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}});
        out.extend_from_slice(meta.to_string().as_bytes());
    }
    for e in &events {
        sep(&mut out);
        let args: serde_json::Map<String, serde_json::Value> = e
            .fields
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
            .collect();
        let event = serde_json::json!({
            "name": e.name, "cat": "minibatch", "ph": "X", "pid": pid, "tid": e.tid,
            "ts": origin_us + e.start_ns as f64 / 1e3, "dur": e.dur_ns as f64 / 1e3, "args": args,
        });
        out.extend_from_slice(event.to_string().as_bytes());
    }
    out.extend_from_slice(b"\n]}\n");
    write_atomic(path, &out)
}

/// One row of the profile table.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    pub name: &'static str,
    pub count: usize,
    pub total_s: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Total over the total of `step` spans (parallel phases, summed over threads, can
    /// exceed 1).
    pub share_of_step: f64,
}

impl Profile {
    /// Share of step time of phase `name` (0 if it never ran).
    pub fn share(&self, name: &str) -> f64 {
        self.phases
            .iter()
            .find(|p| p.name == name)
            .map_or(0.0, |p| p.share_of_step)
    }

    /// Mean over workers of their time in shards over step time.
    pub fn worker_busy_share(&self) -> f64 {
        if self.workers.is_empty() {
            return 0.0;
        }
        let busy: f64 = self.workers.iter().map(|w| w.busy_s).sum();
        busy / self.workers.len() as f64 / self.step_total_s.max(1e-12)
    }
}

/// A worker's time inside shards against the time steps took.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStats {
    pub thread: String,
    pub busy_s: f64,
    pub idle_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub phases: Vec<PhaseStats>,
    pub workers: Vec<WorkerStats>,
    pub step_total_s: f64,
}

/// The phases of a step in the order they run, then the loop's other spans.
const PHASE_ORDER: &[&str] = &[
    "run", "epoch", "sample", "step", "prepare", "shards", "shard", "gather", "fwd_bwd", "reduce",
    "exchange", "update", "eval",
];

/// The per-phase profile of what `recorder` holds, for a run on a pool of `workers` threads:
/// every worker is listed, one that ran no shard (a step of fewer shards than threads) as
/// idle all along.
pub fn profile(recorder: &Recorder, workers: usize) -> Profile {
    let (events, threads) = recorder.events();
    let mut by_name: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    for e in &events {
        by_name.entry(e.name).or_default().push(e.dur_ns);
    }
    let step_total_ns: u64 = by_name.get("step").map_or(0, |d| d.iter().sum());
    let mut phases: Vec<PhaseStats> = by_name
        .into_iter()
        .map(|(name, mut durations)| {
            durations.sort_unstable();
            let total: u64 = durations.iter().sum();
            let quantile = |q: f64| {
                durations[((durations.len() - 1) as f64 * q).round() as usize] as f64 / 1e3
            };
            PhaseStats {
                name,
                count: durations.len(),
                total_s: total as f64 / 1e9,
                mean_us: total as f64 / durations.len() as f64 / 1e3,
                p50_us: quantile(0.5),
                p99_us: quantile(0.99),
                share_of_step: total as f64 / step_total_ns.max(1) as f64,
            }
        })
        .collect();
    phases.sort_by_key(|p| {
        PHASE_ORDER
            .iter()
            .position(|n| *n == p.name)
            .unwrap_or(usize::MAX)
    });
    // Time in shards by thread name: the recorder may hold threads of earlier pools (scale
    // runs one per row) under the same names, whose events were cleared.
    let mut busy_by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.name == "shard") {
        *busy_by_name.entry(threads[e.tid].as_str()).or_default() += e.dur_ns;
    }
    let workers = (0..workers)
        .map(|i| {
            let thread = crate::train::worker_name(i);
            let busy = busy_by_name.get(thread.as_str()).copied().unwrap_or(0);
            WorkerStats {
                thread,
                busy_s: busy as f64 / 1e9,
                idle_s: step_total_ns.saturating_sub(busy) as f64 / 1e9,
            }
        })
        .collect();
    Profile {
        phases,
        workers,
        step_total_s: step_total_ns as f64 / 1e9,
    }
}

/// The profile as a text table.
pub fn format_profile(p: &Profile) -> String {
    let mut out = String::new();
    out += "| phase | count | total ms | mean us | p50 us | p99 us | share of step |\n";
    out += "|---|---|---|---|---|---|---|\n";
    for ph in &p.phases {
        // The run and its epochs hold the steps, and evaluation runs beside them: a share
        // of step time means nothing for them.
        let share = match ph.name {
            "run" | "epoch" | "eval" => "-".to_string(),
            _ => format!("{:.1}%", 100.0 * ph.share_of_step),
        };
        out += &format!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {share} |\n",
            ph.name,
            ph.count,
            ph.total_s * 1e3,
            ph.mean_us,
            ph.p50_us,
            ph.p99_us,
        );
    }
    if !p.workers.is_empty() {
        out += "\n| worker | busy in shards ms | idle ms | busy share |\n|---|---|---|---|\n";
        for w in &p.workers {
            out += &format!(
                "| {} | {:.2} | {:.2} | {:.1}% |\n",
                w.thread,
                w.busy_s * 1e3,
                w.idle_s * 1e3,
                100.0 * w.busy_s / p.step_total_s.max(1e-12)
            );
        }
    }
    out
}

/// The profile and a timeline of a typical step, as `--profile` prints them.
pub fn profile_report(p: &Profile, recorder: &Recorder) -> String {
    format!("{}{}", format_profile(p), format_timeline(recorder, 96))
}

/// A text picture of the step of median duration: one row per thread, one column per
/// 1/width of the step, each cell the innermost span running there (P prepare, G gather,
/// F forward/backward, S shard outside those, R reduce, U update, . inside the step but in
/// none of them, blank elsewhere).
pub fn format_timeline(recorder: &Recorder, width: usize) -> String {
    let (events, threads) = recorder.events();
    let mut steps: Vec<&SpanEvent> = events.iter().filter(|e| e.name == "step").collect();
    if steps.is_empty() || width == 0 {
        return String::new();
    }
    steps.sort_by_key(|e| e.dur_ns);
    let step = steps[steps.len() / 2];
    let (t0, dur) = (step.start_ns, step.dur_ns.max(1));
    let code = |name: &str| match name {
        "prepare" => Some((0, 'P')),
        "shard" => Some((1, 'S')),
        "fwd_bwd" => Some((2, 'F')),
        "gather" => Some((3, 'G')),
        "reduce" => Some((1, 'R')),
        "exchange" => Some((2, 'X')),
        "update" => Some((1, 'U')),
        _ => None,
    };
    let mut rows = vec![vec![(0usize, ' '); width]; threads.len()];
    rows[step.tid].iter_mut().for_each(|cell| *cell = (0, '.'));
    for e in events
        .iter()
        .filter(|e| e.start_ns < t0 + dur && e.start_ns + e.dur_ns > t0)
    {
        let Some((depth, c)) = code(e.name) else {
            continue;
        };
        let first = ((e.start_ns.max(t0) - t0) as u128 * width as u128 / dur as u128) as usize;
        let last = (((e.start_ns + e.dur_ns).min(t0 + dur) - t0) as u128 * width as u128)
            .div_ceil(dur as u128) as usize;
        for cell in &mut rows[e.tid][first.min(width - 1)..last.clamp(first + 1, width)] {
            if depth + 1 > cell.0 {
                *cell = (depth + 1, c);
            }
        }
    }
    let mut out = format!(
        "\nThe step of median duration ({:.1} us), one column = {:.1} us:\n",
        dur as f64 / 1e3,
        dur as f64 / 1e3 / width as f64
    );
    let name_width = threads.iter().map(String::len).max().unwrap_or(0);
    for (tid, row) in rows.iter().enumerate() {
        if row.iter().all(|&(_, c)| c == ' ') {
            continue;
        }
        let line: String = row.iter().map(|&(_, c)| c).collect();
        out += &format!("{:>name_width$} |{line}|\n", threads[tid]);
    }
    out += "P prepare  S shard  F forward/backward  G gather  R reduce  X exchange between ranks  \
         U update  . other step work\n";
    out
}
