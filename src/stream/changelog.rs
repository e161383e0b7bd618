//! Per-user state persisted Kafka-Streams style: a compacted topic partitioned like the input, one record
//! per user (key = user id).
//!
//! Every decision depends on the whole `UserState` (standings for the cooldown, `last_ts_ms` for the late
//! check), so each checkpoint writes the state of every user a point was applied to since the previous
//! checkpoint, before the input offsets are committed. Each record carries the input offset of the user's
//! newest applied point. On restore, records at or past the partition's committed input offset are
//! skipped: those inputs will be processed again, and the state must be the one that matches the committed
//! position. The replay then decides exactly as an uninterrupted run would.
//!
//! A user with nothing left is written as a record with empty standings, never as a tombstone: a tombstone
//! cannot carry the offset, so a restore could not tell whether it belongs before or after the committed
//! position (applying it whatever the position re-notified users after a crash). Compaction could remove
//! the older record a skipped one replaced, so the topic is meant to have `min.compaction.lag.ms` above the
//! commit interval (`geopromo` never needs it below a minute; the embedded broker never compacts).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use crate::config::KafkaSettings;
use crate::promo::UserState;
use crate::stream::client::{client_config, KafkaClient};
use crate::stream::error::StreamError;

/// Users of one partition.
/// Keyed by user id, hashed with foldhash (randomly seeded): SipHash, the standard map's, was 5% of the
/// processor thread's samples; Fx would let a client choose user ids that collide.
pub type PartitionUsers = HashMap<Box<str>, TrackedUser, foldhash::fast::RandomState>;

/// A user's state and whether the changelog has it yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackedUser {
    pub state: UserState,
    /// Input offset of the newest point applied since the state was last written to the changelog.
    pub unflushed_offset: Option<i64>,
}

impl TrackedUser {
    fn restored(state: UserState) -> Self {
        Self {
            state,
            unflushed_offset: None,
        }
    }
}

pub const STATE_RECORD_VERSION: u32 = 1;

#[derive(Deserialize)]
struct StateRecordIn {
    input_offset: i64,
    state: UserState,
}

/// Appends the JSON changelog value for `state` to `out`: the bytes serde writes for the record
/// `{v, input_offset, state}`, written directly. A checkpoint encodes one record per user a point was
/// applied to (100 k per second in `benches/pipeline.rs`), all on the consumer's thread while the
/// workers wait, and serde's map machinery was a quarter of that flush.
pub fn encode_state(out: &mut Vec<u8>, input_offset: i64, state: &UserState) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(digits.format(STATE_RECORD_VERSION).as_bytes());
    out.extend_from_slice(b",\"input_offset\":");
    out.extend_from_slice(digits.format(input_offset).as_bytes());
    out.extend_from_slice(b",\"state\":{\"last_ts_ms\":");
    out.extend_from_slice(digits.format(state.last_ts.as_millis()).as_bytes());
    out.extend_from_slice(b",\"standings\":[");
    for (index, standing) in state.standings.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"promotion_id\":");
        crate::text::write_json_string(out, &standing.promotion_id);
        out.extend_from_slice(b",\"fence_id\":");
        crate::text::write_json_string(out, &standing.fence_id);
        out.extend_from_slice(if standing.eligible {
            b",\"eligible\":true,\"last_enter_ms\":"
        } else {
            b",\"eligible\":false,\"last_enter_ms\":"
        });
        out.extend_from_slice(digits.format(standing.last_enter.as_millis()).as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}}");
}

/// The state and the input offset of one changelog value; `None` for a tombstone.
pub fn decode_state(payload: Option<&[u8]>) -> Result<Option<(i64, UserState)>, serde_json::Error> {
    let Some(payload) = payload else {
        return Ok(None);
    };
    let record: StateRecordIn = serde_json::from_slice(payload)?;
    Ok(Some((record.input_offset, record.state)))
}

