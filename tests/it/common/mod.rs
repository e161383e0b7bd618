//! Shared helpers for the Kafka tests: real clients against real (mock or separate) brokers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod http;
pub mod process;

use geopromo::config::{Guarantee, KafkaSettings};
use geopromo::geofence::{parse_fences, IndexOptions, ParseOptions};
use geopromo::promo::{
    decode_gps_event, parse_promotions, Catalog, DecisionTime, EpochMs, RuleOptions, Scratch,
    SharedCatalog, UserState,
};
use geopromo::stream::{Processor, ProcessorReport, StreamError};
use geopromo::telemetry::PipelineMetrics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A 0.1° square near Jakarta with a 1 km tolerance, and a second square far away.
pub const FENCES: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","id":"square","properties":{"name":"Square","tolerance_m":1000},
  "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]]]}},
 {"type":"Feature","id":"far","properties":{"name":"Far"},
  "geometry":{"type":"Polygon","coordinates":[[[110.0,-7.1],[110.1,-7.1],[110.1,-7.0],[110.0,-7.0],[110.0,-7.1]]]}}]}"#;

pub const PROMOTIONS: &str = r#"{"promotions":[
 {"id":"square-promo","fences":["square"],"cooldown_s":3600},
 {"id":"far-promo","fences":["far"]}]}"#;

pub fn catalog(promotions: &str) -> Arc<SharedCatalog> {
    let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
        .unwrap()
        .fences;
    let promotions = parse_promotions(promotions.as_bytes()).unwrap();
    let catalog = Catalog::build(
        fences,
        promotions,
        RuleOptions::default(),
        IndexOptions::default(),
    )
    .unwrap();
    Arc::new(SharedCatalog::from_pointee(catalog))
}

pub fn settings(group: &str, guarantee: Guarantee) -> KafkaSettings {
    let mut settings = KafkaSettings {
        group_id: group.into(),
        guarantee,
        commit_interval_ms: 200,
        embedded_partitions: 3,
        transactional_id: Some(format!("{group}-tx")),
        // The mock cluster waits out a departed member's session before rebalancing; keep that short.
        consumer_properties: [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..KafkaSettings::default()
    };
    geopromo::stream::EmbeddedBroker::tune_client_settings(&mut settings);
    settings
}

/// A processor on its own thread.
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<ProcessorReport, StreamError>>,
    pub metrics: PipelineMetrics,
}

