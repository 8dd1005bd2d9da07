//! Training across ranks without MPI: each rank is a thread of this test with its own
//! `Trainer` and pool, joined through an in-process `Collective`. The exact reduction must
//! give the single process's bits for any rank count (more ranks than shards included), the
//! fast one nearly the same values, and a stop on one rank must stop every rank at once.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use minibatch::cluster::{Collective, Reduction};
use minibatch::config::Config;
use minibatch::{Dataset, Mlp, Observer, Position, TrainState, Trainer};

use crate::common::{bits, config, random_dataset};

/// What the ranks of one job share: a barrier and one mailbox per rank.
struct Hub {
    barrier: Meeting,
    mail: Mutex<Vec<Vec<f64>>>,
}

/// A barrier that fails the test instead of hanging it when a rank never arrives (because
/// it panicked, or called other collectives than the rest).
struct Meeting {
    size: usize,
    /// (arrived in this round, round number)
    state: Mutex<(usize, u64)>,
    all_here: Condvar,
}

impl Meeting {
    fn new(size: usize) -> Self {
        Meeting {
            size,
            state: Mutex::new((0, 0)),
            all_here: Condvar::new(),
        }
    }

    fn wait(&self) {
        let mut state = self.state.lock().unwrap();
        let round = state.1;
        state.0 += 1;
        if state.0 == self.size {
            *state = (0, round + 1);
            self.all_here.notify_all();
            return;
        }
        let (state, timeout) = self
            .all_here
            .wait_timeout_while(state, Duration::from_secs(60), |s| s.1 == round)
            .unwrap();
        assert!(
            !timeout.timed_out() || state.1 != round,
            "a rank never reached the collective"
        );
    }
}

struct ThreadRank {
    rank: usize,
    size: usize,
    hub: Arc<Hub>,
}

impl ThreadRank {
    /// Every rank's `send`, in rank order (f32 and flags travel exactly as f64).
    fn exchange(&self, send: impl Iterator<Item = f64>) -> Vec<Vec<f64>> {
        self.hub.mail.lock().unwrap()[self.rank] = send.collect();
        self.hub.barrier.wait();
        let all = self.hub.mail.lock().unwrap().clone();
        self.hub.barrier.wait();
        all
    }

    fn gather<T: Copy>(
        &self,
        all: Vec<Vec<f64>>,
        counts: &[i32],
        displs: &[i32],
        recv: &mut [T],
        from: impl Fn(f64) -> T,
    ) {
        for (r, mail) in all.iter().enumerate() {
            assert_eq!(
                mail.len(),
                counts[r] as usize,
                "rank {r} sent another count"
            );
            let at = displs[r] as usize;
            for (dst, &x) in recv[at..at + mail.len()].iter_mut().zip(mail) {
                *dst = from(x);
            }
        }
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_gather_f32(&self, send: &[f32], counts: &[i32], displs: &[i32], recv: &mut [f32]) {
        let all = self.exchange(send.iter().map(|&x| f64::from(x)));
        self.gather(all, counts, displs, recv, |x| x as f32);
    }
    fn all_gather_f64(&self, send: &[f64], counts: &[i32], displs: &[i32], recv: &mut [f64]) {
        let all = self.exchange(send.iter().copied());
        self.gather(all, counts, displs, recv, |x| x);
    }
    fn all_to_all_f32(
        &self,
        send: &[f32],
        send_counts: &[i32],
        send_displs: &[i32],
        recv: &mut [f32],
        recv_counts: &[i32],
        recv_displs: &[i32],
    ) {
        // Everyone posts everything; each takes its own part from every sender.
        assert_eq!(send_counts.iter().sum::<i32>() as usize, send.len());
        let posted = send_counts
            .iter()
            .zip(send_displs)
            .flat_map(|(&c, &d)| [f64::from(c), f64::from(d)])
            .chain(send.iter().map(|&x| f64::from(x)));
        let all = self.exchange(posted);
        let size = self.size;
        for (r, mail) in all.iter().enumerate() {
            let (count, displ) = (
                mail[2 * self.rank] as usize,
                mail[2 * self.rank + 1] as usize,
            );
            assert_eq!(
                count, recv_counts[r] as usize,
                "rank {r} sent another count"
            );
            let data = &mail[2 * size + displ..2 * size + displ + count];
            let at = recv_displs[r] as usize;
            for (dst, &x) in recv[at..at + count].iter_mut().zip(data) {
                *dst = x as f32;
            }
        }
    }

    fn all_reduce_sum(&self, send: &[f32], recv: &mut [f32]) {
        let all = self.exchange(send.iter().map(|&x| f64::from(x)));
        for (j, dst) in recv.iter_mut().enumerate() {
            *dst = all.iter().map(|mail| mail[j] as f32).sum();
        }
    }
    fn any(&self, flag: bool) -> bool {
        let all = self.exchange(std::iter::once(f64::from(u8::from(flag))));
        all.iter().any(|mail| mail[0] != 0.0)
    }
}

fn ranks(size: usize) -> Vec<ThreadRank> {
    let hub = Arc::new(Hub {
        barrier: Meeting::new(size),
        mail: Mutex::new(vec![Vec::new(); size]),
    });
    (0..size)
        .map(|rank| ThreadRank {
            rank,
            size,
            hub: Arc::clone(&hub),
        })
        .collect()
}

/// A run's parameters and noise-scale estimate.
type Outcome = (Vec<f32>, Option<f64>, Position);

fn train(
    cfg: &Config,
    data: &Dataset,
    comm: Option<ThreadRank>,
    reduction: Reduction,
    stop_at: Option<u64>,
) -> Outcome {
    let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), data.d(), &cfg.train, 9).unwrap();
    trainer.track_noise_scale(1, 0.1);
    let rank = comm.as_ref().map_or(0, |c| c.rank);
    if let Some(comm) = comm {
        trainer.join(Box::new(comm), reduction).unwrap();
    }
    // Only rank 1 asks to stop (or the only rank).
    let stopper = StopAt(stop_at.filter(|_| rank == 1 || trainer.rank().1 == 1));
    trainer.fit_observed(data, None, stopper).unwrap();
    let noise = trainer.noise_scale().and_then(|n| n.b_noise());
    (trainer.params().to_vec(), noise, trainer.position())
}

