//! Live eligibility events for the API: a bounded, resumable window of the output topic, fanned out to
//! many readers (`GET /v1/events/stream`), with per-fence and per-promotion counts of the last hour.
//!
//! No I/O here: the Kafka feed (`stream::feed`) pushes records in with their partition and offset, the
//! API reads. Each event's id is the feed's *position* after it — the next offset of every partition —
//! so a reader resumes exactly (no gap, no repeat) from any API instance reading the same topic, as long
//! as the position is still inside the retained window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::promo::{EligibilityEvent, TransitionKind};

/// Next offset to read, per partition (index = partition). Written as offsets joined by `.`, e.g.
/// `120.0.98`: short enough for an SSE `id:` line with dozens of partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPosition(Vec<i64>);

/// Why a `Last-Event-ID` is not a feed position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Last-Event-ID {given:?} is not a geopromo event id: expected offsets joined by '.', e.g. \"12.0.7\" ({reason})")]
pub struct PositionError {
    pub given: String,
    pub reason: &'static str,
}

/// Partitions beyond this in a client-supplied position are refused (a bound on what a header may cost).
const MAX_POSITION_PARTITIONS: usize = 4096;

impl std::str::FromStr for FeedPosition {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| PositionError {
            given: text.chars().take(64).collect(),
            reason,
        };
        if text.is_empty() {
            return Err(error("empty"));
        }
        let offsets = text
            .split('.')
            .map(|part| match part.parse::<i64>() {
                Ok(offset) if offset >= 0 => Ok(offset),
                _ => Err(error("each offset must be a non-negative integer")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if offsets.len() > MAX_POSITION_PARTITIONS {
            return Err(error("too many partitions"));
        }
        Ok(Self(offsets))
    }
}

impl fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, offset) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{offset}")?;
        }
        Ok(())
    }
}

impl FeedPosition {
    /// Next offset of `partition` (0 when the position has not seen it: everything is after it).
    #[must_use]
    pub fn next_offset(&self, partition: i32) -> i64 {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.0.get(p))
            .copied()
            .unwrap_or(0)
    }

    /// Whether the record at `partition`/`offset` is already behind this position.
    #[must_use]
    pub fn covers(&self, partition: i32, offset: i64) -> bool {
        offset < self.next_offset(partition)
    }

    fn advance(&mut self, partition: i32, offset: i64) {
        let Ok(p) = usize::try_from(partition) else {
            return;
        };
        if self.0.len() <= p {
            self.0.resize(p + 1, 0);
        }
        self.0[p] = self.0[p].max(offset + 1);
    }
}

/// One output record, as the API streams it.
#[derive(Debug)]
pub struct LiveEvent {
    pub partition: i32,
    pub offset: i64,
    pub event: EligibilityEvent,
    /// The record's JSON as it was on the topic: streamed unchanged.
    pub json: String,
    /// The feed position after this record...
    pub position: FeedPosition,
    /// ...as its SSE id, formatted once for every reader.
    pub id: String,
}

/// What a reader wants to see.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this user's events (a mobile caller is always limited to their own).
    pub user_id: Option<String>,
    pub promotion_id: Option<String>,
    pub fence_id: Option<String>,
}

impl EventFilter {
    #[must_use]
    pub fn admits(&self, event: &EligibilityEvent) -> bool {
        self.user_id.as_deref().is_none_or(|u| u == event.user_id)
            && self
                .promotion_id
                .as_deref()
                .is_none_or(|p| p == event.promotion_id)
            && self.fence_id.as_deref().is_none_or(|f| f == event.fence_id)
    }
}

/// Limits of the hub; see `[api]` in the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Events kept for resumption and counts: at most this many...
    pub retained_events: usize,
    /// ...and none emitted longer ago than this.
    pub window_ms: i64,
    /// How far a reader may fall behind the newest event before it is dropped.
    pub reader_lag: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            retained_events: 50_000,
            window_ms: 3_600_000,
            reader_lag: 1024,
        }
    }
}

/// A reader's start: what it missed from the window, then the live feed.
pub struct Subscription {
    /// Retained events after the reader's position, oldest first.
    pub backlog: Vec<Arc<LiveEvent>>,
    /// Events pushed after the backlog was taken.
    pub live: broadcast::Receiver<Arc<LiveEvent>>,
    /// Set when the reader's position is older than the window: events between it and `backlog` are
    /// gone from this instance (they are still on the topic).
    pub gap: bool,
}

/// Counts for one fence or promotion over a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActivityCount {
    /// Fence or promotion id.
    pub id: String,
    pub enters: u64,
    pub exits: u64,
    /// Distinct users with an enter or an exit in the window.
    pub unique_users: u64,
}

