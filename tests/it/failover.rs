//! The fleet under failure, on what runs here: a 3-broker mock cluster (topics replicated 3 ways), two
//! `geopromo process` processes in one consumer group (cooperative-sticky, static membership) and two
//! `geopromo api` processes on one PostgreSQL. While a steady stream flows (through the APIs and straight
//! to the topic), the broker leading every partition goes down for 10 s (leadership moves to the others
//! after 2 s, as a KRaft controller would), then one processor is killed with SIGKILL and restarted.
//! Every eligibility event the reference model expects must arrive, none may be invented, and the
//! survivors' metrics must show the failover. The recovery times are printed for the closing notes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::process::{geopromo, get, post_json, Running};
use crate::common::{
    catalog, committed_behind, expected_event_ids, fresh_postgres_url, group_reader,
    process_config, traffic,
};

const TOPICS: [&str; 4] = [
    "gps-events",
    "promo-eligible",
    "gps-events.dlq",
    "geopromo.user-state",
];
const PARTITIONS: i32 = 6;
/// No cooldown, so users walking across the square's boundary enter and exit often: a dense output
/// stream whose gaps show when processing stalls.
const PROMOTIONS: &str = r#"{"promotions":[{"id":"square-promo","fences":["square"]}]}"#;

/// The `geopromo_*` value of `name` (summed over label sets) in a metrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics_address(process: &Running) -> SocketAddr {
    let log = process.wait_for("metrics at http://");
    let start = log.find("metrics at http://").unwrap() + "metrics at http://".len();
    let rest = &log[start..];
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

/// The cumulative count of a histogram's largest bucket whose bound is at most `bound`, in a metrics text.
fn bucket_at_most(text: &str, name: &str, bound: f64) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let le = &l[l.find("le=\"")? + 4..];
            let le: f64 = le[..le.find('"')?].parse().ok()?;
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            (le <= bound).then_some((le, count))
        })
        .fold((f64::NEG_INFINITY, 0.0), |best, b| {
            if b.0 > best.0 {
                b
            } else {
                best
            }
        })
        .1
}

/// `geopromo_consumer_lag` of the processor at `address` every 100 ms until `stop`.
fn sample_lag(address: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if std::net::TcpStream::connect(address).is_ok() {
                let text = get(address, "/metrics").1;
                samples.push(metric(&text, "geopromo_consumer_lag"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        samples
    })
}

/// The metrics text of a processor; a processor that stopped answering fails the test with its log.
fn scrape(process: &Running) -> String {
    let address = metrics_address(process);
    match std::net::TcpStream::connect(address) {
        Ok(_) => get(address, "/metrics").1,
        Err(error) => {
            let log = process.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "a processor stopped answering ({error}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
    }
}

/// Waits (up to `within`) until the group's committed offsets, as the broker has them, reach the input's
/// partition ends; returns how far behind each partition was at the last look, and how long it took. The
/// lag metric alone does not show it: until a partition's commit is known, its lag counts from the
/// position consumed, which can be at the end while the commit is still behind.
fn wait_committed_to_ends(brokers: &str, within: Duration) -> (Vec<(i32, i64)>, Duration) {
    let reader = group_reader(brokers, "geopromo");
    let started = Instant::now();
    loop {
        let behind = committed_behind(&reader, "gps-events", PARTITIONS).unwrap();
        if behind.iter().all(|&(_, records)| records == 0) || started.elapsed() >= within {
            return (behind, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits (up to `within`) until every processor's consumer lag is 0, then a moment more for the last
/// outputs to reach the reader; returns the smallest total lag seen.
fn wait_drained(processors: &[&Running], within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    let mut smallest = f64::INFINITY;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        let lag: f64 = processors
            .iter()
            .map(|process| metric(&scrape(process), "geopromo_consumer_lag"))
            .sum();
        smallest = smallest.min(lag);
        if lag == 0.0 {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    if smallest > 0.0 {
        for (i, process) in processors.iter().enumerate() {
            let text = scrape(process);
            let lags: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("geopromo_consumer_partition_lag{"))
                .collect();
            let progress: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("geopromo_last_checkpoint_timestamp_seconds")
                        || l.starts_with("geopromo_checkpoints_total")
                        || l.starts_with("geopromo_rewinds_total")
                        || l.starts_with("geopromo_delivery")
                })
                .collect();
            eprintln!(
                "processor {i} still lags: {lags:?}; {progress:?}; now {:?}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            );
        }
    }
    smallest
}

/// A working directory with the processors' settings on `brokers`, and a fresh PostgreSQL database.
fn fleet_setup(
    brokers: &str,
    database_prefix: &str,
) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(
        dir.path(),
        brokers,
        PROMOTIONS,
        "",
        "\"fetch.wait.max.ms\" = 5",
    );
    let database = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fresh_postgres_url(database_prefix));
    (dir, config, database)
}

/// `geopromo process` on the shared database, with static membership when `instance` is given.
fn start_processor(dir: &Path, config: &Path, database: &str, instance: Option<&str>) -> Running {
    Running::start(
        dir,
        &["process", "--config-dir", config.to_str().unwrap()],
        &[
            ("GEOPROMO__DATABASE__URL", database.to_owned()),
            (
                "GEOPROMO__KAFKA__INSTANCE_ID",
                instance.unwrap_or_default().to_owned(),
            ),
            ("GEOPROMO__METRICS__LISTEN", "127.0.0.1:0".to_owned()),
            // FAILOVER_LOGS=1 also shows every offset commit and its result.
            (
                "RUST_LOG",
                match std::env::var_os("FAILOVER_LOGS") {
                    Some(_) => "info,geopromo::stream=debug".to_owned(),
                    None => "info".to_owned(),
                },
            ),
        ],
    )
}

/// The partitions of every `partitions assigned` / `partitions revoked` line of a processor log.
fn partition_lines(log: &str, what: &str) -> Vec<Vec<i32>> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let list = &l[l.find("partitions=[")? + "partitions=[".len()..];
            let list = &list[..list.find(']')?];
            Some(
                list.split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect(),
            )
        })
        .collect()
}

