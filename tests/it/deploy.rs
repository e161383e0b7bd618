//! `deploy/` cannot be run here (no images can be pulled), so its invariants are checked by parsing it:
//! the compose file describes a 3-broker KRaft cluster with replication that survives one broker, every
//! geopromo instance reaches all brokers and exports traces, Prometheus scrapes every instance, and
//! every metric the alert rules and the dashboard use is one the service really exports.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;

use crate::common::process::{get, Running};

fn deploy(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// A service's environment as a map, whichever form (map or `KEY=value` list) compose was given.
fn environment(service: &Value) -> HashMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => HashMap::new(),
    }
}

fn command_text(service: &Value) -> String {
    match &service["command"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

#[test]
fn compose_runs_three_kraft_brokers_that_survive_one_loss() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_object().expect("services");
    let brokers: Vec<(&String, HashMap<String, String>)> = services
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("apache/kafka:"))
        })
        .map(|(name, s)| (name, environment(s)))
        .collect();
    assert_eq!(brokers.len(), 3, "three Kafka brokers");

    let node_ids: BTreeSet<&str> = brokers
        .iter()
        .map(|(_, env)| env["KAFKA_NODE_ID"].as_str())
        .collect();
    assert_eq!(node_ids.len(), 3, "distinct node ids: {node_ids:?}");
    let cluster_ids: BTreeSet<&str> = brokers
        .iter()
        .map(|(_, env)| env["CLUSTER_ID"].as_str())
        .collect();
    assert_eq!(cluster_ids.len(), 1, "one cluster id shared by all brokers");
    let voters: BTreeSet<&str> = brokers
        .iter()
        .map(|(_, env)| env["KAFKA_CONTROLLER_QUORUM_VOTERS"].as_str())
        .collect();
    assert_eq!(
        voters.len(),
        1,
        "one controller quorum shared by all brokers"
    );
    let voters = voters.into_iter().next().unwrap();
    for (name, env) in &brokers {
        assert!(
            env["KAFKA_PROCESS_ROLES"].contains("controller")
                && env["KAFKA_PROCESS_ROLES"].contains("broker"),
            "{name} is a KRaft broker and controller"
        );
        assert!(
            voters.contains(&format!("{}@{name}:", env["KAFKA_NODE_ID"])),
            "{name} (node {}) is a quorum voter: {voters}",
            env["KAFKA_NODE_ID"]
        );
        assert!(
            !env.contains_key("KAFKA_ZOOKEEPER_CONNECT"),
            "{name}: no ZooKeeper"
        );
        assert_eq!(env["KAFKA_DEFAULT_REPLICATION_FACTOR"], "3", "{name}");
        assert_eq!(env["KAFKA_MIN_INSYNC_REPLICAS"], "2", "{name}");
        assert_eq!(
            env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], "3",
            "{name}: committed offsets replicated"
        );
        assert_eq!(
            env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"], "3",
            "{name}"
        );
        assert_eq!(
            env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false",
            "{name}: topics come from `topics create`"
        );
    }
    let advertised: Vec<String> = brokers
        .iter()
        .map(|(_, env)| {
            env["KAFKA_ADVERTISED_LISTENERS"]
                .split("//")
                .nth(1)
                .expect("PLAINTEXT://host:port")
                .to_owned()
        })
        .collect();

    // The one-shot setup creates the topics replicated 3 ways with min.insync.replicas 2.
    let setup = command_text(&services["setup"]);
    assert!(setup.contains("geopromo topics create"), "{setup}");
    assert!(setup.contains("--replication-factor 3"), "{setup}");
    assert!(setup.contains("--min-insync-replicas 2"), "{setup}");

    let geopromo: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str() == Some("geopromo:local"))
        .collect();
    let role_count = |role: &str| {
        geopromo
            .iter()
            .filter(|(_, s)| command_text(s) == role)
            .count()
    };
    assert_eq!(role_count("process"), 2, "two processor instances");
    assert_eq!(role_count("api"), 2, "two API instances");
    let mut instance_ids = BTreeSet::new();
    for (name, service) in &geopromo {
        let env = environment(service);
        let configured: BTreeSet<&str> = env["GEOPROMO__KAFKA__BROKERS"].split(',').collect();
        for broker in &advertised {
            assert!(
                configured.contains(broker.as_str()),
                "{name} reaches {broker}: {configured:?}"
            );
        }
        assert!(
            env["GEOPROMO__DATABASE__URL"].starts_with("postgres://"),
            "{name}: shared PostgreSQL"
        );
        if command_text(service) == "process" || command_text(service) == "api" {
            assert_eq!(
                env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
                Some("http://jaeger:4318"),
                "{name} exports traces to Jaeger's OTLP/HTTP port"
            );
            assert!(env.contains_key("OTEL_SERVICE_NAME"), "{name}");
        }
        if command_text(service) == "process" {
            assert!(
                instance_ids.insert(env["GEOPROMO__KAFKA__INSTANCE_ID"].clone()),
                "{name}: static membership needs a distinct instance id"
            );
        }
    }
    for required in ["postgres", "jaeger", "prometheus", "grafana"] {
        assert!(services.contains_key(required), "the fleet has {required}");
    }
}

