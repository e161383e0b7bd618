//! `spawn_app()`: the HTTP API on 127.0.0.1:0 against a fresh store (SQLite file or PostgreSQL database),
//! with real authentication and a plain HTTP/1.1 client. Every response is checked against the OpenAPI
//! document: the status must be documented for the operation and the JSON body must match its schema.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use geopromo::api::LocationSink;
use geopromo::app::{ApiParts, ApiServer};
use geopromo::auth::{Auth, ClientKind, Role};
use geopromo::config::AuthSettings;
use geopromo::geofence::{parse_fences, IndexOptions, ParseOptions};
use geopromo::promo::{parse_promotions, Catalog, RuleOptions, SharedCatalog};
use geopromo::store::Store;
use geopromo::stream::EmbeddedBroker;

use super::fresh_postgres_url;

pub use geopromo::store::Backend;

pub struct TestApp {
    pub address: SocketAddr,
    pub store: Store,
    pub auth: Arc<Auth>,
    pub brokers: String,
    pub backend: Backend,
    /// An access token per role name ("mobile", "ops", "consumer", "admin"); the mobile user is `tester`,
    /// the others `tester-{role}`.
    pub tokens: HashMap<&'static str, String>,
    /// What `/v1/events/stream` serves; tests push output records into it or start a feed.
    pub live: Arc<geopromo::live::LiveHub>,
    /// Stops serving when the app is dropped.
    _server: ApiServer,
    _broker: Rc<EmbeddedBroker>,
    _dir: Option<Rc<tempfile::TempDir>>,
}

/// Test auth settings: cheap Argon2 (the cost is not under test), fast revocation polling, loose limits.
pub fn test_auth_settings() -> AuthSettings {
    AuthSettings {
        argon2_memory_kib: 8 * 1024,
        argon2_iterations: 1,
        revocation_poll_ms: 100,
        login_ip_burst: 1000,
        login_account_burst: 1000,
        refresh_ip_burst: 1000,
        ..AuthSettings::default()
    }
}

const APP_FENCES: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","id":"square","properties":{"name":"Square","tolerance_m":750},
  "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]]]}}]}"#;

/// The catalog `/v1/match` answers from: one square, one promotion on it.
fn match_catalog() -> Arc<SharedCatalog> {
    let fences = parse_fences(APP_FENCES.as_bytes(), &ParseOptions::default())
        .unwrap()
        .fences;
    let promotions =
        parse_promotions(br#"{"promotions":[{"id":"coffee","fences":["square"]}]}"#).unwrap();
    let catalog = Catalog::build(
        fences,
        promotions,
        RuleOptions::default(),
        IndexOptions::default(),
    )
    .unwrap();
    Arc::new(SharedCatalog::from_pointee(catalog))
}

pub async fn fresh_store(backend: Backend) -> (Store, Option<Rc<tempfile::TempDir>>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("api.sqlite").display());
            (Store::connect(&url).await.unwrap(), Some(Rc::new(dir)))
        }
        Backend::Postgres => {
            let url = fresh_postgres_url("geopromo_api").await;
            (Store::connect(&url).await.unwrap(), None)
        }
    }
}

/// One app per backend, sharing one embedded broker.
pub async fn spawn_apps() -> Vec<TestApp> {
    let broker = Rc::new(embedded_broker());
    let mut apps = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (store, dir) = fresh_store(backend).await;
        apps.push(spawn_app_on(store, dir, backend, broker.clone(), test_auth_settings()).await);
    }
    apps
}

pub fn embedded_broker() -> EmbeddedBroker {
    let kafka = geopromo::config::KafkaSettings {
        embedded_partitions: 2,
        ..Default::default()
    };
    EmbeddedBroker::start(&kafka, 1).unwrap()
}

/// The API on 127.0.0.1:0 over `store`, with users and tokens for every role.
pub async fn spawn_app_on(
    store: Store,
    dir: Option<Rc<tempfile::TempDir>>,
    backend: Backend,
    broker: Rc<EmbeddedBroker>,
    settings: AuthSettings,
) -> TestApp {
    let live = Arc::new(geopromo::live::LiveHub::default());
    spawn_app_with_hub(store, dir, backend, broker, settings, live).await
}

