//! Against a real, separate broker process (tansu 0.6, SQLite storage): the processor runs as a
//! subprocess, is killed with SIGKILL mid-stream and restarted; every expected eligibility event must
//! arrive, and the only repeats allowed are at-least-once replays of the same event ids.

use crate::common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return path.into();
    }
    let candidates = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let home_bin = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin/tansu"));
    candidates
        .into_iter()
        .chain(home_bin)
        .find(|path| path.is_file())
        .expect("tansu is not installed: run `bash .ci/test` (it installs it) or `cargo install tansu --locked --features libsql`")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_tansu(dir: &Path) -> (Guard, String) {
    let (guard, brokers, url) = start_empty_tansu(dir);
    for topic in [
        "gps-events",
        "promo-eligible",
        "gps-events.dlq",
        "geopromo.user-state",
    ] {
        create_tansu_topic(&url, topic, 3);
    }
    (guard, brokers)
}

/// Creates `topic` on the tansu at `url` with tansu's own CLI.
fn create_tansu_topic(url: &str, topic: &str, partitions: u32) {
    let status = Command::new(tansu_binary())
        .args(["topic", "create", topic, "--broker", url, "--partitions"])
        .arg(partitions.to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cannot create topic {topic}");
}

/// tansu with no topics: (process, `host:port`, `tcp://host:port`).
fn start_empty_tansu(dir: &Path) -> (Guard, String, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
    let child = Command::new(tansu_binary())
        // tansu resolves the database path against its working directory.
        .current_dir(dir)
        .args(["broker", "--storage-engine", "sqlite://tansu.db"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot start tansu");
    let guard = Guard(child);
    let brokers = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&brokers).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {brokers}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, brokers, url)
}

/// Reads the output topic from the beginning, incrementally.
struct Reader(BaseConsumer);

impl Reader {
    fn new(brokers: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "tansu-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            list.add_partition_offset("promo-eligible", p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        Self(consumer)
    }

    fn read_for(&self, duration: Duration, into: &mut Vec<String>) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if let Some(Ok(message)) = self.0.poll(Duration::from_millis(50)) {
                let value: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                into.push(value["event_id"].as_str().unwrap().to_owned());
            }
        }
    }
}

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing_on_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (_tansu, brokers) = start_tansu(dir.path());

    let (events, _) = traffic(300, 9000, 0.005, 21);
    let catalog = catalog(PROMOTIONS);
    let expected = expected_event_ids(
        &catalog.load(),
        &events,
        geopromo::promo::timestamp::now_ms(),
    );
    let expected_set: HashSet<&String> = expected.iter().collect();
    // Events keep arriving while the processor runs (~1,500/s), so the SIGKILL lands mid-stream.
    let producing = {
        let (brokers, events) = (brokers.clone(), events.clone());
        std::thread::spawn(move || {
            for chunk in events.chunks(150) {
                produce(&brokers, "gps-events", chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let config = process_config(dir.path(), &brokers, PROMOTIONS, "", "");
    let log = dir.path().join("processor.log");

    let reader = Reader::new(&brokers);
    let mut received = Vec::new();
    let mut first = start_processor(&config, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < expected.len() / 3 {
        assert!(
            Instant::now() < deadline,
            "first run produced {} of {} events; log:\n{}",
            received.len(),
            expected.len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        reader.read_for(Duration::from_millis(100), &mut received);
    }
    first.0.kill().unwrap(); // SIGKILL: no checkpoint, no goodbye
    first.0.wait().unwrap();
    let at_kill = received.len();
    assert!(
        !producing.is_finished(),
        "the kill must land while events are still arriving"
    );

    let second = start_processor(&config, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let distinct: HashSet<&String> = received.iter().collect();
        if expected_set.iter().all(|id| distinct.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the restart {} of {} distinct events arrived; log:\n{}",
            distinct.len(),
            expected.len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        reader.read_for(Duration::from_millis(200), &mut received);
    }
    producing.join().unwrap();
    // Let the second run finish, then stop it the polite way and expect a clean exit.
    reader.read_for(Duration::from_secs(2), &mut received);
    let status = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut second = second;
    let exit = second.0.wait().unwrap();
    assert!(exit.success(), "SIGTERM must end in a clean exit: {exit:?}");

    for id in &received {
        assert!(expected_set.contains(id), "invented event {id}");
    }
    let duplicates = received.len() - expected.len();
    eprintln!(
        "{} expected events, {} received ({at_kill} before the SIGKILL), {duplicates} at-least-once repeats",
        expected.len(),
        received.len()
    );
}

/// Every dead-letter reason, an oversized event and an unkeyed one, produced by a real client to a real
/// broker process: each lands on the dead-letter topic with its reason and source coordinates, and the
/// good events after them still produce output from the same, still running, processor.
#[test]
fn every_dead_letter_reason_on_a_real_broker_and_the_processor_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_tansu, brokers) = start_tansu(dir.path());
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let raw = |key: &str, payload: String| (key.to_owned(), payload.into_bytes());
    // Over `kafka.max_event_bytes` (16 KiB), within what the broker accepts.
    let oversized = format!(
        r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0},"pad":"{}"}}"#,
        "x".repeat(100_000)
    );
    let bad = vec![
        raw("u", "{not json".into()),
        raw("u", r#"{"user_id":"u","lat":"north","lon":1}"#.into()),
        raw(
            "u",
            format!(r#"{{"user_id":"u","lat":95,"lon":1,"ts":{t0}}}"#),
        ),
        raw(
            "u",
            r#"{"user_id":"u","lat":1,"lon":1,"ts":1763798400}"#.into(),
        ),
        raw("u", String::new()),
        raw(
            "u",
            format!(r#"{{"user_id":"","lat":1,"lon":1,"ts":{t0}}}"#),
        ),
        raw(
            "u",
            format!(r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0},"accuracy_m":-1}}"#),
        ),
        raw("u", oversized),
        raw(
            "u",
            format!(r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0},"schema_version":9}}"#),
        ),
        raw(
            "v",
            format!(r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0}}}"#),
        ),
    ];
    produce(&brokers, "gps-events", &bad);
    let unkeyed = format!(r#"{{"user_id":"nokey","lat":-6.05,"lon":106.05,"ts":{t0}}}"#);
    let client = producer(&brokers);
    {
        use rdkafka::producer::Producer;
        client
            .send(rdkafka::producer::BaseRecord::<str, str>::to("gps-events").payload(&unkeyed))
            .map_err(|(e, _)| e)
            .unwrap();
        client.flush(Duration::from_secs(30)).unwrap();
    }

    let config = process_config(dir.path(), &brokers, PROMOTIONS, "", "");
    let log = dir.path().join("processor.log");
    let mut processor = start_processor(&config, &log);
    let good = vec![gps("a", -6.05, 106.05, t0), gps("b", -6.05, 106.05, t0)];
    produce(&brokers, "gps-events", &good);

    let dead = consume(
        &brokers,
        "gps-events.dlq",
        11,
        false,
        Duration::from_millis(1500),
        Duration::from_secs(60),
    );
    let output = consume(
        &brokers,
        "promo-eligible",
        2,
        false,
        Duration::from_millis(1500),
        Duration::from_secs(60),
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut reasons: Vec<&str> = dead
        .iter()
        .map(|m| m.headers["dlq.reason"].as_str())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "empty_payload",
            "invalid_accuracy",
            "invalid_position",
            "invalid_timestamp",
            "invalid_user_id",
            "key_mismatch",
            "malformed_json",
            "missing_key",
            "oversized",
            "schema_violation",
            "unsupported_schema_version"
        ],
        "{log_text}"
    );
    for message in &dead {
        assert_eq!(message.headers["dlq.source.topic"], "gps-events");
        let _: i64 = message.headers["dlq.source.offset"].parse().unwrap();
    }
    assert_eq!(
        output.len(),
        2,
        "good events after the bad ones: {log_text}"
    );
    assert!(
        processor.0.try_wait().unwrap().is_none(),
        "the processor is still running: {log_text}"
    );
}

