//! Settings, layered: built-in defaults → `config/base.toml` → `config/{GEOPROMO_ENV}.toml` → `GEOPROMO__`
//! environment variables (`GEOPROMO__KAFKA__BROKERS=b1:9092`, `GEOPROMO__RULES__HYSTERESIS_M=150`).
//! Every layer is optional, so a fresh checkout runs on the defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::promo::RuleOptions;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub fences: FenceSettings,
    pub promotions: PromotionSettings,
    pub rules: RuleSettings,
    pub kafka: KafkaSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub otel: OtelSettings,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub auth: AuthSettings,
}

/// Tokens, sessions and login protection (see `docs/auth.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `iss` of every access token; audiences are `{issuer}:mobile`, `{issuer}:ops`, `{issuer}:consumer`.
    pub issuer: String,
    /// Access token lifetime, at most 900 s.
    pub access_ttl_s: u64,
    /// Clock leeway when checking `exp`, `nbf` and `iat`, at most 60 s.
    pub leeway_s: u64,
    /// A session unused (no refresh) for this long ends.
    pub idle_timeout_s: u64,
    /// A session ends this long after login whatever happens.
    pub absolute_timeout_s: u64,
    /// A rotated refresh token presented again within this window gets the same answer (lost responses,
    /// concurrent refreshes); after it, the session is revoked as stolen. At most 10 s.
    pub refresh_grace_s: u64,
    /// How often each instance reads new session revocations and key changes from the store.
    pub revocation_poll_ms: u64,
    /// A rotated-in key is published in the JWKS this long before it signs (for verifiers that cache).
    pub key_publish_ahead_s: u64,
    /// Login attempts per client IP: burst, then one more every `60 / per_minute` s.
    pub login_ip_burst: u32,
    pub login_ip_per_minute: u32,
    /// Login attempts per username (whatever the IP).
    pub login_account_burst: u32,
    pub login_account_per_minute: u32,
    /// Refreshes per client IP.
    pub refresh_ip_burst: u32,
    pub refresh_ip_per_minute: u32,
    /// Argon2id cost for new password hashes (existing hashes keep their own).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "geopromo".into(),
            access_ttl_s: 900,
            leeway_s: 30,
            idle_timeout_s: 30 * 24 * 3600,
            absolute_timeout_s: 90 * 24 * 3600,
            refresh_grace_s: 10,
            revocation_poll_ms: 250,
            key_publish_ahead_s: 0,
            login_ip_burst: 20,
            login_ip_per_minute: 30,
            login_account_burst: 5,
            login_account_per_minute: 5,
            refresh_ip_burst: 60,
            refresh_ip_per_minute: 120,
            // OWASP's Argon2id minimum: m = 19 MiB, t = 2, p = 1.
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Where the HTTP API listens. Empty: no API in this process.
    pub listen: String,
    /// Largest request body (GeoJSON uploads are the big ones).
    pub max_body_bytes: usize,
    /// `/v1/events/stream` and `/v1/activity/*` cover this many minutes of the output topic (1 to 60):
    /// the resume window and the activity counts' reach.
    pub events_window_minutes: u32,
    /// At most this many events are kept for resumption, whatever the window.
    pub events_retained: usize,
    /// A stream client more than this many events behind the feed is dropped (with the reason).
    pub events_reader_lag: usize,
    pub console: ConsoleSettings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 32 * 1024 * 1024,
            events_window_minutes: 60,
            events_retained: 50_000,
            events_reader_lag: 1024,
            console: ConsoleSettings::default(),
        }
    }
}

impl ApiSettings {
    /// The live hub's limits these settings ask for.
    #[must_use]
    pub fn hub_limits(&self) -> crate::live::HubLimits {
        crate::live::HubLimits {
            retained_events: self.events_retained.max(1),
            window_ms: i64::from(self.events_window_minutes.clamp(1, 60)) * 60_000,
            reader_lag: self.events_reader_lag.max(1),
        }
    }
}