#[derive(Debug, Default)]
struct MinuteBucket {
    minute: i64,
    enters: u64,
    exits: u64,
    users: HashSet<u64>,
}

/// Per-key counts in one-minute buckets over the window: memory is bounded by the window's events.
#[derive(Debug, Default)]
struct Activity {
    by_key: HashMap<String, VecDeque<MinuteBucket>>,
}

impl Activity {
    fn record(&mut self, key: &str, minute: i64, kind: TransitionKind, user: u64) {
        // Looked up before inserting: a key is allocated once, not per event.
        if !self.by_key.contains_key(key) {
            self.by_key.insert(key.to_owned(), VecDeque::new());
        }
        let Some(buckets) = self.by_key.get_mut(key) else {
            return;
        };
        // Events arrive nearly in time order; an older one joins the bucket of its minute if kept.
        let index = match buckets.iter().rposition(|b| b.minute <= minute) {
            Some(i) if buckets[i].minute == minute => i,
            Some(i) => {
                buckets.insert(
                    i + 1,
                    MinuteBucket {
                        minute,
                        ..MinuteBucket::default()
                    },
                );
                i + 1
            }
            None => {
                buckets.push_front(MinuteBucket {
                    minute,
                    ..MinuteBucket::default()
                });
                0
            }
        };
        let bucket = &mut buckets[index];
        match kind {
            TransitionKind::Enter => bucket.enters += 1,
            TransitionKind::Exit => bucket.exits += 1,
        }
        bucket.users.insert(user);
    }

    fn expire(&mut self, oldest_minute: i64) {
        self.by_key.retain(|_, buckets| {
            while buckets.front().is_some_and(|b| b.minute < oldest_minute) {
                buckets.pop_front();
            }
            !buckets.is_empty()
        });
    }

    fn counts(&self, since_minute: i64) -> Vec<ActivityCount> {
        let mut counts: Vec<ActivityCount> = self
            .by_key
            .iter()
            .filter_map(|(key, buckets)| {
                let recent = buckets.iter().filter(|b| b.minute >= since_minute);
                let mut users = HashSet::<u64>::new();
                let (mut enters, mut exits) = (0, 0);
                for bucket in recent {
                    enters += bucket.enters;
                    exits += bucket.exits;
                    users.extend(&bucket.users);
                }
                (enters + exits > 0).then(|| ActivityCount {
                    id: key.clone(),
                    enters,
                    exits,
                    unique_users: users.len() as u64,
                })
            })
            .collect();
        counts.sort_by(|a, b| (b.enters + b.exits, &a.id).cmp(&(a.enters + a.exits, &b.id)));
        counts
    }
}

#[derive(Debug, Default)]
struct HubState {
    retained: VecDeque<Arc<LiveEvent>>,
    position: FeedPosition,
    /// Per partition, the first offset this instance still holds (or started reading at): a reader
    /// behind it has missed events.
    floor: FeedPosition,
    by_fence: Activity,
    by_promotion: Activity,
    newest_minute: i64,
    /// Set once the feed has its partitions.
    reading: bool,
}

/// The fan-out point between the feed and the API's readers.
pub struct LiveHub {
    limits: HubLimits,
    state: Mutex<HubState>,
    sender: broadcast::Sender<Arc<LiveEvent>>,
}

impl fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveHub")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for LiveHub {
    fn default() -> Self {
        Self::new(HubLimits::default())
    }
}

const MINUTE_MS: i64 = 60_000;

impl LiveHub {
    #[must_use]
    pub fn new(limits: HubLimits) -> Self {
        let (sender, _) = broadcast::channel(limits.reader_lag.max(1));
        Self {
            limits,
            state: Mutex::new(HubState::default()),
            sender,
        }
    }

    #[must_use]
    pub fn limits(&self) -> HubLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves counts, not invariants, half-updated: keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the feed starts reading `partition`: readers behind it have a gap.
    pub fn start_partition(&self, partition: i32, offset: i64) {
        let mut state = self.lock();
        state.reading = true;
        if offset > 0 {
            state.floor.advance(partition, offset - 1);
            state.position.advance(partition, offset - 1);
        }
    }

