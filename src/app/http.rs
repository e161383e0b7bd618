//! The HTTP servers: the API (authentication started with it) and the standalone metrics endpoint. Both
//! stop gracefully: on shutdown they stop accepting connections and let requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use rdkafka::producer::FutureProducer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiShared, ApiState, LocationSink};
use crate::auth::Auth;
use crate::config::{AuthSettings, KafkaSettings};
use crate::error::error_chain;
use crate::promo::SharedCatalog;
use crate::store::Store;
use crate::stream::client::{client_config, KafkaClient};
use crate::telemetry::{encode_metrics, HttpMetrics};

/// How long requests in flight may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the API serves from. Production and tests build the API through [`start_api`] with this,
/// so both run the same wiring.
pub struct ApiParts {
    /// `host:port`; port 0 picks a free one (see [`ApiServer::address`]).
    pub listen: String,
    pub store: Store,
    pub catalog: Arc<SharedCatalog>,
    /// Where posted locations go; `None` answers 503 to them.
    pub locations: Option<LocationSink>,
    pub auth: AuthSettings,
    /// Largest GeoJSON upload.
    pub max_body_bytes: usize,
    /// Served at `/metrics`, with the HTTP request metrics added.
    pub registry: Registry,
    /// The live events the API streams (fed by [`crate::stream::feed::run_live_feed`]).
    pub live: Arc<crate::live::LiveHub>,
    pub console: crate::config::ConsoleSettings,
}

/// A running HTTP API.
pub struct ApiServer {
    pub address: SocketAddr,
    pub auth: Arc<Auth>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    refresher: JoinHandle<()>,
}

impl ApiServer {
    /// Stops accepting connections, waits (up to 10 s) for requests in flight, then stops the
    /// revocation refresher.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, server).await.is_err() {
                tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; cut");
                abort.abort();
            }
        }
        self.refresher.abort();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.refresher.abort();
    }
}

/// The producer posted locations go through: idempotent, with a short linger (a request waits for it).
pub fn locations_sink(kafka: &KafkaSettings, brokers: &str) -> anyhow::Result<LocationSink> {
    let mut config = client_config(kafka, brokers, KafkaClient::Producer);
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "2");
    let producer: FutureProducer = config
        .create()
        .context("cannot create the locations producer")?;
    Ok(LocationSink {
        producer,
        topic: kafka.input_topic.clone(),
    })
}

/// Starts authentication (keys, revocations, the refresher) and serves the HTTP API until `shutdown`
/// is cancelled (or [`ApiServer::stop`]).
pub async fn start_api(parts: ApiParts, shutdown: &CancellationToken) -> anyhow::Result<ApiServer> {
    let listener = tokio::net::TcpListener::bind(&parts.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the API", parts.listen))?;
    let address = listener.local_addr()?;
    let auth = Auth::start(parts.store.clone(), parts.auth)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("cannot start authentication")?;
    let refresher = auth.spawn_refresher();
    let mut registry = parts.registry;
    auth.register_metrics(&mut registry);
    let shutdown = shutdown.child_token();
    let app = crate::api::router(ApiState::new(ApiShared {
        live: parts.live,
        shutdown: shutdown.clone(),
        console: Arc::new(parts.console),
        store: parts.store,
        auth: auth.clone(),
        max_body_bytes: parts.max_body_bytes,
        catalog: parts.catalog,
        locations: parts.locations,
        http_metrics: HttpMetrics::registered(&mut registry),
        registry: Arc::new(registry),
    }));
    let stopped = shutdown.clone();
    let server = tokio::spawn(async move {
        if let Err(error) = crate::api::serve(listener, app, stopped.cancelled_owned()).await {
            tracing::error!(%error, "API server stopped");
        }
    });
    Ok(ApiServer {
        address,
        auth,
        shutdown,
        server: Some(server),
        refresher,
    })
}

/// Tells a developer how to get the first admin when nobody can log in yet: with this very binary (run
/// from this directory, so the command reaches the same store) and the address the API listens on.
pub async fn print_first_admin_hint(store: &Store, api: SocketAddr) {
    if store.count_users().await.unwrap_or(1) == 0 {
        let binary = std::env::current_exe()
            .map(|path| path.display().to_string())
            .unwrap_or_else(|_| "geopromo".to_owned());
        eprintln!(
            "\nNo users yet. Create the first admin, who can also manage fences and promotions (asks for \
             the password; --password-stdin for scripts), from this directory:\n  \
             {binary} user add admin --role admin --role ops\n\
             then log in: curl -s http://{api}/v1/auth/login -H 'content-type: application/json' \\\n    \
             -d '{{\"username\":\"admin\",\"password\":\"...\",\"client\":\"ops\"}}'\n"
        );
    }
}

/// The standalone `/metrics` and `/healthz` endpoint of the processor.
pub struct MetricsServer {
    pub address: SocketAddr,
    server: JoinHandle<()>,
}

impl MetricsServer {
    /// Serves until `shutdown` is cancelled.
    pub async fn start(
        listen: &str,
        registry: Registry,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
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
        let stopped = shutdown.clone();
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await
            {
                tracing::error!(%error, "metrics server stopped");
            }
        });
        Ok(Self { address, server })
    }

    /// Waits for the server to finish after shutdown was cancelled.
    pub async fn stopped(self) {
        let mut server = self.server;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("metrics server still running after {DRAIN_TIMEOUT:?}; cut");
            server.abort();
        }
    }
}
