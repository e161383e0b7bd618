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

use std::time::Duration;

use crate::auth::Auth;
use crate::config::Settings;
use crate::geofence::{parse_fences, Fence, IndexOptions, ParseOptions};
use crate::promo::timestamp::now_ms;
use crate::promo::{parse_promotions, Catalog, SharedCatalog};
use crate::promo::{EligibilityEvent, TransitionKind};
use crate::store::{Eligibility, EligibilityChange, Store};
use crate::stream::simulate::{run_simulation, SimulateOptions};
use crate::stream::{EmbeddedBroker, Processor};
use crate::telemetry::{encode_metrics, PipelineMetrics};

/// The seed data built into the binary, so that `geopromo serve` runs from any directory: used when
/// `fences.path` / `promotions.path` are left empty (the default).
const BUILTIN_FENCES: &[u8] = include_bytes!("../geodata/cities.geojson");
const BUILTIN_PROMOTIONS: &[u8] = include_bytes!("../config/promotions.json");

/// Where seed data came from, for messages: the configured file or the built-in copy.
fn seed_source(path: &std::path::Path, builtin: &str) -> String {
    if path.as_os_str().is_empty() {
        format!("built-in {builtin}")
    } else {
        path.display().to_string()
    }
}

fn read_seed(
    path: &std::path::Path,
    builtin: &'static [u8],
    what: &str,
) -> anyhow::Result<std::borrow::Cow<'static, [u8]>> {
    if path.as_os_str().is_empty() {
        return Ok(std::borrow::Cow::Borrowed(builtin));
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {what} from {}", path.display()))?;
    Ok(std::borrow::Cow::Owned(bytes))
}

/// Reads and validates the fence file named in the settings (the built-in cities when none is named).
pub fn load_fence_file(settings: &Settings) -> anyhow::Result<Vec<Fence>> {
    let path = &seed_source(&settings.fences.path, "geodata/cities.geojson");
    let bytes = read_seed(&settings.fences.path, BUILTIN_FENCES, "fences")?;
    let options = ParseOptions::default()
        .default_tolerance_m(settings.fences.default_tolerance_m)
        .skip_invalid(settings.fences.skip_invalid);
    let parsed = parse_fences(&bytes, &options).map_err(|err| {
        let details = match &err {
            crate::geofence::GeoJsonError::Invalid { .. } => err.report_lines().join("\n  "),
            _ => String::new(),
        };
        anyhow::anyhow!("{path}: {err}\n  {details}")
    })?;
    for line in crate::geofence::geojson::problem_lines(&parsed.skipped) {
        tracing::warn!(file = %path, "skipped: {line}");
    }
    Ok(parsed.fences)
}

/// Builds the catalog (fences × promotions × rules) from the files named in the settings.
pub fn load_catalog(settings: &Settings) -> anyhow::Result<Catalog> {
    let fences = load_fence_file(settings)?;
    let promotions = load_promotion_file(settings)?;
    let catalog = Catalog::build(
        &fences,
        promotions,
        settings.rules.to_options(),
        IndexOptions::default().cells_per_degree(settings.fences.cells_per_degree),
    )
    .with_context(|| {
        format!(
            "{} does not fit {}",
            seed_source(&settings.promotions.path, "config/promotions.json"),
            seed_source(&settings.fences.path, "geodata/cities.geojson"),
        )
    })?;
    Ok(catalog)
}

/// Reads the promotions file named in the settings (the built-in sample when none is named).
pub fn load_promotion_file(settings: &Settings) -> anyhow::Result<Vec<crate::promo::Promotion>> {
    let bytes = read_seed(&settings.promotions.path, BUILTIN_PROMOTIONS, "promotions")?;
    parse_promotions(&bytes).with_context(|| {
        format!(
            "in {}",
            seed_source(&settings.promotions.path, "config/promotions.json")
        )
    })
}