/// Output records as they arrive downstream: (event id, arrival).
fn follow_output(
    brokers: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(String, Instant)>> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "failover-reader")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            // What the service's clients use (a downstream reader stalls on a silent broker alike).
            .set(
                "socket.timeout.ms",
                geopromo::stream::client::SOCKET_TIMEOUT_MS,
            )
            .create()
            .unwrap();
        consumer.subscribe(&["promo-eligible"]).unwrap();
        let mut arrived = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
                let event: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
                arrived.push((
                    event["event_id"].as_str().unwrap().to_owned(),
                    Instant::now(),
                ));
            }
        }
        arrived
    })
}

#[test]
fn a_broker_loss_and_a_killed_processor_lose_no_eligibility_event() {
    let cluster = MockCluster::new(3).unwrap();
    let brokers = cluster.bootstrap_servers();
    for topic in TOPICS {
        cluster.create_topic(topic, PARTITIONS, 3).unwrap();
        for partition in 0..PARTITIONS {
            cluster.partition_leader(topic, partition, Some(1)).unwrap();
        }
    }
    cluster
        .coordinator(MockCoordinator::Group("geopromo".into()), 3)
        .unwrap();
    cluster
        .coordinator(MockCoordinator::Group("failover-reader".into()), 3)
        .unwrap();

    let (dir, config, database) = fleet_setup(&brokers, "failover");

    // One processor first (it seeds the empty store), then the second member and the two APIs.
    let mut processor_a = start_processor(dir.path(), &config, &database, Some("processor-a"));
    processor_a.wait_for("partitions assigned");
    let processor_b = start_processor(dir.path(), &config, &database, Some("processor-b"));
    processor_b.wait_for("partitions assigned");
    let api_env = [("GEOPROMO__DATABASE__URL", database.clone())];
    let config_arg = config.to_str().unwrap();
    let apis: Vec<Running> = (0..2)
        .map(|_| Running::start(dir.path(), &["api", "--config-dir", config_arg], &api_env))
        .collect();
    let api_addresses: Vec<SocketAddr> = apis.iter().map(Running::api_address).collect();

    // The trace: users 0-3 post through the APIs, everyone else goes straight to the topic.
    let (events, _) = traffic(300, 9000, 0.0, 11);
    let expected = expected_event_ids(
        &catalog(PROMOTIONS).load(),
        &events,
        geopromo::promo::timestamp::now_ms(),
    );
    assert!(
        expected.len() > 100,
        "the trace produces eligibility events: {}",
        expected.len()
    );
    let api_users: Vec<String> = (0..4).map(|i| format!("user-{i:07}")).collect();
    let db_env = [("GEOPROMO__DATABASE__URL", database.clone())];
    for user in &api_users {
        let added = geopromo(
            dir.path(),
            &[
                "user",
                "add",
                user,
                "--role",
                "mobile",
                "--password-stdin",
                "--config-dir",
                config_arg,
            ],
            "a long enough password\n",
            &db_env,
        );
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    let mut args = vec!["session", "issue", "--config-dir", config_arg];
    args.extend(api_users.iter().map(String::as_str));
    let issued = geopromo(dir.path(), &args, "", &db_env);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let tokens: HashMap<String, String> = String::from_utf8_lossy(&issued.stdout)
        .lines()
        .map(|line| {
            let session: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                session["user_id"].as_str().unwrap().to_owned(),
                session["access_token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let (direct, via_api): (Vec<_>, Vec<_>) = events
        .iter()
        .cloned()
        .partition(|(key, _)| !tokens.contains_key(key));
    assert!(
        !via_api.is_empty(),
        "some of the trace goes through the API"
    );

    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = follow_output(brokers.clone(), stop_reading.clone());

    // A steady stream: about 400 events/s straight to the topic, and the API users' points one by one.
    let started = Instant::now();
    let producing = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("enable.idempotence", "true")
                .create()
                .unwrap();
            for chunk in direct.chunks(40) {
                for (key, payload) in chunk {
                    let mut record = BaseRecord::to("gps-events")
                        .key(key.as_str())
                        .payload(payload.as_slice());
                    while let Err((error, returned)) = producer.send(record) {
                        assert!(error.to_string().contains("Queue full"), "{error}");
                        producer.poll(Duration::from_millis(10));
                        record = returned;
                    }
                }
                producer.poll(Duration::from_millis(100));
            }
            producer.flush(Duration::from_secs(120)).unwrap();
        })
    };
    let posting = std::thread::spawn(move || {
        let mut refused = 0;
        for (i, (user, payload)) in via_api.iter().enumerate() {
            let point: serde_json::Value = serde_json::from_slice(payload).unwrap();
            let body =
                serde_json::json!({"lat": point["lat"], "lon": point["lon"], "ts": point["ts"],
                "accuracy_m": point["accuracy_m"], "event_id": point["event_id"]})
                .to_string();
            let bearer = format!("Bearer {}", tokens[user]);
            // A client retries what was not acknowledged; one API instance after the other.
            let mut attempt = 0;
            loop {
                let address = api_addresses[(i + attempt) % api_addresses.len()];
                let (status, answer) = post_json(
                    address,
                    "/v1/locations",
                    &[("Authorization", &bearer)],
                    &body,
                );
                if status == 202 {
                    break;
                }
                assert_eq!(status, 503, "{answer}");
                refused += 1;
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        refused
    });

    // Broker 1 leads every partition: take it down, move leadership after 2 s, bring it back after 10 s.
    std::thread::sleep(Duration::from_secs(5));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let lag_sampler = sample_lag(metrics_address(&processor_b), stop_sampling.clone());
    let broker_down_at = Instant::now();
    cluster.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for topic in TOPICS {
        for partition in 0..PARTITIONS {
            cluster
                .partition_leader(topic, partition, Some(2 + partition % 2))
                .unwrap();
        }
    }
    while broker_down_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.broker_up(1).unwrap();

    // Then kill one processor outright and bring it back after the survivor took its partitions.
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    processor_a.child.kill().unwrap();
    let _ = processor_a.child.wait();
    let assigned_before = processor_b.log().matches("partitions assigned").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while processor_b.log().matches("partitions assigned").count() == assigned_before {
        assert!(
            Instant::now() < deadline,
            "the survivor never took the killed member's partitions:\n{}",
            processor_b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let takeover = killed_at.elapsed();
    drop(processor_a);
    let processor_a = start_processor(dir.path(), &config, &database, Some("processor-a"));
    processor_a.wait_for("partitions assigned");

    producing.join().unwrap();
    let refused_posts = posting.join().unwrap();
    let stream_took = started.elapsed();

    // Everything expected arrives; wait for the stream to drain (the lag is sampled until then: the
    // survivor's statistics come every 5 s, and the drain takes at least one interval).
    let lag_end = wait_drained(&[&processor_b, &processor_a], Duration::from_secs(120));
    stop_sampling.store(true, Ordering::Relaxed);
    let lag_peak = lag_sampler.join().unwrap().into_iter().fold(0.0, f64::max);
    let (behind, committed_after) = wait_committed_to_ends(&brokers, Duration::from_secs(30));
    stop_reading.store(true, Ordering::Relaxed);
    let arrived = reader.join().unwrap();

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &arrived {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} expected events lost, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(counts.len(), expected.len(), "no invented events");
    let duplicates: usize = counts.values().map(|c| c - 1).sum();

    // Output flowing again: the first arrival after the broker went down; and the longest silence in the
    // output while the faults were on (the stream is dense enough that a gap means a stall).
    let flowing_again = arrived
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > broker_down_at)
        .min()
        .map(|at| at - broker_down_at);
    let mut times: Vec<Instant> = arrived.iter().map(|(_, at)| *at).collect();
    times.sort();
    let longest_silence = times
        .windows(2)
        .filter(|w| w[1] > broker_down_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let text = scrape(&processor_b);
    let rebalances = metric(&text, "geopromo_rebalances_total");
    let rewinds = metric(&text, "geopromo_rewinds_total");
    assert!(
        rebalances >= 1.0,
        "the survivor saw the group change:\n{text}"
    );
    // The stall shows where an operator looks: records that waited. (Not in `geopromo_consumer_lag`
    // reliably: librdkafka's end offsets come from fetches, so a partition that cannot be fetched keeps
    // its last lag, usually ~0, and the backlog is gone within a statistics interval once fetching
    // resumes. The samples are in the report.)
    let waited_over_4s = metric(&text, "geopromo_event_age_seconds_count")
        - bucket_at_most(&text, "geopromo_event_age_seconds_bucket", 4.1);
    assert!(
        waited_over_4s > 0.0,
        "the survivor's event age shows the records that waited during the failover:\n{text}"
    );
    // The requests in flight to the lost broker are given up after the clients' socket timeout (10 s),
    // not librdkafka's 60 s (or the next rebalance, whichever came first: 23-60 s before).
    let flowing_again = flowing_again.expect("output arrived after the broker went down");
    assert!(
        flowing_again < Duration::from_secs(20),
        "output flowing again {flowing_again:?} after the leaders' broker went down"
    );
    // And recovered: the group's committed offsets reach the partition ends once the stream stops (a
    // commit refused during the rebalance after the takeover used to leave them behind for good; a
    // processor sends it again once two statistics snapshots, 5 s apart, show it missing).
    assert!(
        behind.iter().all(|&(_, records)| records == 0),
        "committed offsets still behind the partition ends: {behind:?}"
    );
    assert_eq!(lag_end, 0.0, "the lag metric drained");
    eprintln!(
        "FAILOVER REPORT: {} events ({} via the API, {refused_posts} posts refused and retried) in {:.1} s; \
         {} eligibility events expected, all arrived, {duplicates} duplicates; output flowing again {:.1?} after \
         the leaders' broker went down, longest output silence after that {:.1} s; survivor took the killed member's partitions {:.1} s after SIGKILL; \
         survivor: {rebalances} rebalances, {rewinds} rewinds, {waited_over_4s} records processed over 4 s after \
         their timestamp, lag peak {lag_peak}, lag at the end {lag_end}; \
         committed offsets behind the partition ends at the end (partition, records): {behind:?}, \
         {committed_after:.1?} after the lag drained",
        events.len(),
        events.len() - direct_count(&events, &api_users),
        stream_took.as_secs_f64(),
        expected.len(),
        flowing_again,
        longest_silence.as_secs_f64(),
        takeover.as_secs_f64(),
    );
    if std::env::var_os("FAILOVER_LOGS").is_some() {
        for (name, log) in [("A", processor_a.log()), ("B", processor_b.log())] {
            for line in log
                .lines()
                .filter(|l| !l.contains(" INFO ") || l.contains("partitions"))
            {
                eprintln!("{name}: {line}");
            }
        }
    }
    drop(apis);
    drop(processor_a);
}

fn direct_count(events: &[(String, Vec<u8>)], api_users: &[String]) -> usize {
    events
        .iter()
        .filter(|(key, _)| !api_users.contains(key))
        .count()
}

/// A rolling restart of one instance under cooperative-sticky assignment: the other member never gives up
/// a partition it owned (only the leaving member's partitions move, and move back), and nothing is lost.
/// The pause of the restarted instance's partitions (SIGTERM to assigned again) is printed for the
/// closing notes. Dynamic membership here: librdkafka's mock cluster does not implement static membership
/// (KIP-345; a rejoining `group.instance.id` is a new member to it), so that is documented, not tested.
#[test]
fn a_rolling_restart_moves_only_the_restarted_members_partitions() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    for topic in TOPICS {
        cluster.create_topic(topic, PARTITIONS, 1).unwrap();
    }
    let (dir, config, database) = fleet_setup(&brokers, "rolling");
    let processor_a = start_processor(dir.path(), &config, &database, None);
    processor_a.wait_for("partitions assigned");
    let processor_b = start_processor(dir.path(), &config, &database, None);
    processor_b.wait_for("partitions assigned");
    // Both members settled: A gave half of its partitions to B.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processor_a.log().contains("partitions revoked") {
        assert!(
            Instant::now() < deadline,
            "A never shared its partitions:\n{}",
            processor_a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let owned_by_b = partition_lines(&processor_b.log(), "partitions assigned").concat();
    assert!(!owned_by_b.is_empty(), "{}", processor_b.log());

    let (events, _) = traffic(100, 3000, 0.0, 21);
    let expected = expected_event_ids(
        &catalog(PROMOTIONS).load(),
        &events,
        geopromo::promo::timestamp::now_ms(),
    );
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = follow_output(brokers.clone(), stop_reading.clone());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let (first, second) = events.split_at(events.len() / 2);
    for (key, payload) in first {
        producer
            .send(
                BaseRecord::to("gps-events")
                    .key(key.as_str())
                    .payload(payload.as_slice()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut processor_a = processor_a;
    let stopping = Instant::now();
    processor_a.signal("TERM");
    assert!(
        processor_a
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "{}",
        processor_a.log()
    );
    let restarted = start_processor(dir.path(), &config, &database, None);
    restarted.wait_for("partitions assigned");
    let pause = stopping.elapsed();
    for (key, payload) in second {
        producer
            .send(
                BaseRecord::to("gps-events")
                    .key(key.as_str())
                    .payload(payload.as_slice()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    wait_drained(&[&processor_b, &restarted], Duration::from_secs(60));
    stop_reading.store(true, Ordering::Relaxed);
    let arrived = reader.join().unwrap();
    let received: std::collections::HashSet<&str> =
        arrived.iter().map(|(id, _)| id.as_str()).collect();
    for id in &expected {
        assert!(
            received.contains(id.as_str()),
            "event {id} lost across the restart"
        );
    }
    assert_eq!(received.len(), expected.len(), "no invented events");
    for revoked in partition_lines(&processor_b.log(), "partitions revoked") {
        assert!(
            revoked.iter().all(|p| !owned_by_b.contains(p)),
            "the other member gave up {revoked:?}, partitions it owned before the restart ({owned_by_b:?}):\n{}",
            processor_b.log()
        );
    }
    eprintln!(
        "ROLLING RESTART REPORT: SIGTERM to the restarted instance's partitions assigned again: {:.2} s; \
         the other member kept its own partitions throughout; {} eligibility events, none lost",
        pause.as_secs_f64(),
        expected.len()
    );
}
