//! How a batch is cut into shards.
//!
//! A shard is a run of consecutive positions of the batch; each gets its own gradient buffer
//! (or shares its group's: `ShardQueue::in_groups`) and stats slot, and runs in the
//! workspace of the thread that takes it. Boundaries
//! depend on the batch length and `shard_rows` only, never on the thread count: that, with
//! the fixed reduction tree, is what makes the result bit-identical on any number of
//! threads. Which thread computes a shard is decided at run time by `ShardQueue`, and does
//! not matter.

use std::cell::Cell;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn n_shards(batch_len: usize, shard_rows: NonZeroUsize) -> usize {
    batch_len.div_ceil(shard_rows.get())
}

pub fn shard_range(shard_idx: usize, batch_len: usize, shard_rows: NonZeroUsize) -> Range<usize> {
    let start = shard_idx * shard_rows.get();
    start..(start + shard_rows.get()).min(batch_len)
}

/// The default shard size for a batch size: B / 16 rows, but at least 64 and at most 256
/// (`sixteenth_rows`); and a batch of 32 to 127 rows in two equal halves (that rule made
/// 32-64 rows one shard on one core, and 65-127 a 64-row shard and a shorter one). Many
/// shards give parallel slack for large machines (16 shards from B = 1024 on); on a few
/// cores the shards run in groups (`group_size`), one pass through the model per
/// group, so small shards cost little there: measured on the MLP workload (`minibatch bench
/// -w w1 -b 512,2048 --shard-rows 64,128,256`, 2 cores, two runs), B = 512 on one thread
/// ran 114,400-126,000 examples/s with 64-row shards, 112,800-123,500 with 128 and
/// 113,700-125,200 with 256 (before groups: 98,000-104,000 against 116,000-126,000 for 64
/// and 256). 32-row shards still cost 3-5% against 64, hence the floor for large batches.
/// Below 65 rows the floor made the batch one shard, and a second core sat idle: W1 at
/// B = 32 ran 73,100-73,600 examples/s on two threads, where JAX (each product split
/// across the threads) ran 82,600 on the same machine; two shards of 16 rows cost 5-7% on
/// one thread and ran 109,900-110,100 on two (B = 64 in two of 32: one thread within the
/// noise, two 75,900-77,600 -> 134,700-136,400; B = 96 as 48 + 48 rather than 64 + 32
/// evens the threads' work).
/// Below 32 rows a half would be under 16 rows, too thin a product. The boundaries may not
/// depend on the thread count, so the default keeps the slack.
pub fn auto_shard_rows(batch_size: NonZeroUsize) -> NonZeroUsize {
    let b = batch_size.get();
    let rows = if (2 * MIN_HALF_ROWS..2 * 64).contains(&b) {
        b.div_ceil(2)
    } else {
        sixteenth_rows(b)
    };
    NonZeroUsize::new(rows).expect("at least 16 rows")
}

/// B / 16 rows within [64, 256]: the default for a batch of 128 rows or more, and for every
/// batch in the builds before small batches were halved (a resume compares against it when
/// a checkpoint does not record its shards).
pub fn sixteenth_rows(batch_size: usize) -> usize {
    batch_size.div_ceil(16).clamp(64, 256)
}

/// The fewest rows in each half of a small batch that `auto_shard_rows` cuts in two.
const MIN_HALF_ROWS: usize = 16;

/// The most rows a group of shards passes through the model at once (`group_size`): past
/// it the pass's activations and gathered rows outgrow L2, and the weight gradients' sums
/// over the group no longer fit two k-blocks of the kernel (`gemm::gemm_segments`).
pub const GROUP_ROWS: usize = 512;

/// The most shards in a group (the stats of a group's shards are gathered on the stack).
pub const MAX_GROUP: usize = 16;

