//! End-to-end pipeline benchmark through the embedded broker (librdkafka's mock cluster, in process):
//! produce simulated GPS traffic → consume → decode → match → rules → produce eligibility events.
//!
//! Not criterion: one run is millions of events through real Kafka clients, reported as a rate and as
//! latency percentiles. Modes:
//!
//! ```text
//! cargo bench --bench pipeline -- throughput [EVENTS] [USERS]     # default 10_000_000 100_000
//! cargo bench --bench pipeline -- backlog [EVENTS] [USERS]        # default 300_000 100_000
//! cargo bench --bench pipeline -- latency [RATE] [SECONDS]        # default 100_000 20
//! cargo bench --bench pipeline -- memory [USERS]                  # default 1_000_000
//! ```
//!
//! `PROCESSOR_THREADS=N` sets the number of evaluation workers (default: one per core beyond the first).
//!
//! `TRACE_RATIO=0.01` (or `1`) turns tracing on with that sampling ratio, exporting over OTLP/HTTP to a
//! sink inside the benchmark that accepts and discards every export: the cost of tracing, measured.
//!
//! `throughput` produces while the processor consumes, so the benchmark's own producer and the broker
//! share the two cores with the processor. `backlog` produces everything first (untimed) and then times
//! the processor draining it: what the node running the processor does when its broker is elsewhere
//! (the in-process broker still serves the fetches and takes the outputs on the same cores).
//!
//! The mock cluster keeps only a bounded tail of each partition, so the producer is held at most
//! `MAX_AHEAD` events in front of the processor (it produces while the processor consumes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use geopromo::config::{Guarantee, KafkaSettings, Settings};
use geopromo::promo::timestamp::now_ms;
use geopromo::promo::{
    decode_gps_event, Catalog, DecisionTime, EpochMs, Scratch, SharedCatalog, UserState,
};
use geopromo::stream::output::send_with_backpressure;
use geopromo::stream::simulate::TrafficModel;
use geopromo::stream::{EmbeddedBroker, Processor};
use geopromo::telemetry::{encode_metrics, PipelineMetrics};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const MAX_AHEAD: u64 = 300_000;
const PARTITIONS: i32 = 12;

// The allocator `geopromo` itself runs with (src/main.rs), so that the figures are the service's.
#[global_allocator]
static ALLOCATOR: geopromo::allocator::SplitAllocator = geopromo::allocator::SplitAllocator;

