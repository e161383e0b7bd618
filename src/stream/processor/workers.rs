//! Where batches of records are evaluated: on worker threads that each own a share of the assigned
//! partitions (so a partition's records are decided in order, by one thread), or on the consumer's own
//! thread when there are no workers.
//!
//! The consumer's thread keeps everything that talks to Kafka (polling, producing, committing): it
//! copies each record into the batch of its partition's worker, sends full batches off, and applies the
//! evaluated batches that come back in the order each worker finished them (per worker, the order they
//! were sent). Every operation that reads or replaces users (checkpoints, rewinds, rebalances) first
//! waits until nothing is in flight, so the workers' users are handed over whole.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::message::{BorrowedHeaders, Message};

use super::evaluate::{Batch, Evaluator, SharedUsers};
use super::trace::RecordTrace;
use crate::promo::SharedCatalog;
use crate::stream::changelog::PartitionUsers;
use crate::stream::error::StreamError;
use crate::stream::lock;
use crate::telemetry::PipelineMetrics;

/// A batch is sent to its worker when it holds this many records (or when the consumer has nothing more
/// to hand over right now): large enough that the hand-over costs little per record, small enough that
/// a batch's records wait well under a millisecond.
const BATCH_RECORDS: usize = 256;
/// Batches queued for one worker beyond the one it is evaluating: the consumer's thread waits when a
/// worker is this far behind (backpressure instead of an unbounded buffer).
const QUEUED_PER_WORKER: usize = 2;

/// The default number of worker threads: one per core beyond the first, which the consumer's thread and
/// librdkafka's threads use (at most 4: beyond that the consumer's thread is the bottleneck).
#[must_use]
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .min(4)
}

enum Evaluation {
    /// Batches are evaluated when sent, on the consumer's thread.
    Inline {
        evaluator: Box<Evaluator>,
        done: VecDeque<Batch>,
    },
    Workers {
        queues: Vec<SyncSender<Batch>>,
        done: Receiver<Batch>,
        threads: Vec<JoinHandle<()>>,
    },
}

/// Hands records to the evaluators and gives back what they decided.
pub(super) struct Dispatcher {
    evaluation: Evaluation,
    /// The users of each shard; one shard per worker (one in all inline).
    shards: Vec<SharedUsers>,
    /// The shard of each assigned partition, indexed by partition number.
    shard_of: Vec<Option<usize>>,
    /// Records copied and not sent yet, one batch per shard.
    pending: Vec<Batch>,
    /// Cleared batches, for reuse.
    spare: Vec<Batch>,
    in_flight: usize,
    /// One past the last offset handed over, per partition (to notice position jumps before the
    /// records are processed).
    next_offset: Vec<Option<i64>>,
}

