//! Distributed tracing: OpenTelemetry spans exported over OTLP/HTTP, and W3C `traceparent` carried
//! through HTTP requests and Kafka record headers so that one GPS point is one trace across the hops:
//! `POST /v1/locations` → `send gps-events` → `process gps-events` (the processor) → the eligibility write.
//!
//! Off unless an endpoint is configured. Off means off: callers ask [`tracer`] once and skip every span
//! when it is `None`, so the processor's hot path pays one branch per record.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

use crate::config::OtelSettings;

pub use opentelemetry::trace::{Span, SpanKind, Status};
pub use opentelemetry::KeyValue;
pub use opentelemetry_sdk::trace::Tracer;

static TRACER: OnceLock<Tracer> = OnceLock::new();
/// The share of root traces the configured sampler records.
static ROOT_RATIO: OnceLock<f64> = OnceLock::new();

/// The tracer, when tracing is on.
#[must_use]
pub fn tracer() -> Option<&'static Tracer> {
    TRACER.get()
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("{variable}: unknown sampler {value:?} (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")]
    UnknownSampler {
        variable: &'static str,
        value: String,
    },
    #[error("{variable}: {value:?} is not a ratio between 0 and 1")]
    BadRatio {
        variable: &'static str,
        value: String,
    },
    #[error("cannot build the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The settings with the standard `OTEL_*` variables applied over them (`lookup` reads a variable).
#[must_use]
pub fn effective(settings: &OtelSettings, lookup: impl Fn(&str) -> Option<String>) -> OtelSettings {
    let mut effective = settings.clone();
    let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    if let Some(endpoint) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
        effective.exporter_otlp_endpoint = endpoint;
    }
    if let Some(name) = set("OTEL_SERVICE_NAME") {
        effective.service_name = name;
    }
    if let Some(sampler) = set("OTEL_TRACES_SAMPLER") {
        effective.traces_sampler = sampler;
    }
    if let Some(arg) = set("OTEL_TRACES_SAMPLER_ARG") {
        // Kept as text until `sampler` parses it, so a bad value is reported, not dropped.
        effective.traces_sampler_arg = arg.trim().parse().ok().or(Some(f64::NAN));
    }
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    if disabled {
        effective.exporter_otlp_endpoint.clear();
    }
    effective
}

thread_local! {
    /// A trace id drawn by [`root_decision`] for the next root span started on this thread.
    static NEXT_TRACE_ID: std::cell::Cell<Option<opentelemetry::trace::TraceId>> =
        const { std::cell::Cell::new(None) };
}

/// The SDK's random ids, except that a root span started right after [`root_decision`] said "sampled"
/// gets the trace id that decision was made on (so the SDK's sampler, applying the same rule to the same
/// id, agrees with it).
#[derive(Debug, Default)]
struct DecidedIdGenerator(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for DecidedIdGenerator {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        NEXT_TRACE_ID
            .with(std::cell::Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        self.0.new_span_id()
    }
}

/// For a span with no parent: a fresh trace id and whether the configured sampler will record it,
/// decided by the SDK's own rule for trace-id ratios. When sampled, the next root span started on this
/// thread gets that trace id. Lets the processor skip the span altogether for the records a low ratio
/// does not sample.
#[must_use]
pub fn root_decision() -> (opentelemetry::trace::TraceId, bool) {
    use opentelemetry_sdk::trace::IdGenerator as _;
    let trace_id = opentelemetry_sdk::trace::RandomIdGenerator::default().new_trace_id();
    let sampled = ratio_samples(trace_id, ROOT_RATIO.get().copied().unwrap_or(1.0));
    if sampled {
        NEXT_TRACE_ID.with(|next| next.set(Some(trace_id)));
    }
    (trace_id, sampled)
}

/// The SDK's trace-id ratio rule (`TraceIdRatioBased`).
fn ratio_samples(trace_id: opentelemetry::trace::TraceId, ratio: f64) -> bool {
    ratio >= 1.0 || {
        let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
        (low >> 1) < (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

/// A span context for a record that is not sampled: carried downstream (flag not set) so that the
/// services after this one make the same decision instead of sampling a fresh root.
#[must_use]
pub fn unsampled_context(trace_id: opentelemetry::trace::TraceId) -> SpanContext {
    use opentelemetry_sdk::trace::IdGenerator as _;
    SpanContext::new(
        trace_id,
        opentelemetry_sdk::trace::RandomIdGenerator::default().new_span_id(),
        opentelemetry::trace::TraceFlags::default(),
        false,
        opentelemetry::trace::TraceState::default(),
    )
}

/// The share of root spans `settings`' sampler records.
fn root_ratio(settings: &OtelSettings) -> f64 {
    match settings.traces_sampler.trim() {
        "always_off" | "parentbased_always_off" => 0.0,
        "traceidratio" | "parentbased_traceidratio" => settings.traces_sampler_arg.unwrap_or(1.0),
        _ => 1.0,
    }
}

/// The sampler the settings name.
pub fn sampler(settings: &OtelSettings) -> Result<Sampler, OtelError> {
    let ratio = || match settings.traces_sampler_arg {
        None => Ok(1.0),
        Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Some(r) => Err(OtelError::BadRatio {
            variable: "traces_sampler_arg",
            value: r.to_string(),
        }),
    };
    Ok(match settings.traces_sampler.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => {
            return Err(OtelError::UnknownSampler {
                variable: "traces_sampler",
                value: other.to_owned(),
            })
        }
    })
}

/// Exports spans until dropped; dropping flushes what is buffered (up to 5 s).
#[must_use = "tracing stops when the guard is dropped"]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(%error, "traces not all exported at shutdown");
        }
    }
}

