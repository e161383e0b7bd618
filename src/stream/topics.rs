//! The four topics the service needs, how they must be set up, and what is wrong with existing ones.
//! [`TopicPlan`] and [`problems`] are pure; [`create`] and [`describe`] talk to the brokers through
//! librdkafka's admin client.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaSettings;
use crate::stream::client::{client_config, KafkaClient};
use crate::stream::error::StreamError;

/// How long compacted state records are kept uncompacted. The processor restores a partition's users as of
/// its committed input offset, so an older value must survive until the newer one is behind a commit; an
/// hour covers any commit interval and a long outage of the committing instance.
pub const STATE_MIN_COMPACTION_LAG_MS: u64 = 3_600_000;

/// What the topics should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct TopicPlan {
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: Option<i32>,
}

/// One topic as it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    /// What the topic is for, in the report.
    pub role: &'static str,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Configuration entries the topic must have.
    pub config: BTreeMap<&'static str, String>,
}

impl TopicPlan {
    /// The four topics: input, output, dead letters and the state changelog, all with the same partition
    /// count (the state topic must mirror the input's partitions; the output and dead-letter topics are
    /// keyed by user like the input, so the same count keeps one user's records in one place).
    #[must_use]
    pub fn topics(&self, settings: &KafkaSettings) -> Vec<TopicSpec> {
        let mut base = BTreeMap::new();
        if let Some(min) = self.min_insync_replicas {
            base.insert("min.insync.replicas", min.to_string());
        }
        let mut state = base.clone();
        state.insert("cleanup.policy", "compact".into());
        state.insert(
            "min.compaction.lag.ms",
            STATE_MIN_COMPACTION_LAG_MS.to_string(),
        );
        [
            (&settings.input_topic, "GPS input", base.clone()),
            (&settings.output_topic, "eligibility output", base.clone()),
            (&settings.dlq_topic, "dead letters", base),
            (&settings.state_topic, "per-user state changelog", state),
        ]
        .into_iter()
        .map(|(name, role, config)| TopicSpec {
            name: name.clone(),
            role,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            config,
        })
        .collect()
    }
}

/// An existing topic as the brokers describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    /// The smallest replica count over the topic's partitions.
    pub replication_factor: i32,
    /// Its configuration, when the brokers answered DescribeConfigs.
    pub config: Option<BTreeMap<String, String>>,
}

/// Something wrong with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicProblem {
    pub topic: String,
    pub problem: String,
}

impl fmt::Display for TopicProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.topic, self.problem)
    }
}