impl Dispatcher {
    /// `workers` threads (none: evaluate on the calling thread).
    pub fn start(
        workers: usize,
        catalog: &Arc<SharedCatalog>,
        metrics: &PipelineMetrics,
        max_event_bytes: usize,
    ) -> Result<Self, StreamError> {
        let shards: Vec<SharedUsers> = (0..workers.max(1))
            .map(|_| Arc::new(Mutex::new(Default::default())))
            .collect();
        let evaluator = |users: &SharedUsers, name: &str| {
            Evaluator::new(
                catalog.clone(),
                users.clone(),
                metrics.clone(),
                max_event_bytes,
                name,
            )
        };
        let evaluation = if workers == 0 {
            Evaluation::Inline {
                evaluator: Box::new(evaluator(&shards[0], "consumer")),
                done: VecDeque::new(),
            }
        } else {
            let (finished, done) = mpsc::channel();
            let mut queues = Vec::with_capacity(workers);
            let mut threads = Vec::with_capacity(workers);
            for (index, users) in shards.iter().enumerate() {
                let (queue, batches) = mpsc::sync_channel::<Batch>(QUEUED_PER_WORKER);
                let mut evaluator = evaluator(users, &index.to_string());
                let finished = finished.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("geopromo-eval-{index}"))
                    .spawn(move || {
                        for mut batch in batches {
                            evaluator.evaluate(&mut batch);
                            if finished.send(batch).is_err() {
                                break;
                            }
                        }
                    })
                    .map_err(|error| {
                        StreamError::Fatal(format!("starting an evaluation thread: {error}"))
                    })?;
                queues.push(queue);
                threads.push(thread);
            }
            Evaluation::Workers {
                queues,
                done,
                threads,
            }
        };
        Ok(Self {
            evaluation,
            pending: (0..shards.len()).map(|_| Batch::default()).collect(),
            shards,
            shard_of: Vec::new(),
            spare: Vec::new(),
            in_flight: 0,
            next_offset: Vec::new(),
        })
    }

    /// How long the consumer may wait for the next record: not at all while records wait to be sent
    /// (they go as soon as the consumer has nothing more for now), briefly while batches are out.
    pub fn poll_timeout(&self) -> Duration {
        if self.pending.iter().any(|batch| !batch.is_empty()) {
            Duration::ZERO
        } else if self.in_flight > 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        }
    }

    /// The offset the next record of `partition` should have, from the records handed over.
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.next_offset
            .get(usize::try_from(partition).ok()?)
            .copied()
            .flatten()
    }

    /// Copies `message` into its worker's batch, and sends the batch off when it is full.
    pub fn push(
        &mut self,
        message: &impl Message<Headers = BorrowedHeaders>,
        sampled: bool,
        trace: Option<RecordTrace>,
    ) -> Result<(), StreamError> {
        let partition = message.partition();
        if let Ok(index) = usize::try_from(partition) {
            if self.next_offset.len() <= index {
                self.next_offset.resize(index + 1, None);
            }
            self.next_offset[index] = Some(message.offset() + 1);
        }
        let shard = self.shard(partition);
        self.pending[shard].push(message, sampled, trace);
        if self.pending[shard].len() >= BATCH_RECORDS {
            self.send(shard)?;
        }
        Ok(())
    }

    /// Sends every batch holding records.
    pub fn send_pending(&mut self) -> Result<(), StreamError> {
        for shard in 0..self.pending.len() {
            if !self.pending[shard].is_empty() {
                self.send(shard)?;
            }
        }
        Ok(())
    }

    fn send(&mut self, shard: usize) -> Result<(), StreamError> {
        let fresh = self.spare.pop().unwrap_or_default();
        let mut batch = std::mem::replace(&mut self.pending[shard], fresh);
        match &mut self.evaluation {
            Evaluation::Inline { evaluator, done } => {
                evaluator.evaluate(&mut batch);
                done.push_back(batch);
            }
            Evaluation::Workers { queues, .. } => {
                queues[shard]
                    .send(batch)
                    .map_err(|_| StreamError::Fatal("an evaluation thread stopped".into()))?;
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// An evaluated batch, if one is back; with `wait`, waits for one while any is in flight.
    pub fn finished(&mut self, wait: bool) -> Result<Option<Batch>, StreamError> {
        if self.in_flight == 0 {
            return Ok(None);
        }
        let batch = match &mut self.evaluation {
            Evaluation::Inline { done, .. } => done.pop_front(),
            Evaluation::Workers { done, threads, .. } if wait => loop {
                match done.recv_timeout(Duration::from_secs(1)) {
                    Ok(batch) => break Some(batch),
                    Err(RecvTimeoutError::Timeout)
                        if !threads.iter().any(JoinHandle::is_finished) => {}
                    Err(_) => {
                        return Err(StreamError::Fatal("an evaluation thread stopped".into()))
                    }
                }
            },
            Evaluation::Workers { done, .. } => done.try_recv().ok(),
        };
        if batch.is_some() {
            self.in_flight -= 1;
        }
        Ok(batch)
    }

    /// Gives a batch back for reuse once its results are applied.
    pub fn recycle(&mut self, mut batch: Batch) {
        batch.clear();
        self.spare.push(batch);
    }

    /// Drops every record not applied yet (they are read again after a rewind), waiting for the batches
    /// in flight to come back.
    pub fn discard(&mut self) -> Result<(), StreamError> {
        for batch in &mut self.pending {
            batch.clear();
        }
        while let Some(batch) = self.finished(true)? {
            self.recycle(batch);
        }
        self.next_offset.clear();
        Ok(())
    }

    /// `partition` was assigned, with its users.
    pub fn assign(&mut self, partition: i32, users: PartitionUsers) {
        let Ok(index) = usize::try_from(partition) else {
            return;
        };
        // Assigned again without a revoke in between: its old users go, wherever they were.
        self.revoke(partition);
        // The shard with the fewest partitions, so that any assignment spreads over the workers.
        let mut counts = vec![0usize; self.shards.len()];
        for shard in self.shard_of.iter().flatten() {
            counts[*shard] += 1;
        }
        let shard = (0..counts.len()).min_by_key(|&s| counts[s]).unwrap_or(0);
        if self.shard_of.len() <= index {
            self.shard_of.resize(index + 1, None);
        }
        self.shard_of[index] = Some(shard);
        lock(&self.shards[shard]).insert(partition, users);
    }

    /// Replaces the users of an assigned `partition` (after a rewind). Nothing may be in flight.
    pub fn replace_users(&mut self, partition: i32, users: PartitionUsers) {
        let shard = self.shard(partition);
        lock(&self.shards[shard]).insert(partition, users);
    }

    /// `partition` was revoked. Nothing of it may be in flight.
    pub fn revoke(&mut self, partition: i32) {
        let shard = self.shard(partition);
        lock(&self.shards[shard]).remove(&partition);
        if let Ok(index) = usize::try_from(partition) {
            if let Some(slot) = self.shard_of.get_mut(index) {
                *slot = None;
            }
            if let Some(slot) = self.next_offset.get_mut(index) {
                *slot = None;
            }
        }
    }

    /// The users of every shard. Nothing may be in flight.
    pub fn shards(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<i32, PartitionUsers>>> {
        self.shards.iter().map(|users| lock(users))
    }

    fn shard(&self, partition: i32) -> usize {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.shard_of.get(index).copied().flatten())
            .unwrap_or(0)
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Evaluation::Workers {
            queues, threads, ..
        } = &mut self.evaluation
        {
            // Closing the queues ends the workers' loops.
            queues.clear();
            for thread in threads.drain(..) {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geofence::IndexOptions;
    use crate::promo::{Catalog, RuleOptions};

    fn dispatcher(workers: usize) -> Dispatcher {
        let catalog = Catalog::build(
            Vec::new(),
            Vec::new(),
            RuleOptions::default(),
            IndexOptions::default(),
        )
        .unwrap();
        let catalog = Arc::new(SharedCatalog::from_pointee(catalog));
        Dispatcher::start(workers, &catalog, &PipelineMetrics::default(), 16 * 1024).unwrap()
    }

    fn partitions_per_shard(dispatch: &Dispatcher) -> Vec<Vec<i32>> {
        dispatch
            .shards()
            .map(|shard| {
                let mut partitions: Vec<i32> = shard.keys().copied().collect();
                partitions.sort_unstable();
                partitions
            })
            .collect()
    }

    #[test]
    fn any_assignment_spreads_over_the_workers() {
        let mut dispatch = dispatcher(2);
        // Even partitions only: a `partition % workers` placement would give worker 0 all of them.
        for partition in [0, 2, 4, 6, 8, 10] {
            dispatch.assign(partition, PartitionUsers::default());
        }
        let shards = partitions_per_shard(&dispatch);
        assert_eq!(shards.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3]);
        dispatch.revoke(0);
        dispatch.revoke(4);
        dispatch.revoke(8);
        dispatch.assign(12, PartitionUsers::default());
        let shards = partitions_per_shard(&dispatch);
        assert_eq!(shards.concat().len(), 4);
        assert!(shards.iter().all(|s| !s.is_empty()), "{shards:?}");
    }

    #[test]
    fn a_partition_assigned_twice_has_its_users_in_one_place() {
        let mut dispatch = dispatcher(3);
        for partition in 0..3 {
            dispatch.assign(partition, PartitionUsers::default());
        }
        let mut users = PartitionUsers::default();
        users.insert("fresh".into(), Default::default());
        dispatch.assign(1, users);
        let holding: Vec<usize> = dispatch
            .shards()
            .map(|shard| shard.get(&1).map_or(0, |users| users.len() + 1))
            .filter(|&held| held > 0)
            .collect();
        assert_eq!(
            holding,
            [2],
            "one shard holds partition 1, with the new users"
        );
    }

    #[test]
    fn without_workers_nothing_is_ever_waited_for() {
        let mut dispatch = dispatcher(0);
        assert_eq!(dispatch.poll_timeout(), Duration::from_millis(100));
        dispatch.send_pending().unwrap();
        assert!(dispatch.finished(true).unwrap().is_none());
        assert_eq!(partitions_per_shard(&dispatch).len(), 1);
    }
}
