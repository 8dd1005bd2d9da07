//! Spans cost nothing when nothing listens: trained with the subscriber the command line
//! installs without `--profile` or `--trace` (log lines at `warn`), the trainer's trace
//! spans are never built. A span built and dropped costs more than a whole W3 step (d = 10,
//! B = 1), so one that slipped through made that workload 20 times slower. Its own binary,
//! because the subscriber is the process's global one.

use std::sync::atomic::{AtomicU64, Ordering};

use minibatch::profile::Recorder;
use minibatch::{Mlp, RawConfig, Trainer};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Filtered, LevelFilter, Targets};
use tracing_subscriber::prelude::*;

static SPANS_BUILT: AtomicU64 = AtomicU64::new(0);

/// Forwards everything to the subscriber inside, counting the spans it builds.
struct CountSpans<S>(S);

impl<S: Subscriber> Subscriber for CountSpans<S> {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.0.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        SPANS_BUILT.fetch_add(1, Ordering::SeqCst);
        self.0.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.0.record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.0.record_follows_from(span, follows)
    }
    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.0.event_enabled(event)
    }
    fn event(&self, event: &Event<'_>) {
        self.0.event(event)
    }
    fn enter(&self, span: &Id) {
        self.0.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.0.exit(span)
    }
    fn clone_span(&self, id: &Id) -> Id {
        self.0.clone_span(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.0.try_close(id)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.0.current_span()
    }
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        // SAFETY: forwards the inner subscriber's answer for its own types.
        unsafe { self.0.downcast_raw(id) }
    }
}

#[test]
fn training_builds_no_span_when_nothing_listens() {
    // The command line's subscriber without --profile or --trace: log lines filtered at
    // `warn`, and no span recorder.
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(EnvFilter::new("warn"));
    let no_recorder: Option<Filtered<Recorder, Targets, _>> = None;
    let registry = tracing_subscriber::registry().with(log).with(no_recorder);
    tracing::subscriber::set_global_default(CountSpans(registry)).unwrap();

    for toml_text in [
        // W3's shape: pure SGD on one thread, the one-shard step.
        "[data]\nsynthetic = \"linear\"\nn = 1000\nd = 10\n[model]\nkind = \"linear\"\n\
         [train]\nepochs = 1\nbatch_size = 1\nthreads = 1\nlr = 0.01\n",
        // An MLP in shards over two threads.
        "[data]\nsynthetic = \"teacher\"\nn = 1280\nd = 50\n[model]\nhidden = [32, 16]\n\
         [train]\nepochs = 1\nbatch_size = 128\nshard_rows = 32\nthreads = 2\nlr = 0.05\n",
    ] {
        let cfg = RawConfig::from_toml(toml_text, std::path::Path::new("spans.toml"))
            .and_then(|raw| raw.validate())
            .expect("valid config");
        let (train, _) = minibatch::data::synthetic(&cfg.data, cfg.seed);
        let model = Mlp::new(cfg.model.clone());
        let mut trainer = Trainer::new(model, cfg.data.d, &cfg.train, cfg.seed).unwrap();
        trainer.fit(&train, None, |_| {}).unwrap();
        assert_eq!(
            SPANS_BUILT.load(Ordering::SeqCst),
            0,
            "spans built by a run of\n{toml_text}"
        );
    }
}