/// What is wrong with the existing topics compared with `specs` (`None`: the topic does not exist).
/// The state topic needs at least the input's partition count; the others at least the planned one.
#[must_use]
pub fn problems(
    specs: &[TopicSpec],
    observed: &BTreeMap<String, ObservedTopic>,
) -> Vec<TopicProblem> {
    let mut found = Vec::new();
    let mut report = |topic: &str, problem: String| {
        found.push(TopicProblem {
            topic: topic.to_owned(),
            problem,
        });
    };
    let input_partitions = specs
        .first()
        .and_then(|input| observed.get(&input.name))
        .map(|input| input.partitions);
    for spec in specs {
        let Some(topic) = observed.get(&spec.name) else {
            report(&spec.name, format!("missing ({})", spec.role));
            continue;
        };
        if spec.config.contains_key("cleanup.policy") {
            // The changelog's partition i holds the state of input partition i.
            if let Some(input) = input_partitions {
                if topic.partitions < input {
                    report(
                        &spec.name,
                        format!(
                            "{} partitions, but the input topic has {input}: the state changelog needs one \
                             per input partition",
                            topic.partitions
                        ),
                    );
                }
            }
        } else if topic.partitions < spec.partitions {
            report(
                &spec.name,
                format!(
                    "{} partitions, fewer than the {} planned (at most that many processors share the work)",
                    topic.partitions, spec.partitions
                ),
            );
        }
        if topic.replication_factor < spec.replication_factor {
            report(
                &spec.name,
                format!(
                    "replication factor {}, below {}: losing a broker can lose acknowledged records",
                    topic.replication_factor, spec.replication_factor
                ),
            );
        }
        let Some(config) = &topic.config else {
            report(
                &spec.name,
                "the brokers did not describe its configuration; cleanup.policy and min.insync.replicas \
                 not checked"
                    .into(),
            );
            continue;
        };
        for (key, wanted) in &spec.config {
            let actual = config.get(*key).map(String::as_str);
            let acceptable = match *key {
                "cleanup.policy" => {
                    actual.is_some_and(|a| a.split(',').any(|p| p.trim() == "compact"))
                }
                // At least the wanted value: more is stricter, not wrong.
                "min.insync.replicas" | "min.compaction.lag.ms" => actual
                    .and_then(|a| a.parse::<u64>().ok())
                    .zip(wanted.parse::<u64>().ok())
                    .is_some_and(|(a, w)| a >= w),
                _ => actual == Some(wanted.as_str()),
            };
            if !acceptable {
                report(
                    &spec.name,
                    format!(
                        "{key} is {}, should be {wanted}{}",
                        actual.unwrap_or("unset"),
                        why(key)
                    ),
                );
            }
        }
    }
    if let Some(min) = specs
        .first()
        .and_then(|s| s.config.get("min.insync.replicas"))
        .and_then(|m| m.parse::<i32>().ok())
    {
        if let Some(spec) = specs.first() {
            if spec.replication_factor > 1 && min >= spec.replication_factor {
                report(
                    "plan",
                    format!(
                        "min.insync.replicas {min} with replication factor {}: one broker down stops every \
                         write; use at most replication factor - 1",
                        spec.replication_factor
                    ),
                );
            }
        }
    }
    found
}

fn why(key: &str) -> &'static str {
    match key {
        "cleanup.policy" => " (the state changelog keeps the newest record per user)",
        "min.compaction.lag.ms" => {
            " (a restore as of the committed offset needs the value before the newest)"
        }
        "min.insync.replicas" => " (an acknowledged record must be on more than one broker)",
        _ => "",
    }
}

fn admin(
    settings: &KafkaSettings,
    brokers: &str,
) -> Result<AdminClient<DefaultClientContext>, StreamError> {
    let config: ClientConfig = client_config(settings, brokers, KafkaClient::Producer);
    config.create().map_err(StreamError::Client)
}

/// Creates the topics of `specs` that do not exist; returns the names created.
pub async fn create(
    settings: &KafkaSettings,
    brokers: &str,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, StreamError> {
    let client = admin(settings, brokers)?;
    let configs: Vec<Vec<(&str, String)>> = specs
        .iter()
        .map(|s| s.config.iter().map(|(k, v)| (*k, v.clone())).collect())
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&configs)
        .map(|(spec, config)| {
            config.iter().fold(
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = client
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| StreamError::kafka("creating topics", source))?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(StreamError::Fatal(format!(
                    "cannot create topic {name}: {code}"
                )))
            }
        }
    }
    Ok(created)
}

