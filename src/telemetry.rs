//! Logs (tracing) and Prometheus metrics.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;
use crate::promo::DecodeError;

/// Installs the global subscriber; `RUST_LOG` overrides the configured filter. Safe to call twice.
pub fn init_logging(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if settings.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

type Labels = Vec<(String, String)>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

/// A counter of seconds (fractional), such as a worker's busy time.
pub type SecondsCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// The processor's metrics. Counters on the hot path are resolved once, so counting is an atomic add.
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    pub consumed: Counter,
    pub matched: Counter,
    pub emitted_enter: Counter,
    pub emitted_exit: Counter,
    pub ignored_inaccurate: Counter,
    pub ignored_late: Counter,
    dead_lettered: Family<Labels, Counter>,
    stage_seconds: Family<Labels, Histogram>,
    pub decode_seconds: Histogram,
    pub evaluate_seconds: Histogram,
    pub produce_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    /// Processing time minus the input message's Kafka timestamp.
    pub event_age_seconds: Histogram,
    pub consumer_lag: Gauge,
    /// Messages behind the high watermark per assigned input partition.
    partition_lag: Family<Labels, Gauge>,
    /// Unix time of the last checkpoint that made progress durable (alert on `time() - this`).
    pub last_checkpoint_timestamp_seconds: Gauge,
    /// The catalog version this instance matches against.
    pub catalog_version: Gauge,
    /// Stored rows left out of that catalog (quarantined).
    pub catalog_quarantined: Gauge,
    /// Catalog swaps by how they were made: `applied` (changes into the layered index), `reloaded`
    /// (everything read and built again), `compacted` (a background rebuild of the index swapped in).
    catalog_updates: Family<Labels, Counter>,
    /// Fences in the layered index's overlay (changed since its last compaction).
    pub fence_overlay_fences: Gauge,
    pub rebalances: Counter,
    pub checkpoints: Counter,
    pub rewinds: Counter,
    pub delivery_failures: Counter,
    /// Records the brokers can never take (too large, invalid, not authorised), by topic: skipped.
    undeliverable: Family<Labels, Counter>,
    /// Input records skipped because the consumer's position fell out of the retained log.
    pub offsets_skipped: Counter,
    pub offset_resets: Counter,
    pub users_in_state: Gauge,
    /// Seconds each evaluation worker spent deciding batches: its rate is the worker's utilisation.
    worker_busy_seconds: Family<Labels, SecondsCounter>,
    pub state_restored_users: Counter,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        let stage_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1e-7, 4.0, 12))
        });
        let stage = |name: &str| stage_seconds.get_or_create(&label("stage", name)).clone();
        let metrics = Self {
            consumed: Counter::default(),
            matched: Counter::default(),
            emitted_enter: Counter::default(),
            emitted_exit: Counter::default(),
            ignored_inaccurate: Counter::default(),
            ignored_late: Counter::default(),
            dead_lettered: Family::default(),
            decode_seconds: stage("decode"),
            evaluate_seconds: stage("match_and_rules"),
            produce_seconds: stage("produce"),
            checkpoint_seconds: stage("checkpoint"),
            stage_seconds,
            event_age_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            consumer_lag: Gauge::default(),
            partition_lag: Family::default(),
            last_checkpoint_timestamp_seconds: Gauge::default(),
            catalog_version: Gauge::default(),
            catalog_quarantined: Gauge::default(),
            catalog_updates: Family::default(),
            fence_overlay_fences: Gauge::default(),
            rebalances: Counter::default(),
            checkpoints: Counter::default(),
            rewinds: Counter::default(),
            delivery_failures: Counter::default(),
            undeliverable: Family::default(),
            offsets_skipped: Counter::default(),
            offset_resets: Counter::default(),
            users_in_state: Gauge::default(),
            worker_busy_seconds: Family::default(),
            state_restored_users: Counter::default(),
        };
        for code in DecodeError::CODES {
            let _ = metrics.dead_lettered.get_or_create(&label("reason", code));
        }
        metrics
    }
}

impl PipelineMetrics {
    pub fn dead_lettered(&self, reason: &str) {
        self.dead_lettered
            .get_or_create(&label("reason", reason))
            .inc();
    }

    /// Sets the lag of each assigned partition (and forgets partitions no longer assigned).
    pub fn set_partition_lags(&self, lags: &[(i32, i64)]) {
        self.partition_lag.clear();
        for (partition, lag) in lags {
            self.partition_lag
                .get_or_create(&label("partition", &partition.to_string()))
                .set(*lag);
        }
    }

    /// Registers the catalog gauges (also in the API-only process's registry).
    pub fn register_catalog(&self, registry: &mut Registry) {
        registry.register(
            "catalog_version",
            "The catalog version (fences and promotions in the store) this instance matches against",
            self.catalog_version.clone(),
        );
        registry.register(
            "catalog_quarantined",
            "Stored rows left out of the catalog in use because they cannot be used (see /readyz)",
            self.catalog_quarantined.clone(),
        );
        registry.register(
            "catalog_updates",
            "Catalog swaps by how they were made: applied (changed fences only), reloaded, compacted",
            self.catalog_updates.clone(),
        );
        registry.register(
            "fence_overlay_fences",
            "Fences changed since the fence index's last compaction (held in its overlay)",
            self.fence_overlay_fences.clone(),
        );
    }

    /// A catalog swap, by how it was made (`applied`, `reloaded`, `compacted`), with the overlay size after.
    pub fn catalog_updated(&self, how: &str, overlay_fences: usize) {
        self.catalog_updates.get_or_create(&label("how", how)).inc();
        self.fence_overlay_fences.set(overlay_fences as i64);
    }