fn main() {
    geopromo::allocator::configure();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let number = |i: usize, default: u64| {
        args.get(i)
            .and_then(|a| a.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    let _tracing = std::env::var("TRACE_RATIO")
        .ok()
        .map(|ratio| start_tracing(&ratio));
    match args.first().map(String::as_str) {
        Some("latency") => latency(number(1, 100_000), number(2, 20)),
        Some("memory") => memory(number(1, 1_000_000) as usize),
        Some("backlog") => backlog(number(1, 300_000), number(2, 100_000) as usize),
        Some("throughput") | None => throughput(number(1, 10_000_000), number(2, 100_000) as usize),
        Some(other) => eprintln!("unknown mode {other}: throughput | backlog | latency | memory"),
    }
}

/// Tracing on at `ratio`, exporting to a sink that answers 200 to every export and keeps nothing.
fn start_tracing(ratio: &str) -> geopromo::otel::OtelGuard {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err()
                        || writer
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let settings = geopromo::config::OtelSettings {
        exporter_otlp_endpoint: format!("http://{address}"),
        traces_sampler: "parentbased_traceidratio".into(),
        traces_sampler_arg: Some(ratio.parse().expect("TRACE_RATIO is a number")),
        ..Default::default()
    };
    eprintln!("tracing on: ratio {ratio}, exporting to a discarding sink at {address}");
    geopromo::otel::init(&settings).unwrap().unwrap()
}

fn settings() -> Settings {
    let mut settings = Settings {
        kafka: KafkaSettings {
            guarantee: Guarantee::AtLeastOnce,
            embedded_partitions: PARTITIONS,
            group_id: "bench".into(),
            commit_interval_ms: std::env::var("COMMIT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000),
            processor_threads: std::env::var("PROCESSOR_THREADS")
                .ok()
                .and_then(|v| v.parse().ok()),
            ..KafkaSettings::default()
        },
        ..Settings::default()
    };
    EmbeddedBroker::tune_client_settings(&mut settings.kafka);
    settings
}

struct Pipeline {
    _broker: EmbeddedBroker,
    brokers: String,
    metrics: PipelineMetrics,
    stop: Arc<AtomicBool>,
    processor: std::thread::JoinHandle<()>,
    settings: Settings,
}

fn start_pipeline() -> Pipeline {
    let settings = settings();
    let broker = EmbeddedBroker::start(&settings.kafka, 1).unwrap();
    start_processor(settings, broker)
}

fn start_processor(settings: Settings, broker: EmbeddedBroker) -> Pipeline {
    let brokers = broker.bootstrap_servers().to_owned();
    let catalog = Arc::new(SharedCatalog::from_pointee(
        geopromo::app::load_catalog(&settings).unwrap(),
    ));
    let metrics = PipelineMetrics::default();
    let stop = Arc::new(AtomicBool::new(false));
    let processor = Processor::new(
        settings.kafka.clone(),
        brokers.clone(),
        catalog,
        metrics.clone(),
    );
    let thread_stop = stop.clone();
    let processor = std::thread::Builder::new()
        .name("processor".into())
        .spawn(move || {
            processor.run(&thread_stop).unwrap();
        })
        .unwrap();
    Pipeline {
        _broker: broker,
        brokers,
        metrics,
        stop,
        processor,
        settings,
    }
}

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        // The load generator stands in for fire-and-forget upstream producers (app gateways): a
        // delivery report for every accepted record was a third of its CPU, on the processor's cores.
        .set("delivery.report.only.error", "true")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8]) {
    let record = BaseRecord::to(topic).key(key).payload(payload);
    send_with_backpressure(producer, record).expect("produce failed");
}

fn throughput(events: u64, users: usize) {
    let pipeline = start_pipeline();
    let fences = geopromo::app::load_fence_file(&pipeline.settings).unwrap();
    let mut model = TrafficModel::new(&fences, users, 0.0005, 1);
    let producer = producer(&pipeline.brokers);
    let topic = pipeline.settings.kafka.input_topic.clone();
    let mut payload = Vec::with_capacity(256);
    let rss_before = rss_bytes();
    eprintln!("throughput: {events} events from {users} users, {PARTITIONS} partitions");
    let mut started: Option<Instant> = None;
    let mut ts = now_ms();
    for produced in 0..events {
        if produced % 1024 == 0 {
            ts = now_ms();
            producer.poll(Duration::ZERO);
            while produced.saturating_sub(pipeline.metrics.consumed.get()) > MAX_AHEAD {
                std::thread::sleep(Duration::from_micros(200));
            }
            if started.is_none() && pipeline.metrics.consumed.get() > 0 {
                started = Some(Instant::now());
            }
            if produced % 1_000_000 == 0 && produced > 0 {
                eprintln!(
                    "  {produced} produced, {} consumed",
                    pipeline.metrics.consumed.get()
                );
            }
        }
        let (key, _) = model.next_event(ts, &mut payload);
        send(&producer, &topic, key, &payload);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let consumed_at_start = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pipeline.metrics.consumed.get() < events && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    let consumed = pipeline.metrics.consumed.get() - consumed_at_start;
    let threads = thread_cpu_seconds();
    stop_and_report(pipeline, "consumed", (consumed, events), elapsed, &threads);
    println!(
        "  process RSS grew {:.0} MiB during the run (broker tail + state + client buffers)",
        (rss_bytes() as f64 - rss_before as f64) / 1_048_576.0
    );
}

fn backlog(events: u64, users: usize) {
    let settings = settings();
    let broker = EmbeddedBroker::start(&settings.kafka, 1).unwrap();
    let fences = geopromo::app::load_fence_file(&settings).unwrap();
    let mut model = TrafficModel::new(&fences, users, 0.0005, 1);
    let producer = producer(broker.bootstrap_servers());
    let topic = settings.kafka.input_topic.clone();
    let mut payload = Vec::with_capacity(256);
    // The mock cluster keeps about 5 MB of each partition: 300 k events of ~150 bytes over 12 partitions fit.
    eprintln!(
        "backlog: producing {events} events from {users} users into {PARTITIONS} partitions first"
    );
    let mut ts = now_ms();
    for produced in 0..events {
        if produced % 1024 == 0 {
            ts = now_ms();
            producer.poll(Duration::ZERO);
        }
        let (key, _) = model.next_event(ts, &mut payload);
        send(&producer, &topic, key, &payload);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    drop(producer);
    let cpu_before = thread_cpu_seconds();
    let pipeline = start_processor(settings, broker);
    // Timed from the first record consumed (the group join before it is not the processor's speed) to
    // the last; a drain that stops short (the mock cluster trimmed the oldest records) ends after 2 s
    // without progress, and the rate counts what was drained.
    let mut started = None;
    let (mut last_count, mut last_progress) = (0, Instant::now());
    let mut finished = Instant::now();
    loop {
        let consumed = pipeline.metrics.consumed.get();
        if consumed != last_count {
            (last_count, last_progress) = (consumed, Instant::now());
            finished = last_progress;
            started.get_or_insert(last_progress);
        }
        if consumed >= events
            || (started.is_some() && last_progress.elapsed() > Duration::from_secs(2))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.map_or(Duration::ZERO, |s| finished - s);
    let consumed = pipeline.metrics.consumed.get();
    let mut threads = thread_cpu_seconds();
    for (name, seconds) in &mut threads {
        *seconds -= cpu_before
            .iter()
            .find(|(before, _)| before == name)
            .map_or(0.0, |(_, s)| *s);
    }
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    stop_and_report(pipeline, "drained", (consumed, events), elapsed, &threads);
}

/// Stops the processor, then prints the rate, the sampled stage times and the CPU by thread.
fn stop_and_report(
    pipeline: Pipeline,
    verb: &str,
    (consumed, events): (u64, u64),
    elapsed: Duration,
    threads: &[(String, f64)],
) {
    let text = encode_metrics(&pipeline.metrics.registry());
    pipeline.stop.store(true, Ordering::Relaxed);
    pipeline.processor.join().unwrap();
    println!(
        "{verb} {consumed} of {events} in {:.2} s: {:.0} events/s (emitted {} enter, {} exit, {} dead letters)",
        elapsed.as_secs_f64(),
        consumed as f64 / elapsed.as_secs_f64(),
        pipeline.metrics.emitted_enter.get(),
        pipeline.metrics.emitted_exit.get(),
        pipeline.metrics.dead_lettered_total()
    );
    print_stages(&text);
    print_threads(threads, elapsed);
}

fn print_stages(metrics_text: &str) {
    for stage in ["decode", "match_and_rules", "produce"] {
        let sum = metric_value(
            metrics_text,
            &format!("geopromo_stage_seconds_sum{{stage=\"{stage}\"}}"),
        );
        let count = metric_value(
            metrics_text,
            &format!("geopromo_stage_seconds_count{{stage=\"{stage}\"}}"),
        );
        println!(
            "  stage {stage:<16} mean {:>7.0} ns/event",
            sum / count.max(1.0) * 1e9
        );
    }
    // The consumer's loop hands nothing over while it checkpoints (encoding the changed users' states is
    // most of it; at least once, they are produced over the following turns): what this costs the
    // latency's tail.
    let sum = metric_value(
        metrics_text,
        "geopromo_stage_seconds_sum{stage=\"checkpoint\"}",
    );
    let count = metric_value(
        metrics_text,
        "geopromo_stage_seconds_count{stage=\"checkpoint\"}",
    );
    println!(
        "  checkpoints {count:.0}, mean {:.1} ms each",
        sum / count.max(1.0) * 1e3
    );
}

fn print_threads(threads: &[(String, f64)], elapsed: Duration) {
    let total: f64 = threads.iter().map(|(_, s)| s).sum();
    println!(
        "  CPU by thread ({total:.1} s in all, {:.2} cores busy on average):",
        total / elapsed.as_secs_f64()
    );
    for (name, seconds) in threads.iter().take(8) {
        println!(
            "    {name:<20} {seconds:>6.1} s  {:>4.0}%",
            seconds / total * 100.0
        );
    }
}

fn latency(rate: u64, seconds: u64) {
    let pipeline = start_pipeline();
    let fences = geopromo::app::load_fence_file(&pipeline.settings).unwrap();
    let mut model = TrafficModel::new(&fences, 100_000, 0.0, 2);
    let producer = producer(&pipeline.brokers);
    let topic = pipeline.settings.kafka.input_topic.clone();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &pipeline.brokers)
        .set("group.id", "latency-reader")
        .set("fetch.wait.max.ms", "5")
        .set("auto.offset.reset", "latest")
        .create()
        .unwrap();
    reader
        .subscribe(&[&pipeline.settings.kafka.output_topic])
        .unwrap();
    // Let the group settle before measuring.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(6) {
        reader.poll(Duration::from_millis(50));
    }
    let stop_reading = Arc::new(AtomicBool::new(false));
    let stop_flag = stop_reading.clone();
    let reading = std::thread::spawn(move || {
        let mut latencies_ms: Vec<i64> = Vec::new();
        while !stop_flag.load(Ordering::Relaxed) {
            if let Some(Ok(message)) = reader.poll(Duration::from_millis(20)) {
                let event: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                let event_ts = event["event_ts"].as_str().unwrap();
                let produced = geopromo::promo::timestamp::parse_rfc3339_ms(event_ts).unwrap();
                latencies_ms.push(now_ms() - produced);
            }
        }
        latencies_ms
    });
    eprintln!("latency: {rate} events/s for {seconds} s from 100000 users");
    let mut payload = Vec::with_capacity(256);
    let started = Instant::now();
    let total = rate * seconds;
    let mut ts = now_ms();
    for produced in 0..total {
        if produced % 16 == 0 {
            ts = now_ms();
        }
        if produced % 64 == 0 {
            let due = Duration::from_secs_f64(produced as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
            producer.poll(Duration::ZERO);
        }
        // The event time is the produce time, so output time minus event_ts is produce-to-output latency.
        let (key, _) = model.next_event(ts, &mut payload);
        send(&producer, &topic, key, &payload);
    }
    let producing = started.elapsed();
    producer.flush(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stop_reading.store(true, Ordering::Relaxed);
    let mut latencies = reading.join().unwrap();
    pipeline.stop.store(true, Ordering::Relaxed);
    pipeline.processor.join().unwrap();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "achieved {:.0} events/s; {} output events; produce→output latency ms: p50 {} p90 {} p99 {} max {}",
        total as f64 / producing.as_secs_f64(),
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}

/// Memory of per-user state: one state per user, built through the real rules, measured as RSS growth.
fn memory(users: usize) {
    let settings = settings();
    let catalog: Catalog = geopromo::app::load_catalog(&settings).unwrap();
    let fences = geopromo::app::load_fence_file(&settings).unwrap();
    let mut model = TrafficModel::new(&fences, users, 0.0, 3);
    let mut payload = Vec::new();
    let before = rss_bytes();
    let mut states: HashMap<Box<str>, UserState> = HashMap::with_capacity(users);
    let (mut scratch, mut outputs) = (Scratch::default(), Vec::new());
    let now = now_ms();
    let time = DecisionTime::at(EpochMs::from_millis(now));
    for _ in 0..users * 2 {
        let (key, _) = model.next_event(now, &mut payload);
        let key = key.to_owned();
        let event = decode_gps_event(Some(key.as_bytes()), &payload, 4096).unwrap();
        let state = states.entry(key.as_str().into()).or_default();
        outputs.clear();
        catalog.decide(state, &event, time, &mut scratch, &mut outputs);
    }
    let eligible = states
        .values()
        .filter(|s| s.standings.iter().any(|p| p.eligible))
        .count();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "{users} users ({eligible} eligible for something): state grew RSS by {:.1} MiB = {:.0} bytes/user → {:.0} MiB per 1 M users",
        grown as f64 / 1_048_576.0,
        grown as f64 / users as f64,
        grown as f64 / users as f64 * 1e6 / 1_048_576.0
    );
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .map(|v| v.trim().parse().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
}

/// CPU seconds per thread name (summed over threads of one name), busiest first, from /proc.
fn thread_cpu_seconds() -> Vec<(String, f64)> {
    let ticks_per_second = 100.0;
    let mut by_name: HashMap<String, f64> = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the name.
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        let name: String = comm
            .trim()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        *by_name.entry(name).or_default() += ticks / ticks_per_second;
    }
    let mut sorted: Vec<(String, f64)> = by_name.into_iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    sorted
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