/// The existing topics among `names`, with partitions, replication and (when the brokers answer)
/// configuration.
pub async fn describe(
    settings: &KafkaSettings,
    brokers: &str,
    names: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, ObservedTopic>, StreamError> {
    let client = admin(settings, brokers)?;
    let metadata = client
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| StreamError::Unreachable {
            brokers: brokers.to_owned(),
            source,
        })?;
    let mut observed = BTreeMap::new();
    for topic in metadata.topics() {
        if !names.contains(&topic.name())
            || topic.error().is_some()
            || topic.partitions().is_empty()
        {
            continue;
        }
        let replication_factor = topic
            .partitions()
            .iter()
            .map(|p| p.replicas().len() as i32)
            .min()
            .unwrap_or(0);
        observed.insert(
            topic.name().to_owned(),
            ObservedTopic {
                partitions: topic.partitions().len() as i32,
                replication_factor,
                config: None,
            },
        );
    }
    let resources: Vec<ResourceSpecifier<'_>> = observed
        .keys()
        .map(|name| ResourceSpecifier::Topic(name.as_str()))
        .collect();
    if resources.is_empty() {
        return Ok(observed);
    }
    let options = AdminOptions::new().request_timeout(Some(timeout));
    // A broker that does not implement DescribeConfigs leaves `config` unset: reported, not fatal.
    if let Ok(results) = client.describe_configs(&resources, &options).await {
        for resource in results.into_iter().flatten() {
            let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &resource.specifier else {
                continue;
            };
            let config = resource
                .entries
                .iter()
                .filter_map(|entry| Some((entry.name.clone(), entry.value.clone()?)))
                .collect();
            if let Some(topic) = observed.get_mut(name) {
                topic.config = Some(config);
            }
        }
    }
    Ok(observed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Vec<TopicSpec> {
        TopicPlan {
            partitions: 12,
            replication_factor: 3,
            min_insync_replicas: Some(2),
        }
        .topics(&KafkaSettings::default())
    }

    fn healthy(spec: &TopicSpec) -> ObservedTopic {
        ObservedTopic {
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            config: Some(
                spec.config
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn the_plan_compacts_only_the_state_topic_and_asks_for_two_in_sync_replicas() {
        let specs = plan();
        assert_eq!(specs.len(), 4);
        for spec in &specs {
            assert_eq!(spec.config["min.insync.replicas"], "2", "{}", spec.name);
            assert_eq!(spec.partitions, 12);
            let compacted = spec.config.contains_key("cleanup.policy");
            assert_eq!(
                compacted,
                spec.name == "geopromo.user-state",
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn topics_as_planned_have_no_problem() {
        let specs = plan();
        let observed = specs.iter().map(|s| (s.name.clone(), healthy(s))).collect();
        assert_eq!(problems(&specs, &observed), vec![]);
    }

    #[test]
    fn every_deviation_is_named_with_its_topic() {
        let specs = plan();
        let mut observed: BTreeMap<String, ObservedTopic> =
            specs.iter().map(|s| (s.name.clone(), healthy(s))).collect();
        observed.remove("gps-events.dlq");
        let state = observed.get_mut("geopromo.user-state").unwrap();
        state.partitions = 6;
        let config = state.config.as_mut().unwrap();
        config.insert("cleanup.policy".into(), "delete".into());
        config.insert("min.compaction.lag.ms".into(), "0".into());
        observed
            .get_mut("promo-eligible")
            .unwrap()
            .replication_factor = 1;
        let found: Vec<String> = problems(&specs, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        let expect = [
            "gps-events.dlq: missing",
            "geopromo.user-state: 6 partitions, but the input topic has 12",
            "geopromo.user-state: cleanup.policy is delete, should be compact",
            "geopromo.user-state: min.compaction.lag.ms is 0, should be 3600000",
            "promo-eligible: replication factor 1, below 3",
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for wanted in expect {
            assert!(
                found.iter().any(|f| f.starts_with(wanted)),
                "{wanted} in {found:#?}"
            );
        }
    }

    #[test]
    fn an_unreadable_configuration_is_reported_not_assumed_fine() {
        let specs = plan();
        let observed = specs
            .iter()
            .map(|s| {
                let mut topic = healthy(s);
                topic.config = None;
                (s.name.clone(), topic)
            })
            .collect();
        let found = problems(&specs, &observed);
        assert_eq!(found.len(), 4);
        assert!(found.iter().all(|p| p.problem.contains("not checked")));
    }

    #[test]
    fn a_min_insync_equal_to_the_replication_factor_is_refused() {
        let specs = TopicPlan {
            partitions: 3,
            replication_factor: 2,
            min_insync_replicas: Some(2),
        }
        .topics(&KafkaSettings::default());
        let observed = specs.iter().map(|s| (s.name.clone(), healthy(s))).collect();
        let found = problems(&specs, &observed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0]
            .problem
            .contains("one broker down stops every write"));
    }
}