    /// The catalog now in use.
    pub fn catalog_in_use(&self, version: i64, quarantined: usize) {
        self.catalog_version.set(version);
        self.catalog_quarantined.set(quarantined as i64);
    }

    /// The busy-time counter of evaluation worker `worker`.
    #[must_use]
    pub fn worker_busy(&self, worker: &str) -> SecondsCounter {
        self.worker_busy_seconds
            .get_or_create(&label("worker", worker))
            .clone()
    }

    /// A checkpoint made progress durable now.
    pub fn checkpointed(&self) {
        self.checkpoints.inc();
        self.last_checkpoint_timestamp_seconds
            .set(crate::promo::timestamp::now_ms() / 1000);
    }

    pub fn undeliverable(&self, topic: &str) {
        self.undeliverable
            .get_or_create(&label("topic", topic))
            .inc();
    }

    #[must_use]
    pub fn undeliverable_total(&self, topic: &str) -> u64 {
        self.undeliverable
            .get_or_create(&label("topic", topic))
            .get()
    }

    #[must_use]
    pub fn dead_lettered_total(&self) -> u64 {
        DecodeError::CODES
            .iter()
            .map(|code| {
                self.dead_lettered
                    .get_or_create(&label("reason", code))
                    .get()
            })
            .sum()
    }

    /// A registry holding these metrics, ready to encode.
    #[must_use]
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("geopromo");
        registry.register(
            "events_consumed",
            "Input messages consumed",
            self.consumed.clone(),
        );
        registry.register(
            "events_matched",
            "Applied points within tolerance of a fence some promotion targets",
            self.matched.clone(),
        );
        registry.register(
            "events_emitted_enter",
            "Eligibility enter events produced",
            self.emitted_enter.clone(),
        );
        registry.register(
            "events_emitted_exit",
            "Eligibility exit events produced",
            self.emitted_exit.clone(),
        );
        registry.register(
            "events_ignored_inaccurate",
            "Points ignored because their accuracy_m was worse than rules.max_accuracy_m",
            self.ignored_inaccurate.clone(),
        );
        registry.register(
            "events_ignored_late",
            "Points ignored because they were older than the user's newest applied point",
            self.ignored_late.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Input messages sent to the dead-letter topic, by reason",
            self.dead_lettered.clone(),
        );
        registry.register(
            "stage_seconds",
            "Time per event in each processing stage (sampled 1 in 64 events)",
            self.stage_seconds.clone(),
        );
        registry.register(
            "event_age_seconds",
            "Processing time minus the input message timestamp (sampled 1 in 64 events)",
            self.event_age_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the high watermark, summed over assigned partitions",
            self.consumer_lag.clone(),
        );
        registry.register(
            "consumer_partition_lag",
            "Messages behind the high watermark, per assigned input partition",
            self.partition_lag.clone(),
        );
        registry.register(
            "last_checkpoint_timestamp_seconds",
            "Unix time of the last checkpoint that made progress durable",
            self.last_checkpoint_timestamp_seconds.clone(),
        );
        self.register_catalog(&mut registry);
        registry.register(
            "rebalances",
            "Consumer group rebalances",
            self.rebalances.clone(),
        );
        registry.register(
            "checkpoints",
            "Offset or transaction commits",
            self.checkpoints.clone(),
        );
        registry.register(
            "rewinds",
            "Rewinds to the last checkpoint after a failed delivery or an aborted transaction",
            self.rewinds.clone(),
        );
        registry.register(
            "delivery_failures",
            "Produced messages the broker did not acknowledge",
            self.delivery_failures.clone(),
        );
        registry.register(
            "records_undeliverable",
            "Produced records the brokers refused for good (size, invalid, authorisation); skipped and logged",
            self.undeliverable.clone(),
        );
        registry.register(
            "input_offsets_skipped",
            "Input records skipped because the consumer position fell out of the retained log",
            self.offsets_skipped.clone(),
        );
        registry.register(
            "input_offset_resets",
            "Times a partition's position was out of the retained log and reset",
            self.offset_resets.clone(),
        );
        registry.register(
            "users_in_state",
            "Users with state held by this instance",
            self.users_in_state.clone(),
        );
        registry.register(
            "processor_worker_busy_seconds",
            "Seconds each evaluation worker (`consumer` when records are decided on the consumer's thread) \
             spent decoding, matching and deciding; a rate near 1 means that worker is saturated",
            self.worker_busy_seconds.clone(),
        );
        registry.register(
            "state_restored_users",
            "User states restored from the changelog on partition assignment",
            self.state_restored_users.clone(),
        );
        registry
    }
}

/// The Prometheus text exposition of `registry`.
#[must_use]
pub fn encode_metrics(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, registry);
    text
}

/// Labels of one HTTP request: the route pattern (not the raw path, so ids do not explode the series),
/// the method and, for the counter, the status code.
type HttpLabels = [(&'static str, String); 3];

/// HTTP request metrics of the API: a counter by route, method and status, and a latency histogram.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    seconds: Family<[(&'static str, String); 2], Histogram>,
}

impl HttpMetrics {
    /// Creates the metrics and registers them (`http_requests`, `http_request_seconds`) in `registry`.
    #[must_use]
    pub fn registered(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "Time to answer an HTTP request (until the response head), by route pattern and method",
            metrics.seconds.clone(),
        );
        metrics
    }

    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&[
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.seconds
            .get_or_create(&[("route", route.to_owned()), ("method", method.to_owned())])
            .observe(seconds);
    }
}