/// Connects to the store and, when it holds no fences yet, seeds it from the fence and promotion files.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database.url).await?;
    if store.catalog_version().await? == 0 {
        let fences = load_fence_file(settings)?;
        let promotions = load_promotion_file(settings)?;
        if store.seed_if_empty(&fences, &promotions, now_ms()).await? {
            tracing::info!(
                fences = fences.len(),
                promotions = promotions.len(),
                "empty store seeded from {} and {}",
                seed_source(&settings.fences.path, "geodata/cities.geojson"),
                seed_source(&settings.promotions.path, "config/promotions.json")
            );
        }
    }
    Ok(store)
}

/// Builds the catalog from what the store holds; returns it with the version it reflects. Rows that
/// cannot be used are quarantined (left out, logged as errors, listed by `/readyz` and counted by the
/// `catalog_quarantined` metric): a service never refuses to start on stored data.
pub async fn catalog_from_store(
    store: &Store,
    settings: &Settings,
) -> anyhow::Result<(Catalog, i64)> {
    // Read the version first: a change racing with the load is then picked up by the next poll.
    let version = store.catalog_version().await?;
    let parts = store.load_catalog_parts().await?;
    for line in &parts.quarantined {
        tracing::error!(catalog_version = version, "QUARANTINED stored data: {line}");
    }
    let rules = settings.rules.to_options();
    let cells = settings.fences.cells_per_degree;
    let catalog = tokio::task::spawn_blocking(move || {
        Catalog::build(
            &parts.fences,
            parts.promotions,
            rules,
            IndexOptions::default().cells_per_degree(cells),
        )
        .map(|catalog| catalog.with_quarantined(parts.quarantined))
    })
    .await
    .context("catalog build panicked")?
    .context("the stored catalog does not build")?;
    if catalog.active_promotions() == 0 {
        tracing::warn!(
            "NO ACTIVE PROMOTION in the store: every point is matched and nobody becomes eligible. \
             Add one with POST /v1/promotions or `geopromo promotions import FILE`"
        );
    }
    Ok((catalog, version))
}

/// Keeps `catalog` in step with the store: polls the version and swaps in a rebuilt catalog when it
/// changes (readers keep matching against the old one until the swap). A change that does not build is
/// logged and the current catalog stays.
pub async fn follow_catalog(
    store: Store,
    settings: Settings,
    catalog: Arc<SharedCatalog>,
    mut version: i64,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(
        settings.database.poll_interval_ms.max(50),
    ));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match store.catalog_version().await {
            Ok(current) if current != version => {
                match catalog_from_store(&store, &settings).await {
                    Ok((fresh, loaded)) => {
                        catalog.store(Arc::new(fresh));
                        tracing::info!(
                            from = version,
                            to = loaded,
                            "catalog changed in the store; swapped in"
                        );
                        version = loaded;
                    }
                    Err(error) => {
                        tracing::error!("catalog version {current} does not build, keeping {version}: {error:#}");
                        version = current;
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot poll the catalog version"),
        }
    }
}

/// Materialises eligibility events in the store, in batches, off the processing thread.
fn eligibility_writer(
    store: Store,
) -> (
    crate::stream::processor::EmitHook,
    tokio::task::JoinHandle<()>,
) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<EligibilityChange>(10_000);
    let hook: crate::stream::processor::EmitHook = Box::new(move |event: &EligibilityEvent| {
        let change = match event.kind {
            TransitionKind::Enter => EligibilityChange::Enter(Eligibility {
                user_id: event.user_id.clone(),
                promotion_id: event.promotion_id.clone(),
                fence_id: event.fence_id.clone(),
                since_ms: crate::promo::timestamp::parse_rfc3339_ms(&event.event_ts)
                    .unwrap_or_default(),
                event_id: event.event_id.clone(),
            }),
            TransitionKind::Exit => EligibilityChange::Exit {
                user_id: event.user_id.clone(),
                promotion_id: event.promotion_id.clone(),
            },
        };
        // Blocks the processor when the store falls 10k changes behind: backpressure, not loss.
        let _ = sender.blocking_send(change);
    });
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(500);
        while receiver.recv_many(&mut batch, 500).await > 0 {
            // While the database is unreachable the batch is retried (the bounded channel then holds
            // the processor back): an outage delays the store's view, it does not lose changes.
            let mut wait = std::time::Duration::from_millis(100);
            loop {
                match store.record_eligibility(&batch, now_ms()).await {
                    Ok(()) => break,
                    Err(error) if error.is_unavailable() => {
                        tracing::warn!(error = %error_chain(&error), changes = batch.len(),
                            "database unavailable; retrying the eligibility batch in {wait:?}");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(2));
                    }
                    Err(error) => {
                        tracing::error!(error = %error_chain(&error), changes = batch.len(),
                            "cannot record eligibility; batch dropped");
                        break;
                    }
                }
            }
            batch.clear();
        }
    });
    (hook, writer)
}