    /// Adds one output record and hands it to every reader (once: a record seen again is ignored).
    pub fn push(&self, partition: i32, offset: i64, event: EligibilityEvent, json: String) {
        let mut state = self.lock();
        if state.position.covers(partition, offset) {
            return; // re-delivered after a feed restart
        }
        state.position.advance(partition, offset);
        let minute = event.emitted_at.as_millis().div_euclid(MINUTE_MS);
        let user = user_hash(&event.user_id);
        state
            .by_fence
            .record(&event.fence_id, minute, event.kind, user);
        state
            .by_promotion
            .record(&event.promotion_id, minute, event.kind, user);
        if minute > state.newest_minute {
            state.newest_minute = minute;
            let oldest = minute - self.limits.window_ms.div_euclid(MINUTE_MS);
            state.by_fence.expire(oldest);
            state.by_promotion.expire(oldest);
        }
        let live = Arc::new(LiveEvent {
            partition,
            offset,
            id: state.position.to_string(),
            position: state.position.clone(),
            event,
            json,
        });
        state.retained.push_back(live.clone());
        let oldest_kept_ms = live.event.emitted_at.as_millis() - self.limits.window_ms;
        while state.retained.len() > self.limits.retained_events
            || state
                .retained
                .front()
                .is_some_and(|e| e.event.emitted_at.as_millis() < oldest_kept_ms)
        {
            let Some(gone) = state.retained.pop_front() else {
                break;
            };
            state.floor.advance(gone.partition, gone.offset);
        }
        // Sent under the lock so that a subscriber sees each event once: in its backlog or live.
        let _ = self.sender.send(live);
    }

    /// Starts a reader after `after`: the retained events after it, then live ones; live ones only when
    /// `None`.
    #[must_use]
    pub fn subscribe(&self, after: Option<&FeedPosition>) -> Subscription {
        let state = self.lock();
        let live = self.sender.subscribe();
        let Some(after) = after else {
            return Subscription {
                backlog: Vec::new(),
                live,
                gap: false,
            };
        };
        let gap = state
            .floor
            .0
            .iter()
            .enumerate()
            .any(|(p, &floor)| after.next_offset(p as i32) < floor);
        let backlog = state
            .retained
            .iter()
            .filter(|e| !after.covers(e.partition, e.offset))
            .cloned()
            .collect();
        Subscription { backlog, live, gap }
    }

    /// The newest retained events passing `filter`, newest last (at most `limit`).
    #[must_use]
    pub fn recent(&self, filter: &EventFilter, limit: usize) -> Vec<Arc<LiveEvent>> {
        let state = self.lock();
        let mut recent: Vec<_> = state
            .retained
            .iter()
            .rev()
            .filter(|e| filter.admits(&e.event))
            .take(limit)
            .cloned()
            .collect();
        recent.reverse();
        recent
    }

    /// Whether a feed has started reading into this hub (readiness, and tests that must not race it).
    #[must_use]
    pub fn reading(&self) -> bool {
        self.lock().reading
    }

    /// The position after the newest event (the id a reader starting now would resume from).
    #[must_use]
    pub fn position(&self) -> FeedPosition {
        self.lock().position.clone()
    }

    /// Enters, exits and unique users per fence over the `minutes` before `now_ms`, busiest first.
    #[must_use]
    pub fn fence_activity(&self, now_ms: i64, minutes: i64) -> Vec<ActivityCount> {
        self.lock()
            .by_fence
            .counts(now_ms.div_euclid(MINUTE_MS) - minutes + 1)
    }

    /// As [`Self::fence_activity`], per promotion.
    #[must_use]
    pub fn promotion_activity(&self, now_ms: i64, minutes: i64) -> Vec<ActivityCount> {
        self.lock()
            .by_promotion
            .counts(now_ms.div_euclid(MINUTE_MS) - minutes + 1)
    }
}