/// As [`spawn_app_on`], streaming events from `live`.
pub async fn spawn_app_with_hub(
    store: Store,
    dir: Option<Rc<tempfile::TempDir>>,
    backend: Backend,
    broker: Rc<EmbeddedBroker>,
    settings: AuthSettings,
    live: Arc<geopromo::live::LiveHub>,
) -> TestApp {
    let brokers = broker.bootstrap_servers().to_owned();
    let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    // The same wiring as production: `app::start_api` (only the catalog and the body limit differ).
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = geopromo::app::start_api(
        ApiParts {
            listen: "127.0.0.1:0".into(),
            store: store.clone(),
            catalog: match_catalog(),
            locations: Some(LocationSink {
                producer,
                topic: "gps-events".into(),
            }),
            auth: settings,
            max_body_bytes: 64 * 1024,
            registry: prometheus_client::registry::Registry::default(),
            live: live.clone(),
            console: geopromo::config::ConsoleSettings::default(),
        },
        &shutdown,
    )
    .await
    .unwrap();
    let (address, auth) = (server.address, server.auth.clone());
    let mut tokens = HashMap::new();
    for (name, role, client) in [
        ("mobile", Role::Mobile, ClientKind::Mobile),
        ("ops", Role::Ops, ClientKind::Ops),
        ("consumer", Role::Consumer, ClientKind::Consumer),
        ("admin", Role::Admin, ClientKind::Ops),
    ] {
        let user = if name == "mobile" {
            "tester".to_owned()
        } else {
            format!("tester-{name}")
        };
        if auth.store().user_by_id(&user).await.unwrap().is_none() {
            auth.create_user(&user, PASSWORD.into(), vec![role], None)
                .await
                .unwrap();
        }
        let issued = auth
            .issue_session(&user, client, Some("test".into()))
            .await
            .unwrap();
        tokens.insert(name, issued.access_token);
    }
    TestApp {
        address,
        store,
        auth,
        brokers,
        backend,
        tokens,
        live,
        _server: server,
        _broker: broker,
        _dir: dir,
    }
}

/// The password of every test user.
pub const PASSWORD: &str = "correct horse battery";

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request to send.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub content_type: Option<String>,
}

impl Call {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            ..Self::default()
        }
    }

    #[must_use]
    pub fn bearer(mut self, token: &str) -> Self {
        self.headers
            .push(("Authorization".into(), format!("Bearer {token}")));
        self
    }

    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub fn json(mut self, body: &str) -> Self {
        self.body = Some(body.into());
        self.content_type = Some("application/json".into());
        self
    }

    #[must_use]
    pub fn form(mut self, body: &str) -> Self {
        self.body = Some(body.into());
        self.content_type = Some("application/x-www-form-urlencoded".into());
        self
    }
}

/// Sends `call` to `address` over a plain socket and checks the reply against the OpenAPI document.
pub async fn send(address: SocketAddr, call: Call) -> Reply {
    let request = call.clone();
    let reply = tokio::task::spawn_blocking(move || raw_http(address, &request))
        .await
        .unwrap();
    check_against_openapi(&call, &reply);
    reply
}

/// `send` with the token of `role` (None: no Authorization header) and an optional JSON body.
pub async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    role: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut request = Call::new(method, path);
    if let Some(role) = role {
        request = request.bearer(&app.tokens[role]);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    send(app.address, request).await
}

fn raw_http(address: SocketAddr, call: &Call) -> Reply {
    let mut stream = TcpStream::connect(address).unwrap();
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n",
        call.method, call.path
    );
    for (name, value) in &call.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = &call.body {
        request.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            call.content_type.as_deref().unwrap_or("application/json"),
            body.len()
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    if let Some(body) = &call.body {
        // The server may answer (413) and close before reading a huge body.
        let _ = stream.write_all(body.as_bytes());
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0")
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let content_type = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        headers,
        body: body.to_owned(),
    }
}

fn openapi() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(geopromo::api::docs::openapi)
}

/// The documented operation for a method and a concrete path (`/v1/fences/abc` → `/v1/fences/{id}`).
pub fn operation(method: &str, path: &str) -> Option<(&'static str, &'static serde_json::Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    openapi()["paths"]
        .as_object()?
        .iter()
        .filter(|(template, _)| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        // A literal segment beats a parameter (`/v1/auth/sessions` over a `{id}` sibling).
        .min_by_key(|(template, _)| template.matches('{').count())
        .and_then(|(template, item)| {
            item.get(method.to_lowercase())
                .map(|op| (template.as_str(), op))
        })
}

/// Panics unless the reply's status is documented for the operation (or covered by `default`) and a
/// JSON body matches the documented schema.
pub fn check_against_openapi(call: &Call, reply: &Reply) {
    if call.path.starts_with("/console") {
        return; // the console's page and files: not API, not in the document
    }
    let Some((template, operation)) = operation(&call.method, &call.path) else {
        // Undocumented routes must be answered 404 (or 405) as problem+json.
        assert!(
            matches!(reply.status, 404 | 405),
            "{} {} is not in the OpenAPI document but answered {}",
            call.method,
            call.path,
            reply.status
        );
        return;
    };
    let responses = &operation["responses"];
    let response = responses
        .get(reply.status.to_string())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| {
            panic!(
                "{} {template}: status {} is not documented: {}",
                call.method, reply.status, reply.body
            )
        });
    let media = reply
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if !(media.ends_with("json")) {
        return;
    }
    let content = &response["content"];
    let schema = content
        .get(&media)
        .map(|c| &c["schema"])
        .unwrap_or_else(|| {
            panic!(
                "{} {template} {}: content type {media} is not documented ({content})",
                call.method, reply.status
            )
        });
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.insert("components".into(), openapi()["components"].clone());
    }
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} {template}: unusable schema: {e}", call.method));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| {
        panic!(
            "{} {template}: body is not JSON ({e}): {}",
            call.method, reply.body
        )
    });
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} {template} {}: the body does not match the OpenAPI schema: {errors:?}\nbody: {}",
        call.method,
        reply.status,
        reply.body
    );
}
