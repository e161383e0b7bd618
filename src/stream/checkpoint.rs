//! Where each assigned input partition stands, and which positions may be committed when. Pure
//! bookkeeping, no Kafka: the processor asks it what to commit and where to rewind, and tells it what
//! happened; committing goes through the small [`CommitOffsets`] trait.
//!
//! Positions are "next offset to read" (one past the last processed record), as Kafka commits them.
//! - `processed` moves a partition's position forward.
//! - At-least-once without stalling the loop: `stage` records the current positions together with the
//!   sequence number of the next record to be produced; `advance` commits the newest staged positions
//!   whose every earlier output is acknowledged. When the checkpoint's own state records are still to be
//!   produced, `stage_unsealed` takes the positions and `seal` gives that sequence number later;
//!   nothing staged after unsealed positions commits before them.
//! - `all_durable`: a synchronous checkpoint (or a committed transaction) made everything durable.
//! - A rewind goes back to the last durable positions and discards everything staged: staged positions
//!   cover outputs that may have failed, so committing them after the rewind would skip inputs.

use std::collections::{BTreeMap, VecDeque};

/// Commits input positions (partition, next offset). The processor's implementation commits through the
/// consumer; tests record the calls.
pub trait CommitOffsets {
    type Error;
    fn commit(&mut self, positions: &[(i32, i64)]) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PartitionPosition {
    /// One past the last processed record, once a record was processed since the last rewind.
    next: Option<i64>,
    /// Where a rewind goes: the last committed position, or the first offset seen before any commit.
    durable: Option<i64>,
    /// The group's committed offset as last seen behind `durable`: one sighting may be a snapshot taken
    /// while the commit was in flight; the same offset still behind in the next one means it was lost.
    behind_seen: Option<i64>,
}

/// Positions waiting for their outputs to be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Staged {
    /// Sequence number of the first record produced after these positions' records; `None` while their
    /// state records are still being produced (see [`Progress::stage_unsealed`]).
    bound: Option<u64>,
    positions: Vec<(i32, i64)>,
}

/// The checkpoint state machine of one consumer-group member.
#[derive(Debug, Default)]
pub struct Progress {
    partitions: BTreeMap<i32, PartitionPosition>,
    /// A record was processed since the last checkpoint.
    dirty: bool,
    staged: VecDeque<Staged>,
}

impl Progress {
    /// A partition was assigned; `committed` is the group's committed position for it, if any.
    pub fn assign(&mut self, partition: i32, committed: Option<i64>) {
        self.partitions.insert(
            partition,
            PartitionPosition {
                next: None,
                durable: committed,
                behind_seen: None,
            },
        );
    }