/// The ops console at `/console` (see docs/console.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// A raster tile URL template (`https://tiles.example/{z}/{x}/{y}.png`) drawn under the fences.
    /// Empty (the default): the bundled country outlines only, so the console works offline.
    pub raster_tiles: String,
    /// Attribution shown for `raster_tiles`.
    pub attribution: String,
    /// A MapLibre style URL (vector tiles); wins over `raster_tiles` when set.
    pub style_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (created and migrated on first run) or `postgres://user@host/db`.
    pub url: String,
    /// How often processors check the catalog version for fence or promotion changes.
    pub poll_interval_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/geopromo.sqlite".into(),
            poll_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FenceSettings {
    pub path: PathBuf,
    pub default_tolerance_m: f64,
    /// Load the valid fences of a file that also has invalid ones (each problem is logged).
    pub skip_invalid: bool,
    pub cells_per_degree: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromotionSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSettings {
    pub max_accuracy_m: f64,
    pub hysteresis_m: f64,
    pub max_future_skew_s: u64,
}

/// What survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs are acknowledged before input offsets are committed: nothing lost, duplicates possible
    /// (with the same `event_id`) after a crash.
    AtLeastOnce,
    /// Outputs, state and input offsets commit in one Kafka transaction; `read_committed` consumers see
    /// each event once.
    ExactlyOnce,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `host:port,...`. Empty: start the embedded, non-durable dev broker.
    pub brokers: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    /// Compacted changelog of per-user state, partitioned like the input topic.
    pub state_topic: String,
    pub group_id: String,
    pub guarantee: Guarantee,
    /// Required with `exactly_once`: unique per processor instance and stable across its restarts (a
    /// StatefulSet ordinal, a compose service name). No default: a derived id (hostname, pid) is either
    /// shared by two instances or changes on restart, and both break the fencing of zombie producers.
    pub transactional_id: Option<String>,
    /// Static group membership (`group.instance.id`): unique per processor instance and stable across its
    /// restarts, like `transactional_id`. A member that restarts within `session.timeout.ms` gets its
    /// partitions back without a rebalance; one that stops for good holds them until that timeout.
    pub instance_id: Option<String>,
    /// How often progress is checkpointed (outputs acknowledged, offsets committed or transaction committed).
    pub commit_interval_ms: u64,
    /// Larger input payloads go to the dead-letter topic.
    pub max_event_bytes: usize,
    /// Threads that decode, match and decide records beside the consumer's thread, each owning a share
    /// of the assigned partitions. `0` decides on the consumer's thread. Unset: one per core beyond the
    /// first, at most 4.
    pub processor_threads: Option<usize>,
    /// Partitions of each topic the embedded broker creates.
    pub embedded_partitions: i32,
    /// librdkafka properties for every client (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    /// In environment variables, write `_` for `.`: `GEOPROMO__KAFKA__PROPERTIES__SASL_MECHANISM`.
    #[serde(deserialize_with = "property_map")]
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumers only.
    #[serde(deserialize_with = "property_map")]
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producers only.
    #[serde(deserialize_with = "property_map")]
    pub producer_properties: BTreeMap<String, String>,
}

/// librdkafka takes every property as a string; settings files and environment variables give numbers
/// and booleans their own types (`"linger.ms" = 5`), so those are turned into the strings librdkafka reads.
fn property_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Flag(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Scalar::Text(text) => text,
                Scalar::Integer(n) => n.to_string(),
                Scalar::Float(x) => x.to_string(),
                Scalar::Flag(b) => b.to_string(),
            };
            (key, text)
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where `/metrics` (Prometheus text format) and `/healthz` are served. Empty: not served.
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `geopromo=debug,rdkafka=warn`. `RUST_LOG` wins when set.
    pub filter: String,
    pub json: bool,
}

