//! `Collective` over MPI: built with the `mpi` cargo feature against the system's MPI library.
//!
//! The trainer calls MPI from whichever pool thread runs the step, one call at a time, so MPI
//! is initialised with `MPI_THREAD_SERIALIZED`. MPI's default error handler stays in place:
//! when a rank dies, the launcher ends the job and names the rank.

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::Collective;
use crate::error::{Error, Result};

/// This process's place among the ranks of `MPI_COMM_WORLD`.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
}

// SAFETY: the handle refers to MPI_COMM_WORLD, valid until MPI_Finalize, which only happens
// when `main` drops the `Universe` after training. MPI was initialised with at least
// MPI_THREAD_SERIALIZED, so any thread may call it as long as calls do not overlap; `Mpi` is
// not `Sync` and every method takes `&self` of the one trainer that owns it, so they don't.
unsafe impl Send for Mpi {}

/// Initialises MPI. Keep the `Universe` alive for the whole run: dropping it finalises MPI.
pub fn init() -> Result<(Universe, Mpi)> {
    let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
        .ok_or_else(|| Error::Cluster("MPI was already initialised".into()))?;
    if threading < Threading::Serialized {
        return Err(Error::Cluster(format!(
            "the MPI library offers thread support {threading:?}; minibatch needs at least \
             MPI_THREAD_SERIALIZED (its steps call MPI from a worker thread)"
        )));
    }
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    Ok((universe, Mpi { world, rank, size }))
}

/// Ends every rank of the job with `code` (after this rank printed why): a rank that merely
/// exited would leave the others waiting in the next collective call.
pub fn abort(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

/// Returns once every rank has called it: ranks that stop alike wait here until rank 0 has
/// said why, since the launcher ends the job (rank 0 with it) when the first rank exits
/// with a failure status.
pub fn barrier() {
    SimpleCommunicator::world().barrier();
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_f32(&self, send: &[f32], counts: &[i32], displs: &[i32], recv: &mut [f32]) {
        let mut partition = PartitionMut::new(recv, counts, displs);
        self.world.all_gather_varcount_into(send, &mut partition);
    }

    fn all_gather_f64(&self, send: &[f64], counts: &[i32], displs: &[i32], recv: &mut [f64]) {
        let mut partition = PartitionMut::new(recv, counts, displs);
        self.world.all_gather_varcount_into(send, &mut partition);
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
        let send = Partition::new(send, send_counts, send_displs);
        let mut recv = PartitionMut::new(recv, recv_counts, recv_displs);
        self.world.all_to_all_varcount_into(&send, &mut recv);
    }

    fn all_reduce_sum(&self, send: &[f32], recv: &mut [f32]) {
        self.world
            .all_reduce_into(send, recv, SystemOperation::sum());
    }

    fn any(&self, flag: bool) -> bool {
        let mut out = 0u8;
        self.world
            .all_reduce_into(&u8::from(flag), &mut out, SystemOperation::max());
        out != 0
    }
}