    /// A partition was revoked (after its final checkpoint) or lost.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        for staged in &mut self.staged {
            staged.positions.retain(|(p, _)| *p != partition);
        }
    }

    /// The assignment was lost: what was processed since the last checkpoint will be replayed by the next
    /// owner, so there is nothing left to commit.
    pub fn lose_uncommitted(&mut self) {
        self.dirty = false;
        self.staged.clear();
    }

    #[must_use]
    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// The offset the next record of `partition` should have (to notice the position jumping).
    #[must_use]
    pub fn expected(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .and_then(|p| p.next.or(p.durable))
    }

    /// Record `offset` of `partition` was processed.
    pub fn processed(&mut self, partition: i32, offset: i64) {
        if let Some(position) = self.partitions.get_mut(&partition) {
            position.next = Some(offset + 1);
            position.durable.get_or_insert(offset);
            self.dirty = true;
        }
    }

    /// A commit reported as sent failed later (asynchronous commits report inside `poll`): the next
    /// checkpoint commits the current positions again, even if no record arrives in between.
    pub fn commit_failed(&mut self) {
        if self.partitions.values().any(|p| p.next.is_some()) {
            self.dirty = true;
        }
    }

    /// The group's committed offsets as the client last saw them (librdkafka's statistics, one snapshot
    /// every `statistics.interval.ms`): where one is behind the position this member counts as durable in
    /// two snapshots in a row, with no commit landing in between, a commit it sent was lost (refused
    /// during a rebalance, say), and the next checkpoint commits again. Returns whether that happened.
    /// One snapshot alone proves nothing: it may have been taken while the commit was in flight (an
    /// asynchronous commit counts as durable once sent), or, at shutdown, before the final commit's
    /// acknowledgement and served after it.
    pub fn behind_durable(&mut self, committed: &[(i32, i64)]) -> bool {
        let mut behind = false;
        for &(partition, offset) in committed {
            let Some(position) = self.partitions.get_mut(&partition) else {
                continue;
            };
            let lags = position
                .durable
                .filter(|_| position.next.is_some())
                .is_some_and(|durable| durable > offset);
            if !lags {
                position.behind_seen = None;
            } else if position.behind_seen == Some(offset) {
                behind = true;
                // A new pair of sightings is needed before the next alarm: the commit now sent may land.
                position.behind_seen = None;
            } else {
                position.behind_seen = Some(offset);
            }
        }
        if behind {
            self.dirty = true;
        }
        behind
    }

    #[must_use]
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    #[must_use]
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// The positions to commit now: every partition that processed something since the last rewind.
    #[must_use]
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, position)| Some((*p, position.next?)))
            .collect()
    }

    /// Takes the current positions for a commit once every record with a sequence number below `bound`
    /// is acknowledged.
    pub fn stage(&mut self, bound: u64) {
        self.stage_unsealed();
        self.seal(bound);
    }

    /// Takes the current positions for a commit whose records are not all produced yet: nothing from
    /// here on commits until [`Self::seal`] gives the sequence number that follows the last of them.
    /// Lets a checkpoint encode its state records at once and produce them over the next loop turns.
    pub fn stage_unsealed(&mut self) {
        let positions = self.positions();
        self.staged.push_back(Staged {
            bound: None,
            positions,
        });
        self.dirty = false;
    }

    /// Every record of the newest staged positions is produced; `bound` is the next sequence number.
    /// Only the newest can be unsealed: a checkpoint produces what is left of the last one's records
    /// before it stages positions of its own.
    pub fn seal(&mut self, bound: u64) {
        if let Some(staged) = self.staged.back_mut().filter(|s| s.bound.is_none()) {
            staged.bound = Some(bound);
        }
    }

    /// Commits the newest staged positions whose outputs are all acknowledged (`acknowledged_below`: the
    /// lowest sequence number still in flight). Returns whether a commit happened. A failed commit (a
    /// rebalance in progress, a broker away) leaves the progress dirty, so the next checkpoint stages the
    /// positions again even if no record arrives in between: otherwise the last positions of a stream
    /// that went quiet would stay uncommitted, and a restart would replay them.
    pub fn advance<C: CommitOffsets>(
        &mut self,
        acknowledged_below: u64,
        committer: &mut C,
    ) -> Result<bool, C::Error> {
        let mut newest = None;
        while self
            .staged
            .front()
            .is_some_and(|s| s.bound.is_some_and(|bound| bound <= acknowledged_below))
        {
            newest = self.staged.pop_front();
        }
        let Some(ready) = newest else {
            return Ok(false);
        };
        if !ready.positions.is_empty() {
            if let Err(error) = committer.commit(&ready.positions) {
                self.dirty = true;
                return Err(error);
            }
        }
        for (partition, offset) in ready.positions {
            if let Some(position) = self.partitions.get_mut(&partition) {
                position.durable = Some(offset);
            }
        }
        Ok(true)
    }

    /// Everything processed so far is durable (a synchronous checkpoint, a committed transaction).
    pub fn all_durable(&mut self) {
        for position in self.partitions.values_mut() {
            if position.next.is_some() {
                position.durable = position.next;
            }
        }
        self.staged.clear();
        self.dirty = false;
    }

    /// Where each partition goes back to on a rewind (`None`: nothing committed or seen yet).
    #[must_use]
    pub fn rewind_targets(&self) -> Vec<(i32, Option<i64>)> {
        self.partitions
            .iter()
            .map(|(p, position)| (*p, position.durable))
            .collect()
    }

    /// The rewind happened: every partition reads again from its durable position.
    pub fn rewound(&mut self) {
        for position in self.partitions.values_mut() {
            position.next = None;
        }
        self.staged.clear();
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        commits: Vec<Vec<(i32, i64)>>,
        fail: bool,
    }

    impl CommitOffsets for Recorder {
        type Error = &'static str;
        fn commit(&mut self, positions: &[(i32, i64)]) -> Result<(), Self::Error> {
            if self.fail {
                return Err("broker said no");
            }
            self.commits.push(positions.to_vec());
            Ok(())
        }
    }

    #[test]
    fn staged_positions_commit_only_once_their_outputs_are_acknowledged() {
        let mut progress = Progress::default();
        progress.assign(0, Some(10));
        progress.assign(1, None);
        progress.processed(0, 10);
        progress.processed(1, 0);
        progress.stage(5);
        progress.processed(0, 11);
        progress.stage(9);
        let mut recorder = Recorder::default();
        assert_eq!(progress.advance(4, &mut recorder), Ok(false));
        assert!(recorder.commits.is_empty());
        // Records 0..5 acknowledged: the first staged positions, not the second.
        assert_eq!(progress.advance(5, &mut recorder), Ok(true));
        assert_eq!(recorder.commits, [vec![(0, 11), (1, 1)]]);
        assert_eq!(progress.rewind_targets(), [(0, Some(11)), (1, Some(1))]);
        // Everything acknowledged at once: only the newest is committed.
        progress.processed(0, 12);
        progress.stage(12);
        progress.processed(0, 13);
        progress.stage(14);
        assert_eq!(progress.advance(u64::MAX, &mut recorder), Ok(true));
        assert_eq!(recorder.commits.last().unwrap(), &vec![(0, 14), (1, 1)]);
        assert!(!progress.has_staged());
    }

    #[test]
    fn unsealed_positions_wait_for_their_seal_and_hold_back_later_ones() {
        let mut progress = Progress::default();
        progress.assign(0, Some(10));
        progress.assign(1, None);
        progress.processed(0, 10);
        progress.processed(1, 0);
        progress.stage_unsealed();
        assert!(!progress.is_dirty());
        progress.processed(0, 11);
        let mut recorder = Recorder::default();
        // Nothing in flight, but the state records of those positions are not all produced yet.
        assert_eq!(progress.advance(u64::MAX, &mut recorder), Ok(false));
        assert!(recorder.commits.is_empty());
        progress.seal(7);
        progress.stage(9);
        assert_eq!(progress.advance(6, &mut recorder), Ok(false));
        assert_eq!(progress.advance(7, &mut recorder), Ok(true));
        assert_eq!(recorder.commits, [vec![(0, 11), (1, 1)]]);
        // A revoked partition leaves unsealed positions too; a rewind drops them.
        progress.processed(0, 12);
        progress.stage_unsealed();
        progress.revoke(1);
        progress.seal(20);
        assert_eq!(progress.advance(20, &mut recorder), Ok(true));
        assert_eq!(recorder.commits.last().unwrap(), &vec![(0, 13)]);
        progress.processed(0, 13);
        progress.stage_unsealed();
        progress.rewound();
        assert!(!progress.has_staged());
    }

    #[test]
    fn a_rewind_goes_back_to_the_durable_positions_and_discards_what_was_staged() {
        let mut progress = Progress::default();
        progress.assign(0, Some(100));
        progress.processed(0, 100);
        progress.processed(0, 101);
        progress.stage(3);
        assert_eq!(progress.rewind_targets(), [(0, Some(100))]);
        progress.rewound();
        // The staged positions covered outputs that may have failed: never committed after a rewind.
        let mut recorder = Recorder::default();
        assert_eq!(progress.advance(u64::MAX, &mut recorder), Ok(false));
        assert!(recorder.commits.is_empty());
        assert_eq!(progress.expected(0), Some(100));
        assert!(progress.positions().is_empty());
    }

    #[test]
    fn before_any_commit_a_rewind_goes_to_the_first_offset_seen() {
        let mut progress = Progress::default();
        progress.assign(2, None);
        assert_eq!(progress.expected(2), None);
        progress.processed(2, 40);
        progress.processed(2, 41);
        assert_eq!(progress.rewind_targets(), [(2, Some(40))]);
        assert_eq!(progress.expected(2), Some(42));
    }

    #[test]
    fn a_synchronous_checkpoint_makes_everything_durable() {
        let mut progress = Progress::default();
        progress.assign(0, Some(5));
        progress.assign(1, Some(7));
        progress.processed(0, 5);
        progress.stage(1);
        progress.processed(0, 6);
        assert!(progress.is_dirty());
        progress.all_durable();
        assert!(!progress.is_dirty());
        assert!(!progress.has_staged());
        assert_eq!(progress.rewind_targets(), [(0, Some(7)), (1, Some(7))]);
    }

    #[test]
    fn a_revoked_partition_leaves_the_staged_commits_and_a_failed_commit_keeps_the_old_position() {
        let mut progress = Progress::default();
        progress.assign(0, Some(0));
        progress.assign(1, Some(0));
        progress.processed(0, 0);
        progress.processed(1, 0);
        progress.stage(2);
        progress.revoke(1);
        assert!(!progress.owns(1));
        let mut failing = Recorder {
            fail: true,
            ..Recorder::default()
        };
        assert_eq!(progress.advance(2, &mut failing), Err("broker said no"));
        assert_eq!(progress.rewind_targets(), [(0, Some(0))]);
        assert!(
            progress.is_dirty(),
            "the failed positions are staged again at the next checkpoint"
        );
        progress.processed(0, 1);
        progress.stage(3);
        let mut recorder = Recorder::default();
        assert_eq!(progress.advance(3, &mut recorder), Ok(true));
        assert_eq!(recorder.commits, [vec![(0, 2)]]);
    }

    fn recorder_ok() -> Recorder {
        Recorder::default()
    }

    #[test]
    fn a_failed_commit_is_retried_at_the_next_checkpoint_even_when_no_record_arrives() {
        let mut progress = Progress::default();
        progress.assign(0, Some(0));
        progress.processed(0, 0);
        progress.processed(0, 1);
        progress.stage(2);
        let mut failing = Recorder {
            fail: true,
            ..Recorder::default()
        };
        assert!(progress.advance(2, &mut failing).is_err());
        // No record since: the next checkpoint still has something to commit.
        assert!(progress.is_dirty());
        progress.stage(2);
        assert!(progress.advance(2, &mut recorder_ok()).is_ok());
        assert!(!progress.is_dirty());
        // A commit that was sent fine but failed later, as asynchronous ones report, is retried too.
        progress.commit_failed();
        assert!(progress.is_dirty());
        progress.stage(2);
        let mut recorder = Recorder::default();
        assert_eq!(progress.advance(2, &mut recorder), Ok(true));
        assert_eq!(recorder.commits, [vec![(0, 2)]]);
        assert!(!progress.is_dirty());
    }

    #[test]
    fn a_commit_the_broker_never_got_is_sent_again() {
        let mut progress = Progress::default();
        progress.assign(3, Some(100));
        progress.processed(3, 100);
        progress.processed(3, 101);
        progress.stage(1);
        assert_eq!(progress.advance(1, &mut Recorder::default()), Ok(true));
        assert!(!progress.is_dirty());
        // The group still has 100, twice in a row: the commit of 102 was lost.
        assert!(!progress.behind_durable(&[(3, 100)]));
        assert!(!progress.is_dirty());
        assert!(progress.behind_durable(&[(3, 100)]));
        assert!(progress.is_dirty());
        progress.stage(1);
        let mut recorder = Recorder::default();
        assert_eq!(progress.advance(1, &mut recorder), Ok(true));
        assert_eq!(recorder.commits, [vec![(3, 102)]]);
        // Once the group has it, nothing more to do; partitions not owned are ignored.
        assert!(!progress.behind_durable(&[(3, 102), (7, 0)]));
        assert!(!progress.is_dirty());
    }

    #[test]
    fn a_snapshot_taken_while_the_commit_was_in_flight_is_not_a_lost_commit() {
        let mut progress = Progress::default();
        progress.assign(3, Some(100));
        progress.processed(3, 100);
        progress.stage(1);
        assert_eq!(progress.advance(1, &mut Recorder::default()), Ok(true));
        // Taken before the commit of 101 landed, then one taken after it.
        assert!(!progress.behind_durable(&[(3, 100)]));
        assert!(!progress.behind_durable(&[(3, 101)]));
        assert!(!progress.is_dirty());
        // Behind, but at a newer offset each time (commits landing, each a little late): not lost.
        progress.processed(3, 101);
        progress.processed(3, 102);
        progress.stage(2);
        assert_eq!(progress.advance(2, &mut Recorder::default()), Ok(true));
        assert!(!progress.behind_durable(&[(3, 101)]));
        progress.processed(3, 103);
        progress.stage(3);
        assert_eq!(progress.advance(3, &mut Recorder::default()), Ok(true));
        assert!(!progress.behind_durable(&[(3, 103)]));
        assert!(!progress.is_dirty());
    }

    #[test]
    fn a_partition_whose_commit_is_not_known_yet_is_committed_again() {
        let mut progress = Progress::default();
        progress.assign(4, None);
        // Nothing processed: nothing to commit, whatever the client knows.
        assert!(!progress.behind_durable(&[(4, -1)]));
        assert!(!progress.behind_durable(&[(4, -1)]));
        progress.processed(4, 0);
        progress.stage(1);
        assert_eq!(progress.advance(1, &mut Recorder::default()), Ok(true));
        assert!(!progress.behind_durable(&[(4, -1)]));
        assert!(progress.behind_durable(&[(4, -1)]));
        assert!(progress.is_dirty());
    }

    #[test]
    fn records_of_partitions_not_owned_are_not_progress() {
        let mut progress = Progress::default();
        progress.processed(9, 1);
        assert!(!progress.is_dirty());
        assert!(progress.positions().is_empty());
    }
}
