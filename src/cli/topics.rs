//! `geopromo topics create|check`: sets the four topics up the way the processor needs them, or says
//! what is wrong with existing ones.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{block_on, TopicsArgs};
use crate::app;
use crate::stream::topics::{self, TopicPlan};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates the missing topics (when `create`), then checks all four. Exit 0 when they are as planned,
/// 1 when something is wrong with them (each problem on stderr), 2 when the brokers cannot be asked.
pub(super) fn run_topics(
    config_dir: &Path,
    args: &TopicsArgs,
    create: bool,
) -> anyhow::Result<ExitCode> {
    let settings = app::settings_from(config_dir)?;
    let kafka = &settings.kafka;
    anyhow::ensure!(
        !kafka.brokers.is_empty(),
        "kafka.brokers is empty: `topics` works on a real cluster (set GEOPROMO__KAFKA__BROKERS)"
    );
    let specs = TopicPlan {
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        min_insync_replicas: args.min_insync_replicas,
    }
    .topics(kafka);
    block_on(async {
        if create {
            let created = topics::create(kafka, &kafka.brokers, &specs, ADMIN_TIMEOUT)
                .await
                .context("cannot create the topics")?;
            for name in &created {
                println!("created {name}");
            }
        }
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        // A topic just created can take a moment to appear in every broker's metadata.
        let mut observed = topics::describe(kafka, &kafka.brokers, &names, ADMIN_TIMEOUT).await?;
        for _ in 0..20 {
            if !create || observed.len() == specs.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            observed = topics::describe(kafka, &kafka.brokers, &names, ADMIN_TIMEOUT).await?;
        }
        let problems = topics::problems(&specs, &observed);
        for spec in &specs {
            if let Some(topic) = observed.get(&spec.name) {
                println!(
                    "{}: {} partitions, replication factor {} ({})",
                    spec.name, topic.partitions, topic.replication_factor, spec.role
                );
            }
        }
        if problems.is_empty() {
            println!("topics ok");
            return anyhow::Ok(ExitCode::SUCCESS);
        }
        for problem in &problems {
            eprintln!("TOPIC PROBLEM {problem}");
        }
        eprintln!(
            "{} problem(s); existing topics are not altered: fix them with kafka-configs.sh / \
             kafka-topics.sh (partitions can only grow, and the state topic must match the input)",
            problems.len()
        );
        anyhow::Ok(ExitCode::from(1))
    })?
}