impl Running {
    pub fn start(settings: &KafkaSettings, brokers: &str, catalog: Arc<SharedCatalog>) -> Self {
        geopromo::telemetry::init_logging(&geopromo::config::LogSettings {
            filter: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            json: false,
        });
        let metrics = PipelineMetrics::default();
        let processor = Processor::new(settings.clone(), brokers, catalog, metrics.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = std::thread::spawn(move || processor.run(&thread_stop));
        Self {
            stop,
            handle,
            metrics,
        }
    }

    /// Waits until `consumed` input messages were processed (or panics after `timeout`).
    pub fn wait_consumed(&self, consumed: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.metrics.consumed.get() < consumed {
            assert!(
                Instant::now() < deadline,
                "processed {} of {consumed} within {timeout:?}",
                self.metrics.consumed.get()
            );
            assert!(!self.handle.is_finished(), "processor stopped early");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the group has committed every record of `settings.input_topic` (or panics after
    /// `timeout`): everything produced so far was processed and its outputs acknowledged. Unlike
    /// [`Self::wait_consumed`], records read twice (a replay after a lost assignment) do not count.
    pub fn wait_committed_to_end(
        &self,
        settings: &KafkaSettings,
        brokers: &str,
        timeout: Duration,
    ) {
        let reader = group_reader(brokers, &settings.group_id);
        let deadline = Instant::now() + timeout;
        loop {
            let behind =
                committed_behind(&reader, &settings.input_topic, settings.embedded_partitions);
            if behind
                .as_ref()
                .is_ok_and(|behind| behind.iter().all(|&(_, records)| records == 0))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "committed offsets still behind the input's ends after {timeout:?}: {behind:?}"
            );
            assert!(!self.handle.is_finished(), "processor stopped early");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(self) -> ProcessorReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap().unwrap()
    }

    /// Waits for the processor to stop by itself (or panics after `timeout`) and returns how it ended.
    pub fn wait_stopped(self, timeout: Duration) -> Result<ProcessorReport, StreamError> {
        let deadline = Instant::now() + timeout;
        while !self.handle.is_finished() {
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?} ({} consumed)",
                self.metrics.consumed.get()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.handle.join().unwrap()
    }
}

/// A client that reads `group`'s committed offsets without joining it.
pub fn group_reader(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap()
}

/// Per partition of `topic` (`0..partitions`), how far the reader's group's committed offset is behind
/// the partition's end, as the broker has them (the ground truth the lag metric is computed from).
pub fn committed_behind(
    reader: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> KafkaResult<Vec<(i32, i64)>> {
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = reader.committed_offsets(list, Duration::from_secs(10))?;
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, end) =
                reader.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
            let at = e.offset().to_raw().unwrap_or(0).max(0);
            Ok((e.partition(), end - at))
        })
        .collect()
}

pub fn producer(brokers: &str) -> BaseProducer {
    producer_with(brokers, &[])
}

/// A producer with `extra` client settings on top of the tests' defaults.
pub fn producer_with(brokers: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .set("message.timeout.ms", "60000");
    for (name, value) in extra {
        config.set(*name, *value);
    }
    config.create().unwrap()
}

/// Produces keyed payloads in order and waits for all acknowledgements.
pub fn produce(brokers: &str, topic: &str, events: &[(String, Vec<u8>)]) {
    produce_with(brokers, topic, events, &[]);
}

/// [`produce`] through a producer with `extra` client settings (a compression codec, say).
pub fn produce_with(
    brokers: &str,
    topic: &str,
    events: &[(String, Vec<u8>)],
    extra: &[(&str, &str)],
) {
    let producer = producer_with(brokers, extra);
    for (key, payload) in events {
        let record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(payload.as_slice());
        geopromo::stream::output::send_with_backpressure(&producer, record).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// One consumed message, owned.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived and nothing more came for `quiet`,
/// or `timeout` passed.
pub fn consume(
    brokers: &str,
    topic: &str,
    expected: usize,
    read_committed: bool,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let deadline = Instant::now() + timeout;
    let mut last_message = Instant::now();
    let mut received = Vec::new();
    while Instant::now() < deadline {
        if received.len() >= expected && last_message.elapsed() >= quiet {
            break;
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => {
                last_message = Instant::now();
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|header| {
                                (
                                    header.key.to_owned(),
                                    String::from_utf8_lossy(header.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                received.push(Received {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(error)) => eprintln!("reader: {error}"),
            None => {}
        }
    }
    received
}

/// A GPS event payload.
pub fn gps(user: &str, lat: f64, lon: f64, ts_ms: i64) -> (String, Vec<u8>) {
    (
        user.to_owned(),
        format!(r#"{{"user_id":"{user}","lat":{lat},"lon":{lon},"ts":{ts_ms}}}"#).into_bytes(),
    )
}

/// What the processor must emit for `events`, computed with the pure core alone (the reference model):
/// event ids in the order decided.
pub fn expected_event_ids(
    catalog: &Catalog,
    events: &[(String, Vec<u8>)],
    now_ms: i64,
) -> Vec<String> {
    let mut users: HashMap<String, UserState> = HashMap::new();
    let mut scratch = Scratch::default();
    let mut ids = Vec::new();
    for (key, payload) in events {
        let Ok(event) = decode_gps_event(Some(key.as_bytes()), payload, 16 * 1024) else {
            continue;
        };
        let state = users.entry(event.user_id.to_string()).or_default();
        let mut outputs = Vec::new();
        let time = DecisionTime::at(EpochMs::from_millis(now_ms));
        catalog.decide(state, &event, time, &mut scratch, &mut outputs);
        ids.extend(outputs.into_iter().map(|o| o.event_id));
    }
    ids
}

/// Ids of received eligibility events, with how often each arrived.
pub fn id_counts(received: &[Received]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in received {
        let id = message.json()["event_id"].as_str().unwrap().to_owned();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Simulated, realistic traffic around the test fences: `count` events from `users` users, one second of
/// event time apart, starting a day ago.
pub fn traffic(
    users: usize,
    count: usize,
    bad_ratio: f64,
    seed: u64,
) -> (Vec<(String, Vec<u8>)>, i64) {
    let fences = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
        .unwrap()
        .fences;
    let mut model =
        geopromo::stream::simulate::TrafficModel::new(&fences[..1], users, bad_ratio, seed);
    let start = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let mut payload = Vec::new();
    let events = (0..count)
        .map(|i| {
            let (key, _) = model.next_event(start + i as i64 * 1000, &mut payload);
            (key.to_owned(), payload.clone())
        })
        .collect();
    (events, start)
}

/// A new, empty PostgreSQL database on the local server (127.0.0.1:5432, user postgres, trust auth).
pub async fn fresh_postgres_url(prefix: &str) -> String {
    use sqlx::Connection;
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("the test suite needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust); .ci/test starts it");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// Kills the child when dropped, so a failing test leaves no processes behind.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config directory for a `geopromo process` subprocess on `brokers`, with the test fences and
/// `promotions`, its own SQLite file, and `extra_kafka` / `extra_consumer` lines appended to the `[kafka]`
/// and `[kafka.consumer_properties]` tables.
pub fn process_config(
    dir: &std::path::Path,
    brokers: &str,
    promotions: &str,
    extra_kafka: &str,
    extra_consumer: &str,
) -> std::path::PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("fences.geojson"), FENCES).unwrap();
    std::fs::write(config.join("promotions.json"), promotions).unwrap();
    std::fs::write(
        config.join("base.toml"),
        format!(
            "[fences]\npath = \"{fences}\"\n[promotions]\npath = \"{promotions}\"\n\
             [kafka]\nbrokers = \"{brokers}\"\n{commit}{extra_kafka}\n\
             [kafka.consumer_properties]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n{extra_consumer}\n\
             [metrics]\nlisten = \"\"\n[api]\nlisten = \"\"\n\
             [database]\nurl = \"sqlite://{database}\"\n",
            fences = config.join("fences.geojson").display(),
            promotions = config.join("promotions.json").display(),
            database = dir.join("geopromo.sqlite").display(),
            commit = if extra_kafka.contains("commit_interval_ms") {
                ""
            } else {
                "commit_interval_ms = 200\n"
            },
        ),
    )
    .unwrap();
    config
}

/// `geopromo process` as a subprocess, logging to `log` (appended).
pub fn start_processor(config_dir: &std::path::Path, log: &std::path::Path) -> Guard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Guard(
        std::process::Command::new(env!("CARGO_BIN_EXE_geopromo"))
            .args(["process", "--config-dir"])
            .arg(config_dir)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A TCP proxy in front of a real server (here: the local PostgreSQL) that a test can take down and
/// bring back, to play a database outage without touching the shared server.
pub struct Outage {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Outage {
    pub fn start(target: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accept_up, accept_open, target) = (up.clone(), open.clone(), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !accept_up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mut list = accept_open.lock().unwrap();
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        list.push(clone);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, up, open }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