/// Starts exporting when an endpoint is configured (settings, then `OTEL_*` variables); `None` when
/// tracing is off. Only the first call in a process installs the tracer.
pub fn init(settings: &OtelSettings) -> Result<Option<OtelGuard>, OtelError> {
    let settings = effective(settings, |name| std::env::var(name).ok());
    if settings.exporter_otlp_endpoint.trim().is_empty() {
        return Ok(None);
    }
    let sampler = sampler(&settings)?;
    let endpoint = format!(
        "{}/v1/traces",
        settings.exporter_otlp_endpoint.trim().trim_end_matches('/')
    );
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&endpoint)
        .build()
        .map_err(OtelError::Exporter)?;
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_id_generator(DecidedIdGenerator::default())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    use opentelemetry::trace::TracerProvider as _;
    let _ = TRACER.set(provider.tracer("geopromo"));
    let _ = ROOT_RATIO.set(root_ratio(&settings));
    tracing::info!(%endpoint, service = %settings.service_name, sampler = %settings.traces_sampler,
        ratio = ?settings.traces_sampler_arg, "exporting traces over OTLP/HTTP");
    Ok(Some(OtelGuard { provider }))
}

/// The trace context a Kafka record carries (`traceparent`, `tracestate`); empty without one.
#[must_use]
pub fn context_from_kafka(headers: Option<&BorrowedHeaders>) -> Context {
    struct KafkaHeaders<'a>(&'a BorrowedHeaders);
    impl Extractor for KafkaHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(key))
                .and_then(|h| std::str::from_utf8(h.value?).ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|h| h.key).collect()
        }
    }
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&KafkaHeaders(headers)),
        None => Context::new(),
    }
}

/// The trace context of an HTTP request's `traceparent` / `tracestate` headers.
#[must_use]
pub fn context_from_http(headers: &axum::http::HeaderMap) -> Context {
    struct HttpHeaders<'a>(&'a axum::http::HeaderMap);
    impl Extractor for HttpHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(axum::http::HeaderName::as_str).collect()
        }
    }
    TraceContextPropagator::new().extract(&HttpHeaders(headers))
}

/// `traceparent` (and `tracestate`) of `context`, as (name, value) pairs.
#[must_use]
pub fn trace_headers(context: &Context) -> Vec<(String, String)> {
    struct Pairs(Vec<(String, String)>);
    impl Injector for Pairs {
        fn set(&mut self, key: &str, value: String) {
            // An empty `tracestate` is noise on every record.
            if !value.is_empty() {
                self.0.push((key.to_owned(), value));
            }
        }
    }
    let mut pairs = Pairs(Vec::with_capacity(2));
    TraceContextPropagator::new().inject_context(context, &mut pairs);
    pairs.0
}