/// Distributed tracing over OTLP/HTTP, with the keys of the standard `OTEL_*` variables (which win over
/// these when set: `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
/// `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SDK_DISABLED`). See `docs/operations.md` "Tracing".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelSettings {
    /// OTLP/HTTP base URL, e.g. `http://jaeger:4318` (`/v1/traces` is appended). Empty: tracing off.
    pub exporter_otlp_endpoint: String,
    pub service_name: String,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off` or
    /// `parentbased_traceidratio`.
    pub traces_sampler: String,
    /// The ratio of the `*traceidratio` samplers, 0 to 1.
    pub traces_sampler_arg: Option<f64>,
}

impl Default for OtelSettings {
    fn default() -> Self {
        Self {
            exporter_otlp_endpoint: String::new(),
            service_name: "geopromo".into(),
            traces_sampler: "parentbased_always_on".into(),
            traces_sampler_arg: None,
        }
    }
}

impl Default for FenceSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            default_tolerance_m: 1000.0,
            skip_invalid: false,
            cells_per_degree: 64,
        }
    }
}

impl Default for PromotionSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
        }
    }
}

impl Default for RuleSettings {
    fn default() -> Self {
        let rules = RuleOptions::default();
        Self {
            max_accuracy_m: rules.max_accuracy_m,
            hysteresis_m: rules.hysteresis_m,
            max_future_skew_s: (rules.max_future_skew_ms / 1000) as u64,
        }
    }
}

impl RuleSettings {
    #[must_use]
    pub fn to_options(self) -> RuleOptions {
        RuleOptions {
            max_accuracy_m: self.max_accuracy_m,
            hysteresis_m: self.hysteresis_m,
            max_future_skew_ms: (self.max_future_skew_s as i64).saturating_mul(1000),
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            input_topic: "gps-events".into(),
            output_topic: "promo-eligible".into(),
            dlq_topic: "gps-events.dlq".into(),
            state_topic: "geopromo.user-state".into(),
            group_id: "geopromo".into(),
            guarantee: Guarantee::AtLeastOnce,
            transactional_id: None,
            instance_id: None,
            commit_interval_ms: 1000,
            max_event_bytes: 16 * 1024,
            processor_threads: None,
            embedded_partitions: 2,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9898".into(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info,librdkafka=warn".into(),
            json: false,
        }
    }
}

/// Why settings could not be loaded; figment's error names the key and the layer it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment's message, which names the key and the layer, is this error's own text and not also its
    /// source: printed as a chain (`{:#}`, as the CLI does) it appeared twice.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Rule(String),
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        Self::Invalid(error)
    }
}

