//! The hot path allocates nothing after warm-up: a counting global allocator sees zero
//! allocations during a whole epoch of 100 steps, after a first epoch has sized every
//! buffer, nor when a pool thread first gets tasks steps after the others. Its own binary,
//! because the allocator counts every thread of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use minibatch::{Dataset, Mlp, RawConfig, Trainer};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The trainer, training data and batch size of `toml_text`, with every pool thread started
/// (a thread's start allocates, and on a busy machine the OS may first run a worker long
/// after the pool spawned it, in the middle of a run).
fn trainer_for(toml_text: &str) -> (Trainer<Mlp>, Dataset, usize) {
    let cfg = RawConfig::from_toml(toml_text, std::path::Path::new("alloc.toml"))
        .and_then(|raw| raw.validate())
        .expect("valid config");
    let (train, _): (Dataset, _) = minibatch::data::synthetic(&cfg.data, cfg.seed);
    let model = Mlp::new(cfg.model.clone());
    let trainer = Trainer::new(model, cfg.data.d, &cfg.train, cfg.seed).unwrap();
    trainer.install(|| rayon::broadcast(|_| ()));
    (trainer, train, cfg.train.batch_size.get())
}

/// Allocations made during the second epoch of a run of `toml_text` (100 steps per epoch).
fn allocations_in_second_epoch(toml_text: &str) -> u64 {
    let (mut trainer, train, batch_size) = trainer_for(toml_text);
    let mut at_epoch_end = Vec::with_capacity(4);
    trainer
        .fit(&train, None, |report| {
            assert_eq!(report.train.rows, 100 * batch_size as u64);
            at_epoch_end.push(ALLOCATIONS.load(Ordering::SeqCst));
        })
        .unwrap();
    at_epoch_end[1] - at_epoch_end[0]
}

#[test]
fn a_hundred_steps_after_warm_up_allocate_nothing() {
    let cases = [
        // MLP, sharded over 2 threads, plain SGD.
        "[data]\nsynthetic = \"teacher\"\nn = 6400\nd = 50\n[model]\nhidden = [32, 16]\n\
         [train]\nepochs = 2\nbatch_size = 64\nshard_rows = 16\nthreads = 2\nlr = 0.05\n",
        // MLP whose weights are packed (64-row shards), in a copy per thread, 2 threads.
        "[data]\nsynthetic = \"teacher\"\nn = 12800\nd = 50\n[model]\nhidden = [64, 32]\n\
         [train]\nepochs = 2\nbatch_size = 128\nshard_rows = 64\nthreads = 2\nlr = 0.05\n",
        // Adam with clipping and a schedule, uniform sampling, 2 threads.
        "[data]\nsynthetic = \"teacher\"\nn = 3200\nd = 30\n[model]\nhidden = [20]\n\
         [train]\nepochs = 2\nbatch_size = 32\nshard_rows = 8\nthreads = 2\nlr = 0.01\noptimizer = \"adam\"\n\
         clip_norm = 1.0\nsampling = \"uniform\"\nsteps_per_epoch = 100\n[train.schedule]\nkind = \"cosine\"\nwarmup_steps = 10\n",
        // Groups of shards sharing a row: on one thread (four 16-row shards in one pass;
        // tiny layers whose products are summed through scratch space) and on two (eight
        // 64-row shards, four to a group, summed tile by tile).
        "[data]\nsynthetic = \"teacher\"\nn = 6400\nd = 50\n[model]\nhidden = [32, 16]\n\
         [train]\nepochs = 2\nbatch_size = 64\nshard_rows = 16\nthreads = 1\nlr = 0.05\n",
        "[data]\nsynthetic = \"teacher\"\nn = 3200\nd = 5\n[model]\nhidden = [4]\n\
         [train]\nepochs = 2\nbatch_size = 32\nshard_rows = 8\nthreads = 1\nlr = 0.05\n",
        "[data]\nsynthetic = \"teacher\"\nn = 51200\nd = 50\n[model]\nhidden = [64, 32]\n\
         [train]\nepochs = 2\nbatch_size = 512\nshard_rows = 64\nthreads = 2\nlr = 0.05\n",
        // Pure SGD, B = 1, on one thread.
        "[data]\nsynthetic = \"linear\"\nn = 100\nd = 10\n[train]\nepochs = 2\nbatch_size = 1\nthreads = 1\nlr = 0.01\n",
        // A batch that is one shard (stepped without the shard queue) through an MLP with
        // momentum, 2 threads.
        "[data]\nsynthetic = \"teacher\"\nn = 3200\nd = 50\n[model]\nhidden = [32]\n\
         [train]\nepochs = 2\nbatch_size = 32\nshard_rows = 32\nthreads = 2\nlr = 0.05\noptimizer = \"momentum\"\n",
    ];
    for toml_text in cases {
        let allocations = allocations_in_second_epoch(toml_text);
        assert_eq!(allocations, 0, "allocations in 100 steps of:\n{toml_text}");
    }
    // In this test rather than one of its own: the counter sees every thread of the process.
    a_thread_that_first_runs_a_task_late_allocates_nothing();
}

/// Tasks land on threads at run time: here one of two pool threads is held busy through the
/// first steps, so the other runs every task, and is then let go. Its first tasks, steps
/// after the others', allocate nothing: every thread's workspace was sized up front.
fn a_thread_that_first_runs_a_task_late_allocates_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let toml_text = "[data]\nsynthetic = \"teacher\"\nn = 4096\nd = 50\n[model]\nhidden = [64, 32]\n\
         [train]\nbatch_size = 512\nshard_rows = 64\nthreads = 2\nlr = 0.05\n";
    let (mut trainer, train, _) = trainer_for(toml_text);
    let (held, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (h, r) = (Arc::clone(&held), Arc::clone(&release));
    trainer.install(move || {
        rayon::spawn(move || {
            h.store(true, Ordering::SeqCst);
            while !r.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
        })
    });
    while !held.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    let batches: Vec<Vec<usize>> = (0..8)
        .map(|b| (b * 512..(b + 1) * 512).map(|i| i % 4096).collect())
        .collect();
    for idx in &batches[..3] {
        trainer.step(&train, idx, 0.05).unwrap();
    }
    release.store(true, Ordering::SeqCst);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for round in 0..5 {
        for idx in &batches {
            trainer
                .step(&train, idx, 0.05 / (round + 1) as f32)
                .unwrap();
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocations, 0,
        "a thread's first tasks, steps in, allocated"
    );
}