struct StopAt(Option<u64>);

impl Observer for StopAt {
    fn epoch(&mut self, _: &minibatch::EpochReport) {}
    fn after_step(&mut self, state: &TrainState<'_>) -> bool {
        self.0 == Some(state.steps)
    }
}

fn across_ranks(
    cfg: &Config,
    data: &Dataset,
    size: usize,
    reduction: Reduction,
    stop_at: Option<u64>,
) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks(size)
            .into_iter()
            .map(|comm| scope.spawn(move || train(cfg, data, Some(comm), reduction, stop_at)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

const CONFIG: &str = "[data]\nsynthetic = \"teacher\"\nn = 700\nd = 12\n[model]\nkind = \"mlp\"\nhidden = [9]\n\
    [train]\nepochs = 2\nbatch_size = 100\nshard_rows = 9\nthreads = 2\nlr = 0.05\n";

#[test]
fn exact_reduction_gives_the_single_process_bits_on_1_to_5_ranks() {
    let data = random_dataset(700, 12, Some(4), 70);
    for optimizer in ["sgd", "adam"] {
        // 12 shards per batch (the last short) and a short last batch in each epoch.
        let cfg = config(&format!(
            "{CONFIG}optimizer = \"{optimizer}\"\nclip_norm = 1.0\n"
        ));
        let (single, single_noise, _) = train(&cfg, &data, None, Reduction::Exact, None);
        for size in 1..=5 {
            for (rank, (params, noise, _)) in
                across_ranks(&cfg, &data, size, Reduction::Exact, None)
                    .into_iter()
                    .enumerate()
            {
                assert!(
                    bits(&params) == bits(&single),
                    "{optimizer}: rank {rank} of {size} differs"
                );
                assert_eq!(noise.map(f64::to_bits), single_noise.map(f64::to_bits));
            }
        }
    }
}

#[test]
fn more_ranks_than_shards_still_give_the_same_bits() {
    let data = random_dataset(120, 12, Some(4), 71);
    let cfg = config(
        &CONFIG
            .replace("shard_rows = 9", "shard_rows = 40")
            .replace("n = 700", "n = 120"),
    );
    let (single, ..) = train(&cfg, &data, None, Reduction::Exact, None);
    // 3 shards per batch, 5 ranks: two ranks compute nothing and still take every step.
    for (params, ..) in across_ranks(&cfg, &data, 5, Reduction::Exact, None) {
        assert!(bits(&params) == bits(&single));
    }
}

#[test]
fn fast_reduction_agrees_on_every_rank_and_nearly_with_one_process() {
    let data = random_dataset(700, 12, Some(4), 72);
    let cfg = config(CONFIG);
    let (single, ..) = train(&cfg, &data, None, Reduction::Exact, None);
    let runs = across_ranks(&cfg, &data, 3, Reduction::Fast, None);
    for (params, ..) in &runs {
        assert!(bits(params) == bits(&runs[0].0), "ranks disagree");
        let worst = params
            .iter()
            .zip(&single)
            .map(|(a, b)| (a - b).abs() / (1e-3 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "fast reduction drifted by {worst}");
    }
}

#[test]
fn a_stop_asked_by_one_rank_stops_every_rank_at_that_step() {
    let data = random_dataset(700, 12, Some(4), 73);
    let cfg = config(CONFIG);
    let (single, _, position) = train(&cfg, &data, None, Reduction::Exact, Some(5));
    assert_eq!(
        position,
        Position {
            epoch: 0,
            step_in_epoch: 5
        }
    );
    for (params, _, at) in across_ranks(&cfg, &data, 3, Reduction::Exact, Some(5)) {
        assert_eq!(at, position);
        assert!(bits(&params) == bits(&single));
    }
}

#[test]
fn a_model_with_fewer_parameters_than_ranks_still_gives_the_same_bits() {
    // Linear regression on 2 features: 3 parameters, so some of the 5 ranks finish no
    // parameter's sum and only pass node slices on.
    let data = random_dataset(300, 2, None, 74);
    let cfg = config(
        "[data]\nsynthetic = \"linear\"\nn = 300\nd = 2\n\
         [train]\nepochs = 2\nbatch_size = 64\nshard_rows = 5\nthreads = 2\nlr = 0.05\noptimizer = \"adam\"\n",
    );
    let (single, ..) = train(&cfg, &data, None, Reduction::Exact, None);
    for size in [2, 5] {
        for (params, ..) in across_ranks(&cfg, &data, size, Reduction::Exact, None) {
            assert!(bits(&params) == bits(&single), "{size} ranks");
        }
    }
}

/// Records each epoch's validation stats.
struct Valid(Vec<minibatch::Stats>);

impl Observer for Valid {
    fn epoch(&mut self, report: &minibatch::EpochReport) {
        self.0
            .push(report.valid.expect("a validation set was given"));
    }
}

fn validate(
    cfg: &Config,
    train: &Dataset,
    valid: &Dataset,
    comm: Option<ThreadRank>,
) -> Vec<minibatch::Stats> {
    let mut trainer = Trainer::new(Mlp::new(cfg.model.clone()), train.d(), &cfg.train, 9).unwrap();
    if let Some(comm) = comm {
        trainer.join(Box::new(comm), Reduction::Exact).unwrap();
    }
    let mut seen = Valid(Vec::new());
    trainer.fit_observed(train, Some(valid), &mut seen).unwrap();
    seen.0
}

#[test]
fn ranks_split_the_validation_set_and_report_the_single_process_stats() {
    let (train, valid) = (
        random_dataset(700, 12, Some(4), 75),
        random_dataset(333, 12, Some(4), 76),
    );
    let cfg = config(CONFIG);
    let single = validate(&cfg, &train, &valid, None);
    assert_eq!(single.len(), 2);
    for size in [2, 3, 5] {
        let runs: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranks(size)
                .into_iter()
                .map(|comm| scope.spawn(|| validate(&cfg, &train, &valid, Some(comm))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for stats in runs {
            for (a, b) in stats.iter().zip(&single) {
                assert_eq!(a.loss_sum.to_bits(), b.loss_sum.to_bits(), "{size} ranks");
                assert_eq!((a.n_correct, a.rows), (b.n_correct, b.rows));
            }
        }
    }
}

/// Ranks that read different inputs are stopped before the first step, every rank with the
/// same answer (none left waiting); ranks that read the same go on.
#[test]
fn ranks_with_different_inputs_stop_together_before_training() {
    let cfg = config(CONFIG);
    let data = random_dataset(700, 12, Some(3), 3);
    let check = |fingerprints: [u64; 3]| -> Vec<Result<(), String>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranks(3)
                .into_iter()
                .map(|comm| {
                    let cfg = &cfg;
                    let data = &data;
                    scope.spawn(move || {
                        let rank = comm.rank;
                        let mut trainer =
                            Trainer::new(Mlp::new(cfg.model.clone()), data.d(), &cfg.train, 9)
                                .unwrap();
                        trainer.join(Box::new(comm), Reduction::Exact).unwrap();
                        trainer
                            .check_same_inputs(fingerprints[rank])
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    assert!(check([7, 7, 7]).iter().all(Result::is_ok));
    // The same data hashes the same, and one changed target changes the hash.
    let mut other = data.targets().to_vec();
    other[5] = (other[5] + 1.0) % 3.0;
    let changed = minibatch::Dataset::new(data.x().to_owned(), other.into(), Some(3)).unwrap();
    assert_eq!(data.fingerprint(), data.clone().fingerprint());
    assert_ne!(data.fingerprint(), changed.fingerprint());
    // The hash is XXH3's, fixed by its specification, so ranks built apart agree: this
    // value comes from another XXH3 implementation (Python's `xxhash`) over the same bytes
    // (n, d, classes + 1, block count as u64; the feature block's and the targets' hashes).
    let tiny = minibatch::Dataset::new(
        ndarray::arr2(&[[1.5, -2.0, 0.0], [3.25, 1e-3, 7.0]]),
        ndarray::arr1(&[0.0, 1.0]),
        Some(2),
    )
    .unwrap();
    assert_eq!(tiny.fingerprint(), 0xeb3f_a191_667b_5fe0);
    let (a, b) = (data.fingerprint(), changed.fingerprint());
    for outcome in check([a, a, b]) {
        let err = outcome.unwrap_err();
        assert!(
            err.contains("rank 2 read other inputs than rank 0"),
            "{err}"
        );
    }
}