/// `topics create` on an empty broker creates all four and they check out; `topics check` then names what
/// is wrong with topics someone else made badly, and exits 1.
#[test]
fn topics_create_sets_them_up_and_check_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (_tansu, brokers, _) = start_empty_tansu(dir.path());
    let env = [("GEOPROMO__KAFKA__BROKERS", brokers.clone())];
    let plan = [
        "--partitions",
        "4",
        "--replication-factor",
        "1",
        "--min-insync-replicas",
        "1",
    ];
    let mut args = vec!["topics", "create"];
    args.extend(plan);
    let created = crate::common::process::geopromo(dir.path(), &args, "", &env);
    let stdout = String::from_utf8_lossy(&created.stdout);
    let stderr = String::from_utf8_lossy(&created.stderr);
    for topic in [
        "gps-events",
        "promo-eligible",
        "gps-events.dlq",
        "geopromo.user-state",
    ] {
        assert!(
            stdout.contains(&format!("created {topic}")),
            "{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("{topic}: 4 partitions, replication factor 1")),
            "{stdout}\n{stderr}"
        );
    }
    // tansu keeps no topic configuration it can describe; what could not be checked is said, not assumed.
    let unchecked = stderr.matches("not checked").count();
    assert!(
        created.status.success() || unchecked == 4,
        "exit {:?}\n{stdout}\n{stderr}",
        created.status
    );

    // A second broker's worth of badly made topics: too few partitions for the state changelog.
    let dir2 = tempfile::tempdir().unwrap();
    let (_tansu2, brokers2, url2) = start_empty_tansu(dir2.path());
    for (topic, partitions) in [
        ("gps-events", 4),
        ("promo-eligible", 4),
        ("geopromo.user-state", 2),
    ] {
        create_tansu_topic(&url2, topic, partitions);
    }
    let mut args = vec!["topics", "check"];
    args.extend(plan);
    let checked = crate::common::process::geopromo(
        dir2.path(),
        &args,
        "",
        &[("GEOPROMO__KAFKA__BROKERS", brokers2)],
    );
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TOPIC PROBLEM gps-events.dlq: missing"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("TOPIC PROBLEM geopromo.user-state: 2 partitions, but the input topic has 4"),
        "{stderr}"
    );
}