/// Shards per task (`ShardQueue::in_groups`): a power of two, 1 for shards one by one.
/// Groups are aligned runs of the batch's shards, so each is a whole subtree of the
/// reduction tree, summed inside its task; the bigger the group, the fewer rows the
/// reduction adds and the more rows each product passes at once. A group holds at most
/// `GROUP_ROWS` rows (but two shards of any size make a pair) and `MAX_GROUP` shards.
/// On one thread the largest group is taken. On more (up to one per shard), every thread
/// must get the same number of whole groups: fewer, longer tasks must not leave a core idle
/// at the end of the step (10 shards as 5 pairs on 2 threads take 3 pairs' time against 5
/// shards'; measured on W1, 2 threads: 6 shards (B = 384) as 3 pairs 133,000-143,000
/// examples/s against 174,000-181,000 one by one). One group per thread is enough, since a
/// group's shards are summed tile by tile and a bigger group saves more than a second task
/// per thread would balance (W1, 2 threads, three alternating runs: B = 512 as one group of
/// four per thread 56-61% of peak against 50-56% as two pairs each; B = 256 51-55% against
/// 46-48%).
pub fn group_size(n_shards: usize, shard_rows: usize, threads: usize) -> usize {
    if n_shards < 2 {
        return 1;
    }
    let threads = threads.min(n_shards);
    let by_rows = (GROUP_ROWS / shard_rows.max(1)).max(2);
    let largest = prev_power_of_two(by_rows.min(MAX_GROUP)).min(n_shards.next_power_of_two());
    if threads <= 1 {
        return largest;
    }
    let mut group = largest;
    while group >= 2 {
        let tasks = n_shards / group;
        if n_shards.is_multiple_of(group) && tasks.is_multiple_of(threads) {
            return group;
        }
        group /= 2;
    }
    1
}

/// The largest power of two not above `n` (1 for 0).
fn prev_power_of_two(n: usize) -> usize {
    1 << n.max(1).ilog2()
}

/// The shards of a step, each with its gradient row and its slot, handed to whichever thread
/// asks next, with that thread's workspace. The stepping thread waits for the last shard by
/// spinning, not in a rayon join, which puts a waiting thread to sleep: waking it again
/// costs 20-100 us on a virtual machine, 10% of a step at B = 128 on the MLP workload.
///
/// Workspaces belong to threads, not to shards: a thread runs every task it takes in the
/// same buffers (its gathered rows, activations, packing space), which stay in its caches
/// from one task and step to the next. Measured on W1 (B = 2048, one thread: four tasks of
/// 512 rows a step), with a workspace per task the task's pass took 4,844-5,026 us (p50),
/// in the thread's own 4,449-4,705.
pub struct ShardQueue<'a, S, W> {
    grads: *mut f32,
    row_stride: usize,
    row_len: usize,
    slots: *mut S,
    len: usize,
    /// One per thread of the pool the shards run on, by `rayon::current_thread_index`.
    workspaces: *mut W,
    n_workspaces: usize,
    /// Shards per task (`in_groups`); and the number of tasks (kept, since a division per
    /// step is a measurable part of a B = 1 step).
    per_task: usize,
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Threads that have taken a shard so far: each gets the next number (see `reader`).
    readers: AtomicUsize,
    _borrows: PhantomData<(&'a mut [f32], &'a mut [S], &'a mut [W])>,
}

// SAFETY: each shard's row and slot go to exactly one thread (the one whose `fetch_add`
// returned its index, or the one `run` call that runs them all alone, which holds the
// queue mutably), and each workspace to the one thread of the pool with its index, so
// sharing the queue shares no `&mut` between threads.
unsafe impl<S: Send, W: Send> Sync for ShardQueue<'_, S, W> {}

impl<'a, S: Send, W: Send> ShardQueue<'a, S, W> {
    /// Shard i gets row i of `grads` (the first `row_len` of each `row_stride` values) and
    /// `slots[i]`; the thread with index t in the pool gets `workspaces[t]`. `run` panics
    /// if a thread's index has no workspace.
    pub fn new(
        grads: &'a mut [f32],
        row_stride: usize,
        row_len: usize,
        slots: &'a mut [S],
        workspaces: &'a mut [W],
    ) -> Self {
        assert!(
            row_len <= row_stride && grads.len() >= slots.len() * row_stride,
            "a gradient row per shard"
        );
        assert!(!workspaces.is_empty(), "a workspace for the calling thread");
        ShardQueue {
            grads: grads.as_mut_ptr(),
            row_stride,
            row_len,
            slots: slots.as_mut_ptr(),
            len: slots.len(),
            workspaces: workspaces.as_mut_ptr(),
            n_workspaces: workspaces.len(),
            per_task: 1,
            tasks: slots.len(),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            _borrows: PhantomData,
        }
    }