/// Users are counted by a 64-bit hash: a collision undercounts by one in ~10^19 pairs.
fn user_hash(user: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    user.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promo::EpochMs;

    fn event(user: &str, kind: TransitionKind, fence: &str, emitted_ms: i64) -> EligibilityEvent {
        EligibilityEvent {
            schema_version: 1,
            event_id: format!("{user}-{emitted_ms}"),
            kind,
            user_id: user.into(),
            promotion_id: "coffee".into(),
            fence_id: fence.into(),
            fence_name: fence.into(),
            inside: true,
            distance_m: Some(0.0),
            lat: 0.0,
            lon: 0.0,
            event_ts: EpochMs::from_millis(emitted_ms),
            emitted_at: EpochMs::from_millis(emitted_ms),
            source_event_id: None,
        }
    }

    fn push(hub: &LiveHub, partition: i32, offset: i64, e: EligibilityEvent) {
        hub.push(partition, offset, e, String::new());
    }

    #[test]
    fn positions_round_trip_and_bad_ones_say_why() {
        let position: FeedPosition = "12.0.7".parse().unwrap();
        assert_eq!(position.to_string(), "12.0.7");
        assert!(position.covers(0, 11));
        assert!(!position.covers(0, 12));
        assert!(!position.covers(5, 0), "unseen partitions cover nothing");
        for bad in ["", "1..2", "a", "-1", "1.2.x"] {
            let error = bad.parse::<FeedPosition>().unwrap_err();
            assert!(
                error.to_string().contains("not a geopromo event id"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_reader_resumes_after_its_last_event_with_no_gap_and_no_repeat() {
        let hub = LiveHub::default();
        let t = 1_800_000_000_000;
        push(&hub, 0, 0, event("a", TransitionKind::Enter, "f", t));
        push(&hub, 1, 0, event("b", TransitionKind::Enter, "f", t));
        let after_two = hub.position();
        assert_eq!(after_two.to_string(), "1.1");
        push(&hub, 0, 1, event("a", TransitionKind::Exit, "f", t));
        let resumed = hub.subscribe(Some(&after_two));
        assert!(!resumed.gap);
        let users: Vec<_> = resumed
            .backlog
            .iter()
            .map(|e| (e.event.user_id.as_str(), e.id.as_str()))
            .collect();
        assert_eq!(users, [("a", "2.1")]);
        let mut live = resumed.live;
        push(&hub, 1, 1, event("b", TransitionKind::Exit, "f", t));
        assert_eq!(live.try_recv().unwrap().id, "2.2");
        // A record seen again (the feed restarted) is not handed out twice.
        push(&hub, 1, 1, event("b", TransitionKind::Exit, "f", t));
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn the_window_is_bounded_and_a_reader_behind_it_is_told() {
        let hub = LiveHub::new(HubLimits {
            retained_events: 3,
            ..HubLimits::default()
        });
        let t = 1_800_000_000_000;
        for offset in 0..5 {
            push(&hub, 0, offset, event("a", TransitionKind::Enter, "f", t));
        }
        let from_start = hub.subscribe(Some(&"0".parse().unwrap()));
        assert!(from_start.gap);
        assert_eq!(from_start.backlog.len(), 3);
        let recent = hub.subscribe(Some(&"3".parse().unwrap()));
        assert!(!recent.gap);
        assert_eq!(recent.backlog.len(), 2);
    }

    #[test]
    fn a_feed_that_starts_mid_topic_reports_older_positions_as_gaps() {
        let hub = LiveHub::default();
        hub.start_partition(0, 100);
        assert!(hub.subscribe(Some(&"50".parse().unwrap())).gap);
        assert!(!hub.subscribe(Some(&"100".parse().unwrap())).gap);
    }

    #[test]
    fn a_slow_reader_is_told_it_lagged_instead_of_buffering_without_bound() {
        let hub = LiveHub::new(HubLimits {
            reader_lag: 4,
            ..HubLimits::default()
        });
        let mut reader = hub.subscribe(None).live;
        for offset in 0..10 {
            push(
                &hub,
                0,
                offset,
                event("a", TransitionKind::Enter, "f", 1_800_000_000_000),
            );
        }
        assert!(matches!(
            reader.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
    }

    #[test]
    fn counts_cover_the_last_hour_per_fence_and_promotion() {
        let hub = LiveHub::default();
        let now = 1_800_000_000_000;
        push(
            &hub,
            0,
            0,
            event("old", TransitionKind::Enter, "f", now - 2 * 3_600_000),
        );
        push(
            &hub,
            0,
            1,
            event("a", TransitionKind::Enter, "f", now - 600_000),
        );
        push(
            &hub,
            0,
            2,
            event("a", TransitionKind::Exit, "f", now - 240_000),
        );
        push(&hub, 0, 3, event("b", TransitionKind::Enter, "f", now));
        push(&hub, 0, 4, event("c", TransitionKind::Enter, "g", now));
        let fences = hub.fence_activity(now, 60);
        assert_eq!(
            fences,
            [
                ActivityCount {
                    id: "f".into(),
                    enters: 2,
                    exits: 1,
                    unique_users: 2
                },
                ActivityCount {
                    id: "g".into(),
                    enters: 1,
                    exits: 0,
                    unique_users: 1
                },
            ]
        );
        let last_five = hub.fence_activity(now, 5);
        assert_eq!(last_five[0].enters + last_five[0].exits, 2);
        let promotions = hub.promotion_activity(now, 60);
        assert_eq!(promotions.len(), 1);
        assert_eq!((promotions[0].enters, promotions[0].unique_users), (3, 3));
    }

    #[test]
    fn filters_select_user_promotion_and_fence() {
        let e = event("a", TransitionKind::Enter, "f", 0);
        assert!(EventFilter::default().admits(&e));
        let only_b = EventFilter {
            user_id: Some("b".into()),
            ..EventFilter::default()
        };
        assert!(!only_b.admits(&e));
        let fence_f = EventFilter {
            fence_id: Some("f".into()),
            promotion_id: Some("coffee".into()),
            ..EventFilter::default()
        };
        assert!(fence_f.admits(&e));
    }
}
