//! Wiring: load fences and promotions, start the broker (embedded in dev mode), the processor and the
//! metrics endpoint, and run until a shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use crate::config::Settings;
use crate::geofence::{parse_fences, Fence, IndexOptions, ParseOptions};
use crate::promo::{parse_promotions, Catalog, SharedCatalog};
use crate::stream::simulate::{run_simulation, SimulateOptions};
use crate::stream::{EmbeddedBroker, Processor};
use crate::telemetry::{encode_metrics, PipelineMetrics};

/// Reads and validates the fence file named in the settings.
pub fn load_fence_file(settings: &Settings) -> anyhow::Result<Vec<Fence>> {
    let path = &settings.fences.path;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read fences from {}", path.display()))?;
    let options = ParseOptions::default()
        .default_tolerance_m(settings.fences.default_tolerance_m)
        .skip_invalid(settings.fences.skip_invalid);
    let parsed = parse_fences(&bytes, &options).map_err(|err| {
        let details = match &err {
            crate::geofence::GeoJsonError::Invalid { .. } => err.report_lines().join("\n  "),
            _ => String::new(),
        };
        anyhow::anyhow!("{}: {err}\n  {details}", path.display())
    })?;
    for line in crate::geofence::geojson::problem_lines(&parsed.skipped) {
        tracing::warn!(file = %path.display(), "skipped: {line}");
    }
    Ok(parsed.fences)
}

/// Builds the catalog (fences × promotions × rules) from the files named in the settings.
pub fn load_catalog(settings: &Settings) -> anyhow::Result<Catalog> {
    let fences = load_fence_file(settings)?;
    let path = &settings.promotions.path;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read promotions from {}", path.display()))?;
    let promotions = parse_promotions(&bytes).with_context(|| format!("in {}", path.display()))?;
    let catalog = Catalog::build(
        &fences,
        promotions,
        settings.rules.to_options(),
        IndexOptions::default().cells_per_degree(settings.fences.cells_per_degree),
    )
    .with_context(|| {
        format!(
            "{} does not fit {}",
            path.display(),
            settings.fences.path.display()
        )
    })?;
    Ok(catalog)
}

/// What `serve` runs besides the processor.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Also produce simulated traffic into the input topic.
    pub simulate: Option<SimulateOptions>,
    /// Refuse to start the embedded broker (the `process` command): brokers must be configured.
    pub require_brokers: bool,
}

/// Runs the processor (and, with no brokers configured, the embedded broker) until `shutdown` resolves or
/// the processor fails. SIGHUP reloads fences and promotions and swaps them in without pausing.
pub async fn serve(
    settings: Settings,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let catalog = Arc::new(SharedCatalog::from_pointee(load_catalog(&settings)?));
    let (all_fences, targeted) = catalog.load().fence_counts();
    tracing::info!(
        fences = all_fences,
        targeted_fences = targeted,
        promotions = catalog.load().promotions().len(),
        "catalog loaded"
    );

    let embedded = if settings.kafka.brokers.trim().is_empty() {
        anyhow::ensure!(
            !options.require_brokers,
            "kafka.brokers is not set (set it in config/ or GEOPROMO__KAFKA__BROKERS)"
        );
        let broker = EmbeddedBroker::start(&settings.kafka, 1)
            .context("cannot start the embedded broker")?;
        print_dev_banner(&settings, broker.bootstrap_servers());
        Some(broker)
    } else {
        None
    };
    let brokers = embedded.as_ref().map_or_else(
        || settings.kafka.brokers.clone(),
        |b| b.bootstrap_servers().to_owned(),
    );

    let metrics = PipelineMetrics::default();
    if !settings.metrics.listen.is_empty() {
        let address = serve_metrics(&settings.metrics.listen, metrics.registry()).await?;
        tracing::info!(%address, "metrics at http://{address}/metrics");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let processor = Processor::new(
        settings.kafka.clone(),
        brokers.clone(),
        catalog.clone(),
        metrics,
    )
    .with_transactional_id(settings.transactional_id());
    let processor_stop = stop.clone();
    let mut processor_task = tokio::task::spawn_blocking(move || processor.run(&processor_stop));

    let simulator = options.simulate.map(|simulate| {
        let (kafka, brokers, stop) = (settings.kafka.clone(), brokers.clone(), stop.clone());
        let fences = load_fence_file(&settings).unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            run_simulation(&kafka, &brokers, &fences, &simulate, &stop, |report| {
                tracing::info!(
                    produced = report.produced,
                    rate = format!("{:.0}/s", report.rate()),
                    "simulating"
                );
            })
        })
    });

    let reload_settings = settings.clone();
    let reload_catalog = catalog.clone();
    let reloader =
        tokio::spawn(async move { reload_on_sighup(reload_settings, reload_catalog).await });

    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        () = &mut shutdown => {
            tracing::info!("shutting down: finishing in-flight work and committing");
            stop.store(true, Ordering::Relaxed);
            (&mut processor_task).await
        }
        finished = &mut processor_task => finished,
    };
    stop.store(true, Ordering::Relaxed);
    reloader.abort();
    if let Some(simulator) = simulator {
        if let Ok(Err(error)) = simulator.await {
            tracing::warn!(%error, "simulator stopped with an error");
        }
    }
    let report = outcome.context("processor thread panicked")??;
    tracing::info!(?report, "stopped");
    drop(embedded);
    Ok(())
}

fn print_dev_banner(settings: &Settings, bootstrap: &str) {
    let k = &settings.kafka;
    eprintln!(
        "\n================ geopromo DEV MODE: embedded, NON-DURABLE Kafka broker ================\n\
         bootstrap servers : {bootstrap}\n\
         input topic       : {}   (JSON GPS events, key = user id)\n\
         output topic      : {}\n\
         dead letters      : {}\n\
         Everything is lost on exit, and only a bounded tail of each partition is kept.\n\
         Set kafka.brokers (or GEOPROMO__KAFKA__BROKERS) to use a real cluster.\n\
         Try: echo 'user-1:{{\"user_id\":\"user-1\",\"lat\":-6.2,\"lon\":106.82,\"ts\":\"2026-11-22T08:00:00Z\"}}' \\\n\
              | kcat -b {bootstrap} -t {} -K: -P\n\
         ======================================================================================\n",
        k.input_topic, k.output_topic, k.dlq_topic, k.input_topic
    );
}

/// Serves `/metrics` and `/healthz`; returns the bound address (useful with port 0).
pub async fn serve_metrics(listen: &str, registry: Registry) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for metrics"))?;
    let address = listener.local_addr()?;
    let registry = Arc::new(registry);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        encode_metrics(&registry),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok(address)
}

async fn reload_on_sighup(settings: Settings, catalog: Arc<SharedCatalog>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangups.recv().await.is_some() {
        let settings = settings.clone();
        match tokio::task::spawn_blocking(move || load_catalog(&settings)).await {
            Ok(Ok(fresh)) => {
                catalog.store(Arc::new(fresh));
                tracing::info!("SIGHUP: fences and promotions reloaded and swapped in");
            }
            Ok(Err(error)) => {
                tracing::error!("SIGHUP: reload refused, keeping the current catalog: {error:#}")
            }
            Err(error) => tracing::error!(%error, "SIGHUP: reload panicked"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
}

/// Loads settings from `dir`, for commands that need them.
pub fn settings_from(dir: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(dir)?)
}