impl Settings {
    /// Loads the layers from `dir` (normally `config/`); `GEOPROMO_ENV` picks the environment file
    /// (default `local`).
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let environment = std::env::var("GEOPROMO_ENV").unwrap_or_else(|_| "local".into());
        Self::from_figment(
            Figment::from(Serialized::defaults(Settings::default()))
                .merge(Toml::file(dir.join("base.toml")))
                .merge(Toml::file(dir.join(format!("{environment}.toml"))))
                .merge(Env::prefixed("GEOPROMO__").split("__")),
        )
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        for map in [
            &mut settings.kafka.properties,
            &mut settings.kafka.consumer_properties,
            &mut settings.kafka.producer_properties,
        ] {
            // Environment variables cannot hold dots portably; librdkafka property names have no underscores.
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, v)| (k.replace('_', ".").to_lowercase(), v))
                .collect();
        }
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let fail = |text: String| Err(ConfigError::Rule(text));
        let kafka = &self.kafka;
        if kafka.guarantee == Guarantee::ExactlyOnce
            && kafka
                .transactional_id
                .as_deref()
                .is_none_or(|id| id.trim().is_empty())
        {
            return fail(
                "kafka.transactional_id is required with kafka.guarantee = \"exactly_once\": give each \
                 processor instance its own id that stays the same across its restarts (for example \
                 GEOPROMO__KAFKA__TRANSACTIONAL_ID=geopromo-processor-0); see docs/operations.md"
                    .into(),
            );
        }
        for (name, topic) in [
            ("kafka.input_topic", &kafka.input_topic),
            ("kafka.output_topic", &kafka.output_topic),
            ("kafka.dlq_topic", &kafka.dlq_topic),
            ("kafka.state_topic", &kafka.state_topic),
            ("kafka.group_id", &kafka.group_id),
        ] {
            if topic.trim().is_empty() {
                return fail(format!("{name} must not be empty"));
            }
        }
        if kafka.commit_interval_ms == 0 {
            return fail("kafka.commit_interval_ms must be at least 1".into());
        }
        if kafka.max_event_bytes < 64 {
            return fail("kafka.max_event_bytes must be at least 64".into());
        }
        if !(1..=1000).contains(&kafka.embedded_partitions) {
            return fail("kafka.embedded_partitions must be between 1 and 1000".into());
        }
        if self.rules.max_accuracy_m.is_nan() || self.rules.max_accuracy_m <= 0.0 {
            return fail("rules.max_accuracy_m must be positive".into());
        }
        if !(0.0..=10_000.0).contains(&self.rules.hysteresis_m) {
            return fail("rules.hysteresis_m must be between 0 and 10000".into());
        }
        let auth = &self.auth;
        if !(1..=900).contains(&auth.access_ttl_s) {
            return fail("auth.access_ttl_s must be between 1 and 900".into());
        }
        if auth.leeway_s > 60 {
            return fail("auth.leeway_s must be at most 60".into());
        }
        if auth.refresh_grace_s > 10 {
            return fail("auth.refresh_grace_s must be at most 10".into());
        }
        if auth.idle_timeout_s == 0 || auth.absolute_timeout_s < auth.idle_timeout_s {
            return fail(
                "auth.idle_timeout_s must be at least 1 and at most auth.absolute_timeout_s".into(),
            );
        }
        if !(10..=60_000).contains(&auth.revocation_poll_ms) {
            return fail("auth.revocation_poll_ms must be between 10 and 60000".into());
        }
        for (name, value) in [
            ("auth.login_ip_burst", auth.login_ip_burst),
            ("auth.login_ip_per_minute", auth.login_ip_per_minute),
            ("auth.login_account_burst", auth.login_account_burst),
            (
                "auth.login_account_per_minute",
                auth.login_account_per_minute,
            ),
            ("auth.refresh_ip_burst", auth.refresh_ip_burst),
            ("auth.refresh_ip_per_minute", auth.refresh_ip_per_minute),
        ] {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if auth.argon2_memory_kib < 8 * 1024 || auth.argon2_iterations == 0 {
            return fail("auth.argon2_memory_kib must be at least 8192 and auth.argon2_iterations at least 1".into());
        }
        if auth.issuer.trim().is_empty() {
            return fail("auth.issuer must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;

    /// The defaults are written once, in the `Default` impls; `config/base.toml` documents them and must
    /// say the same, so that reading it changes nothing.
    #[test]
    fn base_toml_states_exactly_the_built_in_defaults() {
        let from_file: Settings = Figment::new()
            .merge(Toml::string(include_str!("../config/base.toml")))
            .extract()
            .unwrap();
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn layers_override_in_order_and_properties_get_their_dots() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "base.toml",
                "[kafka]\nbrokers = \"a:9092\"\ngroup_id = \"base\"\n",
            )?;
            jail.create_file("prod.toml", "[kafka]\ngroup_id = \"prod\"\n")?;
            jail.set_env("GEOPROMO_ENV", "prod");
            jail.set_env("GEOPROMO__KAFKA__PROPERTIES__SASL_MECHANISM", "PLAIN");
            jail.set_env("GEOPROMO__RULES__HYSTERESIS_M", "150");
            let settings = Settings::load(Path::new(".")).unwrap();
            assert_eq!(settings.kafka.brokers, "a:9092");
            assert_eq!(settings.kafka.group_id, "prod");
            assert_eq!(settings.rules.hysteresis_m, 150.0);
            assert_eq!(settings.kafka.properties["sasl.mechanism"], "PLAIN");
            Ok(())
        });
    }

    #[test]
    fn numeric_and_boolean_kafka_properties_are_taken() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "base.toml",
                "[kafka.producer_properties]\n\"linger.ms\" = 5\n\"enable.idempotence\" = true\n",
            )?;
            jail.set_env("GEOPROMO__KAFKA__PROPERTIES__SOCKET_TIMEOUT_MS", "1500");
            let settings = Settings::load(Path::new(".")).unwrap();
            assert_eq!(settings.kafka.producer_properties["linger.ms"], "5");
            assert_eq!(
                settings.kafka.producer_properties["enable.idempotence"],
                "true"
            );
            assert_eq!(settings.kafka.properties["socket.timeout.ms"], "1500");
            Ok(())
        });
    }

    #[test]
    fn a_wrongly_typed_variable_is_named_once() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("GEOPROMO__KAFKA__COMMIT_INTERVAL_MS", "abc");
            let err = anyhow::Error::from(Settings::load(Path::new(".")).unwrap_err());
            let text = format!("{err:#}");
            assert!(text.starts_with("invalid configuration: "), "{text}");
            assert_eq!(text.matches("COMMIT_INTERVAL_MS").count(), 1, "{text}");
            Ok(())
        });
    }

    #[test]
    fn exactly_once_needs_an_explicit_transactional_id() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("base.toml", "[kafka]\nguarantee = \"exactly_once\"\n")?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("kafka.transactional_id"), "{err}");
            jail.create_file(
                "base.toml",
                "[kafka]\nguarantee = \"exactly_once\"\ntransactional_id = \"p-0\"\n",
            )?;
            assert!(Settings::load(Path::new(".")).is_ok());
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("base.toml", "[kafka]\nguarantee = \"twice\"\n")?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("guarantee"), "{err}");
            assert!(err.contains("base.toml"), "{err}");
            jail.create_file("base.toml", "[rules]\nhysteresis_m = -1\n")?;
            let err = Settings::load(Path::new(".")).unwrap_err().to_string();
            assert!(err.contains("rules.hysteresis_m"), "{err}");
            Ok(())
        });
    }
}
