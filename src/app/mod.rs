//! The composition root: the service is built in one straight line — store → catalog → broker →
//! metrics → API → processor — by [`Application::build`], which `main` and the tests use alike, and runs
//! until one cancellation token fires. Then everything drains in order: the processor checkpoints and
//! leaves its group, the eligibility writer writes what it was given, the catalog follower stops, and the
//! HTTP servers finish the requests in flight.
//!
//! - [`seed`]: the fence and promotion files (or built-in copies) and seeding an empty store.
//! - [`catalog`]: the catalog built from the store and kept in step with it.
//! - [`eligibility`]: the store's view of who is eligible, written from the output events.
//! - [`http`]: the API and metrics servers.
//! - [`signals`]: SIGINT/SIGTERM end the run; SIGHUP is ignored.

pub mod catalog;
pub mod eligibility;
pub mod http;
pub mod seed;
pub mod signals;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use catalog::{catalog_from_store, follow_catalog};
pub use eligibility::eligibility_writer;
pub use http::{start_api, ApiParts, ApiServer, MetricsServer};
pub use seed::{load_catalog, load_fence_file, load_promotion_file, open_store};
pub use signals::shutdown_signal;

use crate::config::Settings;
use crate::promo::SharedCatalog;
use crate::store::Store;
use crate::stream::simulate::{run_simulation, SimulateOptions};
use crate::stream::{EmbeddedBroker, Processor};
use crate::telemetry::PipelineMetrics;

/// Which parts of the service this process runs.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Also produce simulated traffic into the input topic.
    pub simulate: Option<SimulateOptions>,
    /// Refuse to start the embedded broker (the `process` command): brokers must be configured.
    pub require_brokers: bool,
    /// Serve the HTTP API on `api.listen` (`serve` does; `process` is the processor alone).
    pub api: bool,
    /// The API alone (`geopromo api`): no processor, no embedded broker; locations go to
    /// `kafka.brokers` when configured.
    pub api_only: bool,
}

/// The built service, ready to run.
pub struct Application {
    settings: Settings,
    options: ServeOptions,
    store: Store,
    catalog: Arc<SharedCatalog>,
    catalog_version: i64,
    /// The dev broker, when no brokers are configured; dropped last.
    embedded: Option<EmbeddedBroker>,
    /// Bootstrap servers the processor and the API's producer use.
    brokers: Option<String>,
    metrics: PipelineMetrics,
    metrics_server: Option<MetricsServer>,
    api: Option<ApiServer>,
    shutdown: CancellationToken,
}

impl Application {
    /// Builds every part `options` asks for, in dependency order. Fences and promotions come from the
    /// store (seeded from the files when empty).
    pub async fn build(mut settings: Settings, options: ServeOptions) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let store = open_store(&settings).await?;
        let (initial, catalog_version) = catalog_from_store(&store, &settings).await?;
        let catalog = Arc::new(SharedCatalog::from_pointee(initial));
        let (all_fences, targeted) = catalog.load().fence_counts();
        tracing::info!(
            fences = all_fences,
            targeted_fences = targeted,
            promotions = catalog.load().promotions().len(),
            "catalog loaded"
        );

        let configured = settings.kafka.brokers.trim().to_owned();
        let embedded = if configured.is_empty() && !options.api_only {
            anyhow::ensure!(
                !options.require_brokers,
                "kafka.brokers is not set (set it in config/ or GEOPROMO__KAFKA__BROKERS)"
            );
            let broker = EmbeddedBroker::start(&settings.kafka, 1)
                .context("cannot start the embedded broker")?;
            EmbeddedBroker::tune_client_settings(&mut settings.kafka);
            print_dev_banner(&settings, broker.bootstrap_servers());
            Some(broker)
        } else {
            None
        };
        let brokers = match &embedded {
            Some(broker) => Some(broker.bootstrap_servers().to_owned()),
            None => (!configured.is_empty()).then_some(configured),
        };

        let metrics = PipelineMetrics::default();
        metrics.catalog_in_use(catalog_version, catalog.load().quarantined().len());
        let metrics_server = if !options.api_only && !settings.metrics.listen.is_empty() {
            let server =
                MetricsServer::start(&settings.metrics.listen, metrics.registry(), &shutdown)
                    .await?;
            tracing::info!(address = %server.address, "metrics at http://{}/metrics", server.address);
            Some(server)
        } else {
            None
        };