#[test]
fn prometheus_scrapes_every_instance_and_loads_the_alert_rules() {
    let compose = yaml("compose.yaml");
    let prometheus = yaml("prometheus/prometheus.yml");
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_array().unwrap().iter())
        .flat_map(|config| config["targets"].as_array().unwrap().iter())
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    for (name, service) in compose["services"].as_object().unwrap() {
        let port = match command_text(service).as_str() {
            "process" => "9898",
            "api" => "8080",
            _ => continue,
        };
        assert!(
            targets.contains(&format!("{name}:{port}")),
            "{name} scraped: {targets:?}"
        );
    }
    let mounted = compose["services"]["prometheus"]["volumes"].to_string();
    for file in prometheus["rule_files"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        assert!(mounted.contains(file), "{file} is mounted: {mounted}");
    }
}

/// Every `geopromo_*` series name in an expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("geopromo_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every series name `geopromo serve` exposes (counters with `_total`, histograms with their parts).
fn exported_series() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let serve = Running::start(dir.path(), &["serve"], &[]);
    let address = serve.api_address();
    let (status, text) = get(address, "/metrics");
    assert_eq!(status, 200, "{text}");
    let mut series = BTreeSet::new();
    for line in text.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = declared.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                series.insert(format!("{name}_total"));
            }
            "histogram" => {
                for part in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{name}{part}"));
                }
            }
            _ => {
                series.insert(name.to_owned());
            }
        }
    }
    series
}

#[test]
fn alerts_and_dashboard_use_only_metrics_the_service_exports() {
    let alerts = yaml("prometheus/alerts.yml");
    let rules: Vec<&Value> = alerts["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .collect();
    let alert_names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        alert_names.len(),
        rules.len(),
        "every rule is a named alert"
    );
    let dashboard: Value =
        serde_json::from_str(&deploy("grafana/dashboards/geopromo.json")).unwrap();
    let mut used: Vec<(String, String)> = rules
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            used.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let exported = exported_series();
    assert!(
        exported.contains("geopromo_consumer_partition_lag"),
        "{exported:?}"
    );
    for (what, expr) in &used {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what}: {expr} uses a geopromo metric");
        for name in names {
            assert!(
                exported.contains(&name),
                "{what} uses {name}, which the service does not export"
            );
        }
    }
    // The alert list: lag, DLQ rate, catalog that does not build, revocation poll, delivery, 5xx.
    let all_alert_exprs: String = rules.iter().map(|r| r["expr"].as_str().unwrap()).collect();
    for needed in [
        "geopromo_consumer_lag",
        "geopromo_events_dead_lettered_total",
        "geopromo_catalog_version",
        "geopromo_auth_poll_failures_total",
        "geopromo_delivery_failures_total",
        "geopromo_http_requests_total",
    ] {
        assert!(
            all_alert_exprs.contains(needed),
            "an alert watches {needed}"
        );
    }
    // Grafana provisions the dashboard from where compose mounts it.
    let provider = yaml("grafana/provisioning/dashboards/geopromo.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let compose = yaml("compose.yaml");
    let mounts = compose["services"]["grafana"]["volumes"].to_string();
    assert!(
        mounts.contains(&format!("./grafana/dashboards:{path}")),
        "{mounts}"
    );
}

#[test]
fn dockerfile_builds_in_stages_and_runs_as_a_non_root_user() {
    let dockerfile = deploy("Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage build");
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert_ne!(user.trim(), "root");
    assert!(dockerfile.contains("--bin geopromo"));
    assert!(
        dockerfile.contains("geodata/cities.geojson"),
        "the seed data ships in the image"
    );
}
