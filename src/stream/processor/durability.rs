//! Making progress durable: checkpoints (at-least-once staged behind acknowledgements, or one
//! transaction), rewinds to the last durable position after a failed delivery or an aborted transaction,
//! and the state restore when partitions are assigned. The bookkeeping itself is `stream::checkpoint`.

use std::collections::HashMap;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::Core;
use crate::config::Guarantee;
use crate::stream::changelog::{self, PartitionUsers};
use crate::stream::checkpoint::CommitOffsets;
use crate::stream::client::BROKER_TIMEOUT;
use crate::stream::error::StreamError;
use crate::stream::rebalance::PartitionHandler;

/// Commits through the group consumer.
struct GroupCommit<'a, C: ConsumerContext> {
    consumer: &'a BaseConsumer<C>,
    topic: &'a str,
    mode: CommitMode,
}

impl<C: ConsumerContext> CommitOffsets for GroupCommit<'_, C> {
    type Error = KafkaError;

    fn commit(&mut self, positions: &[(i32, i64)]) -> Result<(), KafkaError> {
        let mut offsets = TopicPartitionList::new();
        for &(partition, next) in positions {
            offsets.add_partition_offset(self.topic, partition, Offset::Offset(next))?;
        }
        let result = self.consumer.commit(&offsets, self.mode);
        tracing::debug!(?positions, mode = ?self.mode, ?result, "offset commit sent");
        result
    }
}

impl Core {
    /// Makes everything processed so far durable, or rewinds to the last durable point.
    pub(super) fn checkpoint<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mode: CommitMode,
    ) -> Result<(), StreamError> {
        // Timed from here: flushing the state changelog is part of what a checkpoint costs the loop.
        if self.diverged {
            return Err(StreamError::Fatal(
                "not checkpointing: users were decided past records that were never produced"
                    .into(),
            ));
        }
        let started = Instant::now();
        self.last_checkpoint = started;
        // The users are flushed as of the positions committed: every record handed over is applied first.
        self.apply_finished(true)?;
        // The previous checkpoint's state records not produced yet go first: a user's stay in order.
        self.write_states(usize::MAX)?;
        if self.progress.is_dirty() {
            self.encode_states();
        }
        let deferred =
            self.settings.guarantee == Guarantee::AtLeastOnce && matches!(mode, CommitMode::Async);
        if !deferred {
            self.write_states(usize::MAX)?;
        }
        self.metrics.users_in_state.set(
            self.dispatch
                .shards()
                .map(|shard| shard.values().map(|users| users.len() as i64).sum::<i64>())
                .sum(),
        );
        self.producer.clear_doomed();
        let waiting = self.progress.has_staged() && matches!(mode, CommitMode::Sync);
        if !self.progress.is_dirty() && !waiting {
            return Ok(());
        }
        let mut commit = GroupCommit {
            consumer,
            topic: &self.settings.input_topic,
            mode,
        };
        match self.settings.guarantee {
            Guarantee::AtLeastOnce if matches!(mode, CommitMode::Async) => {
                // Commit these positions once their state records are produced (over the next loop
                // turns, see `write_states`) and everything produced until then is acknowledged,
                // without stalling the loop to wait for either (see `advance`).
                if self.states.is_empty() {
                    self.progress.stage(self.producer.next_sequence());
                } else {
                    self.progress.stage_unsealed();
                }
                self.metrics
                    .checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Guarantee::AtLeastOnce => {
                if self.producer.flush(BROKER_TIMEOUT)? > 0 {
                    tracing::warn!("deliveries failed; rewinding to the last checkpoint");
                    return self.rewind(consumer);
                }
                let positions = self.progress.positions();
                if !positions.is_empty() {
                    if let Err(error) = commit.commit(&positions) {
                        // The outputs are safe; the commit is retried at the next checkpoint.
                        tracing::warn!(%error, "offset commit failed");
                        return Ok(());
                    }
                }
            }
            Guarantee::ExactlyOnce => {
                let group = consumer.group_metadata().ok_or_else(|| {
                    StreamError::Fatal("the consumer has no group metadata".into())
                })?;
                let committed = self.producer.commit_transaction(
                    &self.settings.input_topic,
                    &self.progress.positions(),
                    &group,
                )?;
                if !committed {
                    tracing::warn!("transaction aborted; rewinding to the last checkpoint");
                    return self.rewind(consumer);
                }
            }
        }
        self.progress.all_durable();
        self.metrics.checkpointed();
        self.report.checkpoints += 1;
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Commits the staged at-least-once checkpoints whose outputs are all acknowledged; rewinds if a
    /// delivery failed. Cheap enough to call on every loop turn.
    pub(super) fn advance<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), StreamError> {
        let tracker = self.producer.tracker();
        if tracker.has_failures() {
            tracker.take_failures();
            tracing::warn!("deliveries failed; rewinding to the last checkpoint");
            return self.rewind(consumer);
        }
        let acknowledged_below = tracker.lowest_in_flight().unwrap_or(u64::MAX);
        let mut commit = GroupCommit {
            consumer,
            topic: &self.settings.input_topic,
            mode: CommitMode::Async,
        };
        match self.progress.advance(acknowledged_below, &mut commit) {
            Ok(false) => {}
            Ok(true) => {
                self.metrics.checkpointed();
                self.report.checkpoints += 1;
            }
            Err(error) => {
                tracing::warn!(%error, "offset commit failed; retried at the next checkpoint");
            }
        }
        Ok(())
    }

    /// Seeks every partition back to its last durable position and reloads its users from the changelog.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), StreamError> {
        self.metrics.rewinds.inc();
        // Records handed over after the last durable position are read again, and the users restored
        // as of it: state records of a later checkpoint not produced yet are moot.
        self.dispatch.discard()?;
        self.states.clear();
        let targets = self.progress.rewind_targets();
        let mut restored = self.restore(&targets)?;
        for &(partition, rewind_to) in &targets {
            if let Some(offset) = rewind_to {
                consumer
                    .seek(
                        &self.settings.input_topic,
                        partition,
                        Offset::Offset(offset),
                        BROKER_TIMEOUT,
                    )
                    .map_err(|source| {
                        StreamError::kafka("seeking back to the last checkpoint", source)
                    })?;
            }
            self.dispatch
                .replace_users(partition, restored.remove(&partition).unwrap_or_default());
        }
        self.progress.rewound();
        Ok(())
    }

    /// Users of `partitions` (partition, committed input offset) as of that offset, from the changelog.
    fn restore(
        &self,
        partitions: &[(i32, Option<i64>)],
    ) -> Result<HashMap<i32, PartitionUsers>, StreamError> {
        changelog::restore(
            &self.settings,
            &self.brokers,
            self.settings.guarantee == Guarantee::ExactlyOnce,
            partitions,
            BROKER_TIMEOUT,
        )
    }

    /// Restores the users of `assigned` as of their committed positions, and returns those positions.
    fn try_assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: &[i32],
    ) -> Result<Vec<(i32, Option<i64>)>, StreamError> {
        let mut query = TopicPartitionList::new();
        for &partition in assigned {
            query.add_partition(&self.settings.input_topic, partition);
        }
        let committed = consumer
            .committed_offsets(query, BROKER_TIMEOUT)
            .map_err(|source| StreamError::kafka("reading committed offsets", source))?;
        let targets: Vec<(i32, Option<i64>)> = committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect();
        let started = Instant::now();
        let mut restored = self.restore(&targets)?;
        let mut users_restored = 0;
        for &(partition, committed) in &targets {
            let users = restored.remove(&partition).unwrap_or_default();
            users_restored += users.len();
            self.dispatch.assign(partition, users);
            self.progress.assign(partition, committed);
        }
        self.metrics
            .state_restored_users
            .inc_by(users_restored as u64);
        tracing::info!(partitions = ?assigned, starts = ?targets, users_restored, elapsed = ?started.elapsed(), "partitions assigned");
        Ok(targets)
    }
}