    /// Hands shards out `group` at a time (a power of two, from `group_size`): shards
    /// gj..gj + g go to one thread as one task, with their rows and slots, and leave their
    /// sum, added in the tree's order, in row gj (`Model::loss_grad_group`): the tree's
    /// bottom levels are summed inside the task, where the MLP sums them tile by tile in
    /// L1, and the reduction starts above them (`reduce::tree_reduce_above`). Measured on
    /// W1 (B = 512, 64-row shards), pairs alone: the reduce phase 383 -> 175 us on one
    /// thread, 241 -> 93 on two.
    pub fn in_groups(&mut self, group: usize) {
        debug_assert!(group.is_power_of_two());
        self.per_task = group;
        self.tasks = self.len.div_ceil(group);
    }

    /// Runs `f(first, rows, slots, workspace)` on every task (shard `first` alone with its
    /// row and slot, or a group of shards from `first` on with theirs: `rows` holds the
    /// group's rows `row_stride` apart, the last `row_len` long), on this thread and up to
    /// `helpers` others of the current pool, and returns when all are done. Allocates
    /// nothing: the helpers' jobs live on this thread's stack (rayon's join), not in boxes
    /// (rayon's spawn).
    pub fn run(
        &mut self,
        helpers: usize,
        f: &(impl Fn(usize, &mut [f32], &mut [S], &mut W) + Sync),
    ) {
        if helpers == 0 {
            // One thread: a plain loop. The queue's atomics cost 15% of a B = 1 step on the
            // linear workload when such steps still came here (W3, one thread: 10.7 M ->
            // 11.3-12.4 M steps/s; they now skip the queue, `Trainer::step_one_shard`).
            let _reader = Reader::enter(0);
            // SAFETY: `&mut self` rules out any other user of the workspaces.
            let ws = unsafe { &mut *self.workspace() };
            for task in 0..self.tasks {
                // SAFETY: `&mut self` rules out any other taker, here or inside `f`.
                unsafe { self.run_task(task, ws, f) };
            }
            return;
        }
        self.share(helpers, f);
    }

    /// The calling thread's workspace: the one at its index in the current pool (the
    /// first outside a pool).
    fn workspace(&self) -> *mut W {
        let index = rayon::current_thread_index().unwrap_or(0);
        assert!(
            index < self.n_workspaces,
            "thread {index} of the pool has no workspace ({} given)",
            self.n_workspaces
        );
        // SAFETY: inside the borrowed slice (checked just above).
        unsafe { self.workspaces.add(index) }
    }

    /// `run` with helpers: queues `helpers` jobs that take shards, takes shards on this
    /// thread too, then waits for the last one.
    fn share(&self, helpers: usize, f: &(impl Fn(usize, &mut [f32], &mut [S], &mut W) + Sync)) {
        if helpers == 0 {
            self.take_all(f);
            self.wait();
            return;
        }
        // Every helper job is queued for the other threads to steal before this thread
        // starts on the shards; one that nobody stole finds none left and returns.
        rayon::join(|| self.share(helpers - 1, f), || self.take_all(f));
    }

    /// Runs `f` on tasks nobody has taken until none is left.
    fn take_all(&self, f: &(impl Fn(usize, &mut [f32], &mut [S], &mut W) + Sync)) {
        // A task that itself calls into rayon (a model's own parallel loop) may, while it
        // waits, run a queued job of this pool on its thread: if that job is this queue's
        // `take_all`, it leaves the tasks to the threads already taking them, so that one
        // thread never runs two of this queue's tasks, and two workspaces, at once.
        let Some(_taking) = Taking::enter(self as *const Self as usize) else {
            return;
        };
        let mut reader = None;
        // `share` runs this on threads of one pool (rayon's join keeps both sides in the
        // caller's pool), and at most once at a time per thread (`Taking`), so no two live
        // calls share an index.
        let ws = self.workspace();
        loop {
            let task = self.next.fetch_add(1, Ordering::Relaxed);
            if task >= self.tasks {
                return;
            }
            if reader.is_none() {
                reader = Some(Reader::enter(self.readers.fetch_add(1, Ordering::Relaxed)));
            }
            // Counts the task as done however `f` ends, so `wait` returns even after a
            // panic (which the enclosing scope then carries on).
            let _done = Done(&self.done);
            // SAFETY: `task < tasks` was returned to this thread alone, and `ws` is this
            // thread's.
            unsafe { self.run_task(task, &mut *ws, f) };
        }
    }