/// What `serve` runs besides the processor.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Also produce simulated traffic into the input topic.
    pub simulate: Option<SimulateOptions>,
    /// Refuse to start the embedded broker (the `process` command): brokers must be configured.
    pub require_brokers: bool,
    /// Serve the HTTP API on `api.listen` (`serve` does; `process` is the processor alone).
    pub api: bool,
}

/// Runs the processor (and, with no brokers configured, the embedded broker) until `shutdown` resolves or
/// the processor fails. Fences and promotions come from the store (seeded from the files when empty);
/// changes there are swapped in within `database.poll_interval_ms`, without pausing.
pub async fn serve(
    settings: Settings,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    let (initial, version) = catalog_from_store(&store, &settings).await?;
    let catalog = Arc::new(SharedCatalog::from_pointee(initial));
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

    let api = if options.api && !settings.api.listen.is_empty() {
        let server = start_api(
            &settings,
            store.clone(),
            catalog.clone(),
            Some(&brokers),
            metrics.registry(),
        )
        .await?;
        tracing::info!(address = %server.address, "HTTP API at http://{}/v1 (docs at /docs)", server.address);
        print_first_admin_hint(&store).await;
        Some(server)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (hook, writer) = eligibility_writer(store.clone());
    let processor = Processor::new(
        settings.kafka.clone(),
        brokers.clone(),
        catalog.clone(),
        metrics,
    )
    .on_emit(hook);
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

    let follower = tokio::spawn(follow_catalog(
        store.clone(),
        settings.clone(),
        catalog.clone(),
        version,
    ));

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
    follower.abort();
    // The processor thread has ended and dropped its hook, so the writer drains and finishes.
    let _ = writer.await;
    if let Some(simulator) = simulator {
        if let Ok(Err(error)) = simulator.await {
            tracing::warn!(%error, "simulator stopped with an error");
        }
    }
    drop(api);
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
         Everything is lost on exit, and each partition keeps only its newest ~100,000 records\n\
         ({} partitions: a burst of more than ~{} events ahead of the processor is partly\n\
         skipped; each skip is logged as OFFSET RESET and counted in input_offsets_skipped).\n\
         Set kafka.brokers (or GEOPROMO__KAFKA__BROKERS) to use a real cluster.\n\
         Try: echo 'user-1:{{\"user_id\":\"user-1\",\"lat\":-6.2,\"lon\":106.82,\"ts\":\"2026-11-22T08:00:00Z\"}}' \\\n\
              | kcat -b {bootstrap} -t {} -K: -P\n\
         ======================================================================================\n",
        k.input_topic,
        k.output_topic,
        k.dlq_topic,
        k.embedded_partitions,
        i64::from(k.embedded_partitions) * 100_000,
        k.input_topic
    );
}