        let api = if (options.api || options.api_only) && !settings.api.listen.is_empty() {
            let locations = brokers
                .as_deref()
                .map(|brokers| http::locations_sink(&settings.kafka, brokers))
                .transpose()?;
            let live = Arc::new(crate::live::LiveHub::new(settings.api.hub_limits()));
            let registry = if options.api_only {
                let mut registry = Registry::with_prefix("geopromo");
                metrics.register_catalog(&mut registry);
                registry
            } else {
                metrics.registry()
            };
            let server = start_api(
                ApiParts {
                    listen: settings.api.listen.clone(),
                    store: store.clone(),
                    catalog: catalog.clone(),
                    locations,
                    auth: settings.auth.clone(),
                    max_body_bytes: settings.api.max_body_bytes,
                    registry,
                    live: live.clone(),
                    console: settings.api.console.clone(),
                },
                &shutdown,
            )
            .await?;
            if let Some(brokers) = &brokers {
                tokio::spawn(crate::stream::feed::run_live_feed(
                    settings.kafka.clone(),
                    brokers.clone(),
                    live,
                    shutdown.clone(),
                ));
            }
            tracing::info!(address = %server.address, "HTTP API at http://{}/v1 (docs at /docs)", server.address);
            http::print_first_admin_hint(&store, server.address).await;
            Some(server)
        } else {
            None
        };

        Ok(Self {
            settings,
            options,
            store,
            catalog,
            catalog_version,
            embedded,
            brokers,
            metrics,
            metrics_server,
            api,
            shutdown,
        })
    }

    /// Where the API listens, when this process serves it.
    #[must_use]
    pub fn api_address(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|api| api.address)
    }

    /// Cancelling it stops the run (as SIGTERM does).
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled or the processor fails, then drains everything.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            settings,
            options,
            store,
            catalog,
            catalog_version,
            embedded,
            brokers,
            metrics,
            metrics_server,
            api,
            shutdown,
        } = self;
        let follower = tokio::spawn(follow_catalog(
            store.clone(),
            settings.clone(),
            catalog.clone(),
            catalog_version,
            metrics.clone(),
            shutdown.clone(),
        ));

        // The processor runs on a blocking thread and polls a flag; the token sets it.
        let stop = Arc::new(AtomicBool::new(false));
        let mut outcome = Ok(());
        if let (false, Some(brokers)) = (options.api_only, brokers) {
            let (hook, writer) = eligibility_writer(store.clone());
            let processor =
                Processor::new(settings.kafka.clone(), brokers.clone(), catalog, metrics)
                    .on_emit(hook);
            let processor_stop = stop.clone();
            let mut processor = tokio::task::spawn_blocking(move || processor.run(&processor_stop));
            let simulator = options.simulate.map(|simulate| {
                let (kafka, brokers, stop) = (settings.kafka.clone(), brokers, stop.clone());
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
            let finished = tokio::select! {
                () = shutdown.cancelled() => {
                    tracing::info!("shutting down: finishing in-flight work and committing");
                    stop.store(true, Ordering::Relaxed);
                    (&mut processor).await
                }
                finished = &mut processor => finished,
            };
            stop.store(true, Ordering::Relaxed);
            shutdown.cancel();
            // The processor thread has ended and dropped its hook, so the writer drains and finishes.
            let _ = writer.await;
            if let Some(simulator) = simulator {
                if let Ok(Err(error)) = simulator.await {
                    tracing::warn!(%error, "simulator stopped with an error");
                }
            }
            outcome = finished
                .context("processor thread panicked")
                .and_then(|result| result.map_err(anyhow::Error::from))
                // The processor logs its own report when it stops.
                .map(drop);
        } else {
            shutdown.cancelled().await;
            tracing::info!("shutting down: finishing requests in flight");
        }
        let _ = follower.await;
        if let Some(api) = api {
            api.stop().await;
        }
        if let Some(server) = metrics_server {
            server.stopped().await;
        }
        drop(embedded);
        tracing::info!("stopped");
        outcome
    }
}

/// Builds the service and runs it until `shutdown` resolves or the processor fails.
pub async fn serve(
    settings: Settings,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let application = Application::build(settings, options).await?;
    let token = application.shutdown_token();
    let signal = tokio::spawn(async move {
        shutdown.await;
        token.cancel();
    });
    let result = application.run_until_stopped().await;
    signal.abort();
    result
}

/// The HTTP API alone (no processor): `geopromo api`.
pub async fn run_api(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let options = ServeOptions {
        api_only: true,
        ..ServeOptions::default()
    };
    serve(settings, options, shutdown).await
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

/// Loads settings from `dir`, for commands that need them.
pub fn settings_from(dir: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(dir)?)
}
