//! How a batch is cut into shards.
//!
//! A shard is a run of consecutive positions of the batch; each gets its own gradient buffer,
//! workspace and stats slot. Boundaries depend on the batch length and `shard_rows` only,
//! never on the thread count: that, with the fixed reduction tree, is what makes the result
//! bit-identical on any number of threads. Which thread computes a shard is decided at run
//! time by `ShardQueue`, and does not matter.

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

/// The default shard size for a batch size: B / 16 rows, but at least 64 and at most 256.
/// Many shards give parallel slack for large machines (16 shards from B = 1024 on), but each
/// shard writes and the reduction reads one gradient buffer (n_params x 4 bytes), and small
/// blocks run the matrix products below their best rate. Measured with `minibatch bench` on
/// the MLP workload (2 cores): 32-row shards ran at 60-75% of the speed of 64-row ones, and
/// 64 to 256 rows were within the noise of each other from B = 512 up.
pub fn auto_shard_rows(batch_size: NonZeroUsize) -> NonZeroUsize {
    let rows = batch_size.get().div_ceil(16).clamp(64, 256);
    NonZeroUsize::new(rows).expect("clamped to at least 64")
}

/// The shards of a step, each with its gradient row and its slot, handed to whichever thread
/// asks next. The stepping thread waits for the last shard by spinning, not in a rayon
/// join, which puts a waiting thread to sleep: waking it again costs 20-100 us on a virtual
/// machine, 10% of a step at B = 128 on the MLP workload.
pub struct ShardQueue<'a, S> {
    grads: *mut f32,
    row_len: usize,
    slots: *mut S,
    len: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Threads that have taken a shard so far: each gets the next number (see `reader`).
    readers: AtomicUsize,
    _borrows: PhantomData<(&'a mut [f32], &'a mut [S])>,
}

// SAFETY: each shard's row and slot go to exactly one thread (the one whose `fetch_add`
// returned its index, or the one `run` call that runs them all alone, which holds the
// queue mutably), so sharing the queue shares no `&mut` between threads.
unsafe impl<S: Send> Sync for ShardQueue<'_, S> {}

impl<'a, S: Send> ShardQueue<'a, S> {
    /// Shard i gets row i of `grads` (rows of `row_len`) and `slots[i]`.
    pub fn new(grads: &'a mut [f32], row_len: usize, slots: &'a mut [S]) -> Self {
        assert!(
            grads.len() >= slots.len() * row_len,
            "a gradient row per shard"
        );
        ShardQueue {
            grads: grads.as_mut_ptr(),
            row_len,
            slots: slots.as_mut_ptr(),
            len: slots.len(),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            _borrows: PhantomData,
        }
    }

    /// Runs `f(i, row, slot)` on every shard, on this thread and up to `helpers` others of
    /// the current pool, and returns when all are done. Allocates nothing: the helpers'
    /// jobs live on this thread's stack (rayon's join), not in boxes (rayon's spawn).
    pub fn run(&mut self, helpers: usize, f: &(impl Fn(usize, &mut [f32], &mut S) + Sync)) {
        if helpers == 0 {
            // One thread: a plain loop. The queue's atomics cost 15% of a B = 1 step on the
            // linear workload (W3, one thread: 10.7 M -> 11.3-12.4 M steps/s).
            let _reader = Reader::enter(0);
            for i in 0..self.len {
                // SAFETY: `&mut self` rules out any other taker, here or inside `f`.
                let (row, slot) = unsafe { self.shard(i) };
                f(i, row, slot);
            }
            return;
        }
        self.share(helpers, f);
    }

    /// `run` with helpers: queues `helpers` jobs that take shards, takes shards on this
    /// thread too, then waits for the last one.
    fn share(&self, helpers: usize, f: &(impl Fn(usize, &mut [f32], &mut S) + Sync)) {
        if helpers == 0 {
            self.take_all(f);
            self.wait();
            return;
        }
        // Every helper job is queued for the other threads to steal before this thread
        // starts on the shards; one that nobody stole finds none left and returns.
        rayon::join(|| self.share(helpers - 1, f), || self.take_all(f));
    }

    /// Runs `f` on shards nobody has taken until none is left.
    fn take_all(&self, f: &(impl Fn(usize, &mut [f32], &mut S) + Sync)) {
        let mut reader = None;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.len {
                return;
            }
            if reader.is_none() {
                reader = Some(Reader::enter(self.readers.fetch_add(1, Ordering::Relaxed)));
            }
            // Counts the shard as done however `f` ends, so `wait` returns even after a
            // panic (which the enclosing scope then carries on).
            let _done = Done(&self.done);
            // SAFETY: `i < len` was returned to this thread alone.
            let (row, slot) = unsafe { self.shard(i) };
            f(i, row, slot);
        }
    }

    /// Shard i's gradient row and slot.
    ///
    /// # Safety
    /// `i < len`, and no other reference to shard i's row or slot is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn shard(&self, i: usize) -> (&mut [f32], &mut S) {
        // SAFETY: row i and slot i lie inside the borrowed slices (checked in `new`); the
        // caller rules out aliases.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.grads.add(i * self.row_len), self.row_len),
                &mut *self.slots.add(i),
            )
        }
    }

    /// Spins until every shard is done; called after `take_all`, so that no shard is left
    /// untaken. Yields the core now and then for an oversubscribed machine.
    fn wait(&self) {
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < self.len {
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
            let seen = Mutex::new(Vec::new());
            let (before, after) = pool.install(|| {
                let before = reader();
                let mut queue = ShardQueue::new(&mut grads, 2, &mut slots);
                queue.run(3, &|_, _, _| {
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
}