/// A running HTTP API.
pub struct ApiServer {
    pub address: SocketAddr,
    pub auth: Arc<Auth>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts authentication (keys, revocations, the refresher) and serves the HTTP API on `api.listen`.
/// Locations are produced to `brokers` when given; without, `POST /v1/locations` answers 503.
pub async fn start_api(
    settings: &Settings,
    store: Store,
    catalog: Arc<SharedCatalog>,
    brokers: Option<&str>,
    mut registry: Registry,
) -> anyhow::Result<ApiServer> {
    let listener = tokio::net::TcpListener::bind(&settings.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the API", settings.api.listen))?;
    let address = listener.local_addr()?;
    let locations = match brokers {
        Some(brokers) => {
            let mut producer_config = crate::stream::client::client_config(
                &settings.kafka,
                brokers,
                crate::stream::client::Role::Producer,
            );
            producer_config
                .set("enable.idempotence", "true")
                .set("linger.ms", "2");
            let producer: rdkafka::producer::FutureProducer = producer_config
                .create()
                .context("cannot create the locations producer")?;
            Some(crate::api::LocationSink {
                producer,
                topic: settings.kafka.input_topic.clone(),
            })
        }
        None => None,
    };
    let auth = Auth::start(store.clone(), settings.auth.clone())
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("cannot start authentication")?;
    let refresher = auth.spawn_refresher();
    let app = crate::api::router(crate::api::ApiState {
        store,
        auth: auth.clone(),
        max_body_bytes: settings.api.max_body_bytes,
        catalog,
        locations,
        http_metrics: crate::telemetry::HttpMetrics::registered(&mut registry),
        registry: Arc::new(registry),
    });
    let server = tokio::spawn(async move {
        if let Err(error) = crate::api::serve(listener, app, std::future::pending()).await {
            tracing::error!(%error, "API server stopped");
        }
    });
    Ok(ApiServer {
        address,
        auth,
        tasks: vec![refresher, server],
    })
}

/// Tells a developer how to get the first admin when nobody can log in yet.
async fn print_first_admin_hint(store: &Store) {
    if store.count_users().await.unwrap_or(1) == 0 {
        eprintln!(
            "\nNo users yet. Create the first admin, who can also manage fences and promotions (asks for \
             the password; --password-stdin for scripts):\n  \
             cargo run --release -- user add admin --role admin --role ops\n\
             then log in: curl -s localhost:8080/v1/auth/login -H 'content-type: application/json' \\\n    \
             -d '{{\"username\":\"admin\",\"password\":\"...\",\"client\":\"ops\"}}'\n"
        );
    }
}

/// The HTTP API alone (no processor): `geopromo api`. Locations go to `kafka.brokers` when configured.
pub async fn run_api(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    let (initial, version) = catalog_from_store(&store, &settings).await?;
    let catalog = Arc::new(SharedCatalog::from_pointee(initial));
    let follower = tokio::spawn(follow_catalog(
        store.clone(),
        settings.clone(),
        catalog.clone(),
        version,
    ));
    let brokers = settings.kafka.brokers.trim();
    let server = start_api(
        &settings,
        store.clone(),
        catalog,
        (!brokers.is_empty()).then_some(brokers),
        Registry::with_prefix("geopromo"),
    )
    .await?;
    tracing::info!(address = %server.address, "HTTP API at http://{}/v1 (docs at /docs)", server.address);
    print_first_admin_hint(&store).await;
    shutdown.await;
    follower.abort();
    drop(server);
    Ok(())
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
    // SIGHUP would otherwise end the process without committing offsets. There is nothing to reload:
    // fences and promotions follow the store by themselves, and settings are read once at start.
    let hangup = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signal) => loop {
                signal.recv().await;
                tracing::info!(
                    "SIGHUP ignored: fences and promotions follow the store within database.poll_interval_ms; \
                     restart to apply changed settings"
                );
            },
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
        () = hangup => {}
    }
}

/// Loads settings from `dir`, for commands that need them.
pub fn settings_from(dir: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(dir)?)
}

/// An error and its causes, `: `-separated, for logs and messages.
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