    /// Runs `f` on the shards of `task`, with their rows and slots, in `ws`.
    ///
    /// # Safety
    /// `task < tasks`, and no other reference to its shards' rows or slots is alive.
    #[inline(always)]
    unsafe fn run_task(
        &self,
        task: usize,
        ws: &mut W,
        f: &(impl Fn(usize, &mut [f32], &mut [S], &mut W) + Sync),
    ) {
        let first = task * self.per_task;
        let count = self.per_task.min(self.len - first);
        // SAFETY: rows and slots first..first + count lie inside the borrowed slices
        // (checked in `new`); the caller rules out other aliases.
        let (rows, slots) = unsafe {
            (
                std::slice::from_raw_parts_mut(
                    self.grads.add(first * self.row_stride),
                    (count - 1) * self.row_stride + self.row_len,
                ),
                std::slice::from_raw_parts_mut(self.slots.add(first), count),
            )
        };
        f(first, rows, slots, ws);
    }

    /// Spins until every task is done; called after `take_all`, so that no task is left
    /// untaken. Yields the core now and then for an oversubscribed machine.
    fn wait(&self) {
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < self.tasks {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

thread_local! {
    /// This thread's number among those running the current shards, or `usize::MAX`.
    static READER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Which of the threads running the current step's shards the calling thread is: 0, 1, ...
/// in the order they took their first shard, so that the threads at work have distinct
/// numbers below the number of shards whatever their places in the pool. Data kept in a copy
/// per such thread (`gemm::PackedB`) is indexed by it. Outside shards, the pool's thread
/// index.
pub fn reader() -> usize {
    match READER.get() {
        usize::MAX => rayon::current_thread_index().unwrap_or(0),
        reader => reader,
    }
}

/// Sets this thread's `reader` number until dropped (a panic included).
struct Reader;

impl Reader {
    fn enter(number: usize) -> Reader {
        READER.set(number);
        Reader
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        READER.set(usize::MAX);
    }
}

thread_local! {
    /// The queue whose `take_all` this thread is inside (its address), or 0.
    static TAKING: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as taking one queue's shards until dropped (a panic included), then
/// puts back the mark it found: a task may run a queue of its own (a model built on one),
/// whose shards this thread must then take.
struct Taking {
    outer: usize,
}

impl Taking {
    /// `None` if this thread is taking the shards of `queue` already.
    fn enter(queue: usize) -> Option<Taking> {
        let outer = TAKING.get();
        if outer == queue {
            return None;
        }
        TAKING.set(queue);
        Some(Taking { outer })
    }
}

impl Drop for Taking {
    fn drop(&mut self) {
        TAKING.set(self.outer);
    }
}

struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_position_once() {
        for batch_len in 1..200 {
            for rows in [1, 3, 16, 64, 500] {
                let rows = NonZeroUsize::new(rows).unwrap();
                let mut next = 0;
                for i in 0..n_shards(batch_len, rows) {
                    let r = shard_range(i, batch_len, rows);
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty());
                    next = r.end;
                }
                assert_eq!(next, batch_len);
            }
        }
    }

    #[test]
    fn default_shards_leave_no_batch_of_32_rows_or_more_on_one_core() {
        for b in 1..=5000 {
            let rows = auto_shard_rows(NonZeroUsize::new(b).unwrap());
            let shards = n_shards(b, rows);
            if b < 32 {
                assert_eq!(shards, 1, "B = {b}");
            } else {
                assert!(shards >= 2, "B = {b}: {shards} shard");
                assert!(
                    rows.get() >= 16 && rows.get() <= 256,
                    "B = {b}: {rows} rows"
                );
            }
            if b >= 128 {
                // Large batches keep B / 16 within [64, 256].
                assert_eq!(rows.get(), b.div_ceil(16).clamp(64, 256), "B = {b}");
            }
        }
        assert_eq!(auto_shard_rows(NonZeroUsize::new(32).unwrap()).get(), 16);
        assert_eq!(auto_shard_rows(NonZeroUsize::new(100).unwrap()).get(), 50);
    }

    /// Where shards go in groups on several threads, the last thread to finish runs no
    /// more shards than it would one by one (counted in whole shards), every thread gets
    /// the same number of groups, and a group holds at most `GROUP_ROWS` rows unless it is
    /// a pair.
    #[test]
    fn groups_never_lengthen_the_step() {
        for threads in 1..=16 {
            for n in 1..=300 {
                for rows in [1, 8, 64, 100, 256, 1000] {
                    let group = group_size(n, rows, threads);
                    let case = format!("{n} shards of {rows} rows on {threads} threads");
                    assert!(group.is_power_of_two() && group <= MAX_GROUP, "{case}");
                    assert!(group == 2 || group * rows <= GROUP_ROWS.max(rows), "{case}");
                    if threads == 1 {
                        assert_eq!(group >= 2, n >= 2, "{case}");
                        assert!(group < 2 * n, "{case}: a group of {group}");
                        continue;
                    }
                    let tasks = n.div_ceil(group);
                    assert!(
                        group * tasks.div_ceil(threads) <= n.div_ceil(threads),
                        "{case}"
                    );
                    if group > 1 {
                        assert!(tasks.is_multiple_of(threads), "{case}");
                    }
                }
            }
        }
        assert_eq!(group_size(8, 64, 1), 8);
        assert_eq!(group_size(8, 64, 2), 4);
        assert_eq!(group_size(16, 128, 2), 4);
        assert_eq!(group_size(2, 64, 2), 1);
        assert_eq!(group_size(10, 64, 2), 1);
        assert_eq!(group_size(2, 4096, 1), 2);
    }

    /// In groups of g, shards gj..gj + g are one task, with rows gj.. and their slots; a
    /// short last group is a task too; one by one, each shard is a task with its own row.
    /// Every shard once. Rows are 2 values of every 3 (padded rows).
    #[test]
    fn shards_in_groups_are_one_task_with_their_rows() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for group in [1, 2, 4] {
            for n in [1, 2, 5, 8] {
                let (mut grads, mut slots) = (vec![0.0f32; n * 3], vec![usize::MAX; n]);
                let row0 = grads.as_ptr() as usize;
                let tasks = std::sync::Mutex::new(Vec::new());
                let mut workspaces = [(); 3];
                pool.install(|| {
                    let mut queue = ShardQueue::new(&mut grads, 3, 2, &mut slots, &mut workspaces);
                    queue.in_groups(group);
                    queue.run(2, &|first, rows: &mut [f32], slots: &mut [usize], _| {
                        assert_eq!(rows.len(), (slots.len() - 1) * 3 + 2);
                        for (i, slot) in slots.iter_mut().enumerate() {
                            *slot = first + i;
                        }
                        let row_at = (rows.as_ptr() as usize - row0) / (3 * size_of::<f32>());
                        tasks.lock().unwrap().push((first, slots.len(), row_at));
                    });
                });
                let mut tasks = tasks.into_inner().unwrap();
                tasks.sort();
                let want: Vec<_> = (0..n)
                    .step_by(group)
                    .map(|i| (i, group.min(n - i), i))
                    .collect();
                assert_eq!(tasks, want, "{n} shards in groups of {group}");
                assert_eq!(slots, (0..n).collect::<Vec<_>>(), "each shard its own slot");
            }
        }
    }

    /// Threads that run shards are numbered 0, 1, ... whatever their places in the pool, one
    /// number each, and the numbers are gone after the shards.
    #[test]
    fn shard_threads_get_distinct_reader_numbers_below_the_shard_count() {
        use std::sync::Mutex;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for _ in 0..20 {
            let (mut grads, mut slots) = (vec![0.0f32; 3 * 2], vec![(); 3]);
            let mut workspaces = [(); 4];
            let seen = Mutex::new(Vec::new());
            let (before, after) = pool.install(|| {
                let before = reader();
                let mut queue = ShardQueue::new(&mut grads, 2, 2, &mut slots, &mut workspaces);
                queue.run(3, &|_, _, _, _| {
                    let thread = rayon::current_thread_index().unwrap();
                    seen.lock().unwrap().push((thread, reader()));
                    std::thread::sleep(std::time::Duration::from_millis(1));
                });
                (before, reader())
            });
            let seen = seen.into_inner().unwrap();
            assert_eq!(seen.len(), 3);
            for &(thread, number) in &seen {
                assert!(number < 3, "reader {number} for 3 shards");
                for &(other, other_number) in &seen {
                    assert_eq!(thread == other, number == other_number, "{seen:?}");
                }
            }
            assert_eq!(before, after, "the number outlived the shards");
        }
    }
    /// A thread runs every task it takes in its own workspace (the one at its index in the
    /// pool), step after step, whichever tasks it gets; one thread alone uses its own too.
    #[test]
    fn each_thread_runs_its_tasks_in_its_own_workspace() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let mut workspaces = [usize::MAX; 4];
        for helpers in [0, 1, 3] {
            for _ in 0..10 {
                let (mut grads, mut slots) = (vec![0.0f32; 16], vec![0usize; 16]);
                pool.install(|| {
                    let mut queue = ShardQueue::new(&mut grads, 1, 1, &mut slots, &mut workspaces);
                    queue.run(helpers, &|_, _, slots: &mut [usize], ws: &mut usize| {
                        let thread = rayon::current_thread_index().unwrap();
                        if *ws == usize::MAX {
                            *ws = thread;
                        }
                        assert_eq!(*ws, thread, "thread {thread} got thread {ws}'s workspace");
                        slots[0] += 1;
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    });
                });
                assert!(slots.iter().all(|&n| n == 1), "every shard once: {slots:?}");
            }
        }
        assert!(
            workspaces.iter().filter(|&&w| w != usize::MAX).count() >= 2,
            "the tasks went to one thread only: {workspaces:?}"
        );
    }

    /// A task that runs rayon jobs of its own (and so may run a queued job of the pool
    /// while it waits) never shares its thread's workspace with a second task.
    #[test]
    fn a_task_running_rayon_jobs_never_shares_its_workspace() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let mut workspaces = [false; 4];
        for _ in 0..20 {
            let (mut grads, mut slots) = (vec![0.0f32; 32], vec![0usize; 32]);
            pool.install(|| {
                let mut queue = ShardQueue::new(&mut grads, 1, 1, &mut slots, &mut workspaces);
                queue.run(3, &|_, _, slots: &mut [usize], busy: &mut bool| {
                    assert!(!*busy, "two tasks in one workspace at once");
                    *busy = true;
                    let pause = || std::thread::sleep(std::time::Duration::from_micros(200));
                    rayon::join(pause, pause);
                    *busy = false;
                    slots[0] += 1;
                });
            });
            assert!(slots.iter().all(|&n| n == 1), "every shard once: {slots:?}");
        }
    }
    /// A task may run a queue of its own (a model built on one): its shards are taken, by
    /// this thread too, and its `run` returns (with one mark for all queues it would spin).
    #[test]
    fn a_task_may_run_a_queue_of_its_own() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let (mut grads, mut slots, mut workspaces) =
                (vec![0.0f32; 2], vec![0usize; 2], [(); 1]);
            pool.install(|| {
                let mut outer = ShardQueue::new(&mut grads, 1, 1, &mut slots, &mut workspaces);
                outer.run(1, &|_, _, slots: &mut [usize], _| {
                    let (mut grads, mut inner_slots, mut workspaces) =
                        (vec![0.0f32; 3], vec![0usize; 3], [(); 1]);
                    let mut inner =
                        ShardQueue::new(&mut grads, 1, 1, &mut inner_slots, &mut workspaces);
                    inner.run(1, &|_, _, slots: &mut [usize], _| slots[0] += 1);
                    slots[0] = inner_slots.iter().sum();
                });
            });
            done.send(slots).unwrap();
        });
        let slots = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a queue run inside a task never returned");
        assert_eq!(slots, vec![3, 3], "every inner shard, once per outer task");
    }
}