/// The restore reader's client context: reaching a partition's end is how a restore knows it is done,
/// which librdkafka also reports as a client-wide error (logged at ERROR by rust-rdkafka's default).
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::error!(%error, reason, "librdkafka error while restoring state");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Reads the changelog partitions that mirror `partitions` (input partition, committed input offset or
/// `None` when nothing was ever committed) and rebuilds their users.
pub fn restore(
    settings: &KafkaSettings,
    brokers: &str,
    read_committed: bool,
    partitions: &[(i32, Option<i64>)],
    timeout: Duration,
) -> Result<HashMap<i32, PartitionUsers>, StreamError> {
    let mut restored: HashMap<i32, PartitionUsers> = partitions
        .iter()
        .map(|(p, _)| (*p, PartitionUsers::default()))
        .collect();
    let mut config = client_config(settings, brokers, KafkaClient::Consumer);
    config
        .set("group.id", format!("{}-restore", settings.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    let consumer: BaseConsumer<RestoreContext> = config
        .create_with_context(RestoreContext)
        .map_err(StreamError::Client)?;
    let topic = settings.state_topic.as_str();
    let mut tpl = TopicPartitionList::new();
    let mut end: HashMap<i32, i64> = HashMap::new();
    let mut cutoff: HashMap<i32, Option<i64>> = HashMap::new();
    for &(partition, committed) in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|source| StreamError::kafka("reading state changelog watermarks", source))?;
        if high > low && committed.is_some() {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|source| StreamError::kafka("assigning state changelog", source))?;
            end.insert(partition, high);
            cutoff.insert(partition, committed);
        }
    }
    if end.is_empty() {
        return Ok(restored);
    }
    consumer
        .assign(&tpl)
        .map_err(|source| StreamError::kafka("assigning state changelog", source))?;
    let deadline = Instant::now() + timeout;
    while !end.is_empty() {
        if Instant::now() > deadline {
            return Err(StreamError::Fatal(format!(
                "restoring state from {topic} took longer than {timeout:?}; partitions left: {:?}",
                end.keys().collect::<Vec<_>>()
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                end.remove(&partition);
            }
            Some(Err(source)) => {
                tracing::warn!(error = %source, "while restoring state");
            }
            Some(Ok(message)) => {
                let partition = message.partition();
                if message.offset() + 1 >= end.get(&partition).copied().unwrap_or(0) {
                    end.remove(&partition);
                }
                let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let users = restored.entry(partition).or_default();
                let Some(Some(committed)) = cutoff.get(&partition).copied() else {
                    continue;
                };
                match decode_state(message.payload()) {
                    Ok(Some((input_offset, _))) if input_offset >= committed => {}
                    Ok(Some((_, state))) => {
                        users.insert(key.into(), TrackedUser::restored(state));
                    }
                    Ok(None) => {
                        // Written by versions before 0.2 only; it carries no offset, so the best reading is
                        // the one those versions meant.
                        users.remove(key);
                    }
                    Err(error) => {
                        tracing::warn!(%error, partition, offset = message.offset(), "unreadable state record skipped");
                    }
                }
            }
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promo::{EpochMs, PromotionStanding};
    use proptest::prelude::*;
    use serde::Serialize;

    /// The record as serde writes it: what `encode_state` must write byte for byte.
    #[derive(Serialize)]
    struct StateRecordOut<'a> {
        v: u32,
        input_offset: i64,
        state: &'a UserState,
    }

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_-]{0,12}",
            // Everything serde escapes, and text it does not.
            Just("quo\"te".to_owned()),
            Just("back\\slash".to_owned()),
            Just("tab\tnew\nline\u{1}".to_owned()),
            Just("del\u{7f}/slash".to_owned()),
            Just("Zürich 東京 🚲".to_owned()),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn encoded_state_is_what_serde_writes(
            input_offset in any::<i64>(),
            last_ts in any::<i64>(),
            standings in proptest::collection::vec(
                (id(), id(), any::<bool>(), any::<i64>()),
                0..4,
            ),
        ) {
            let state = UserState {
                last_ts: EpochMs::from_millis(last_ts),
                standings: standings
                    .into_iter()
                    .map(|(promotion, fence, eligible, last_enter)| PromotionStanding {
                        promotion_id: promotion.into(),
                        fence_id: fence.into(),
                        eligible,
                        last_enter: EpochMs::from_millis(last_enter),
                    })
                    .collect(),
            };
            let mut encoded = Vec::new();
            encode_state(&mut encoded, input_offset, &state);
            let expected = serde_json::to_vec(&StateRecordOut {
                v: STATE_RECORD_VERSION,
                input_offset,
                state: &state,
            })
            .unwrap();
            prop_assert_eq!(&encoded, &expected);
            prop_assert_eq!(decode_state(Some(&encoded)).unwrap(), Some((input_offset, state)));
        }
    }

    #[test]
    fn state_round_trips() {
        let state = UserState {
            last_ts: EpochMs::from_millis(1_763_798_400_000),
            standings: vec![PromotionStanding {
                promotion_id: "p".into(),
                fence_id: "jakarta".into(),
                eligible: true,
                last_enter: EpochMs::from_millis(1_763_798_400_000),
            }],
        };
        let mut buf = Vec::new();
        encode_state(&mut buf, 42, &state);
        assert_eq!(decode_state(Some(&buf)).unwrap(), Some((42, state)));
        assert_eq!(decode_state(None).unwrap(), None);
        assert!(decode_state(Some(b"{")).is_err());
        // The record format predates the time newtype: times stay plain integers under their old names.
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(r#""last_ts_ms":1763798400000"#), "{text}");
        assert!(text.contains(r#""last_enter_ms":1763798400000"#), "{text}");
    }
}