/// `headers` with `context`'s `traceparent` (and `tracestate`) added.
#[must_use]
pub fn with_trace_headers(mut headers: OwnedHeaders, context: &Context) -> OwnedHeaders {
    for (key, value) in trace_headers(context) {
        headers = headers.insert(Header {
            key: &key,
            value: Some(&value),
        });
    }
    headers
}

/// The span context of `context`'s span, when it is a real one.
#[must_use]
pub fn span_context(context: &Context) -> Option<SpanContext> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// The trace id of `context`, for log lines.
#[must_use]
pub fn trace_id(context: &Context) -> Option<String> {
    span_context(context).map(|c| c.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_decides_roots_as_the_sdk_sampler_does() {
        use opentelemetry::trace::{SpanKind, TraceId};
        use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, ShouldSample as _};
        let sdk = Sampler::TraceIdRatioBased(0.3);
        let ids = RandomIdGenerator::default();
        let mut sampled = 0;
        for _ in 0..2000 {
            let trace_id: TraceId = ids.new_trace_id();
            let theirs = sdk
                .should_sample(None, trace_id, "x", &SpanKind::Consumer, &[], &[])
                .decision
                == opentelemetry_sdk::trace::SamplingDecision::RecordAndSample;
            assert_eq!(ratio_samples(trace_id, 0.3), theirs);
            sampled += usize::from(theirs);
        }
        assert!((450..750).contains(&sampled), "{sampled}");
        assert!(!ratio_samples(ids.new_trace_id(), 0.0));
        assert!(ratio_samples(ids.new_trace_id(), 1.0));
    }

    fn settings(sampler: &str, arg: Option<f64>) -> OtelSettings {
        OtelSettings {
            traces_sampler: sampler.into(),
            traces_sampler_arg: arg,
            ..OtelSettings::default()
        }
    }

    #[test]
    fn the_standard_variables_win_over_the_settings_file() {
        let file = OtelSettings {
            exporter_otlp_endpoint: "http://file:4318".into(),
            ..OtelSettings::default()
        };
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4318".to_owned()),
            "OTEL_SERVICE_NAME" => Some("geopromo-api".to_owned()),
            "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio".to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.01".to_owned()),
            _ => None,
        };
        let effective = effective(&file, env);
        assert_eq!(effective.exporter_otlp_endpoint, "http://env:4318");
        assert_eq!(effective.service_name, "geopromo-api");
        assert_eq!(effective.traces_sampler_arg, Some(0.01));
        assert!(matches!(
            sampler(&effective).unwrap(),
            Sampler::ParentBased(_)
        ));
    }

    #[test]
    fn the_sdk_can_be_disabled_by_variable() {
        let file = OtelSettings {
            exporter_otlp_endpoint: "http://file:4318".into(),
            ..OtelSettings::default()
        };
        let effective = effective(&file, |name| {
            (name == "OTEL_SDK_DISABLED").then(|| "true".to_owned())
        });
        assert_eq!(effective.exporter_otlp_endpoint, "");
    }

    #[test]
    fn samplers_are_parsed_and_bad_ones_named() {
        assert!(matches!(
            sampler(&settings("always_on", None)).unwrap(),
            Sampler::AlwaysOn
        ));
        assert!(matches!(
            sampler(&settings("traceidratio", Some(0.25))).unwrap(),
            Sampler::TraceIdRatioBased(r) if r == 0.25
        ));
        let unknown = sampler(&settings("sometimes", None))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("\"sometimes\""), "{unknown}");
        let bad = sampler(&settings("traceidratio", Some(2.0)))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not a ratio"), "{bad}");
        let nan = effective(&settings("traceidratio", None), |name| {
            (name == "OTEL_TRACES_SAMPLER_ARG").then(|| "half".to_owned())
        });
        assert!(
            sampler(&nan).is_err(),
            "an unparsable ratio is an error, not 100%"
        );
    }

    #[test]
    fn a_traceparent_survives_the_round_trip_through_kafka_headers() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut http = axum::http::HeaderMap::new();
        http.insert("traceparent", incoming.parse().unwrap());
        let context = context_from_http(&http);
        assert_eq!(
            trace_id(&context).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let headers = trace_headers(&context);
        assert_eq!(
            headers,
            vec![("traceparent".to_owned(), incoming.to_owned())]
        );
        assert!(trace_id(&Context::new()).is_none());
        assert!(
            trace_headers(&Context::new()).is_empty(),
            "no context, no header"
        );
    }
}