impl PartitionHandler for Core {
    fn committed_seen(&mut self, committed: &[(i32, i64)]) {
        if !self.progress.behind_durable(committed) {
            return;
        }
        // -1: none known yet, as after every assignment until this member's first commit lands.
        if committed.iter().all(|&(_, offset)| offset < 0) {
            tracing::debug!(
                ?committed,
                "no committed offsets known for the assigned partitions yet; committing again"
            );
        } else {
            tracing::warn!(
                ?committed,
                "the group's committed offsets are behind what was committed; committing again"
            );
        }
    }

    /// Partitions are being revoked: checkpoint what they processed (unless the assignment is already
    /// lost, when the next owner replays it), then forget them.
    fn revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        revoked: &[i32],
        lost: bool,
    ) {
        if lost {
            tracing::warn!(partitions = ?revoked, "assignment lost; dropping uncommitted work");
            self.progress.lose_uncommitted();
            // Their next owner may already be writing these users' states: older ones written now
            // could land after its own.
            self.states.clear();
            if let Err(error) = self.dispatch.discard() {
                self.fatal.get_or_insert(error);
            }
        } else if let Err(error) = self.checkpoint(consumer, CommitMode::Sync) {
            if self.settings.guarantee == Guarantee::AtLeastOnce {
                // Outputs not acknowledged in time (a broker that hangs rather than fails): the revoked
                // partitions are not committed, and their next owner replays them from the last commit.
                // The partitions kept stay staged and commit once their outputs are acknowledged.
                tracing::warn!(error = %crate::error::error_chain(&error), partitions = ?revoked,
                    "checkpoint on revoke failed; the next owner replays these partitions from their last commit");
            } else {
                // The transaction's state is unknown: only a new producer (a restart) is safe.
                tracing::error!(%error, "checkpoint on revoke failed");
                self.fatal.get_or_insert(error);
            }
        }
        for &partition in revoked {
            self.progress.revoke(partition);
            self.dispatch.revoke(partition);
        }
        tracing::info!(partitions = ?revoked, "partitions revoked");
    }

    /// Partitions are being assigned: load their users from the changelog as of the committed
    /// positions, where fetching will start.
    fn assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: &[i32],
    ) -> Vec<(i32, Option<i64>)> {
        self.try_assign(consumer, assigned).unwrap_or_else(|error| {
            // The loop stops on the fatal error before any record of these partitions is decided.
            tracing::error!(%error, "restoring state for assigned partitions failed");
            self.fatal.get_or_insert(error);
            Vec::new()
        })
    }
}
