//! The binary tried from outside, as a new user and as an attacker would: run from a directory that is
//! not the repository, signals, a store with a row it cannot use, an unauthenticated memory attack.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::common::process::{geopromo, get, Running};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn serve_runs_from_any_directory_and_survives_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Running::start(dir.path(), &["serve"], &[]);
    let address = serve.api_address();
    // Not just "processor": the dev banner says that word before the processor starts, and the
    // first-admin hint may come after it (this raced once in CI).
    let log = serve.wait_for("processor started");
    assert!(log.contains("seeded from built-in"), "{log}");
    assert!(
        log.contains("~100,000 records"),
        "the dev banner states retention: {log}"
    );
    // Panics if the first-admin hint is never printed.
    let log = serve.wait_for("--role admin --role ops");
    assert!(log.contains("--password-stdin"), "{log}");
    assert!(dir.path().join("data/geopromo.sqlite").exists());
    let (status, body) = get(address, "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = get(address, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("geopromo_catalog_version ") && !l.ends_with(" 0")),
        "the catalog version in use is reported: {metrics}"
    );

    serve.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process:\n{}",
        serve.log()
    );
    assert_eq!(get(address, "/healthz").0, 200);
    serve.wait_for("SIGHUP ignored");

    serve.signal("TERM");
    let status = serve
        .wait_exit(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", serve.log());
}

#[test]
fn a_store_with_a_row_it_cannot_use_still_starts_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.sqlite").display());
    let env = [("GEOPROMO__DATABASE__URL", url.clone())];
    let migrated = geopromo(dir.path(), &["migrate"], "", &env);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    // What the store refuses to write today, written the way an older version or a hand edit would.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = geopromo::store::Store::connect(&url).await.unwrap();
            let fences = geopromo::geofence::parse_fences(
                br#"{"type":"Feature","id":"square","properties":{},
                  "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]]]}}"#,
                &geopromo::geofence::ParseOptions::default(),
            )
            .unwrap()
            .fences;
            store.upsert_fences(&fences, 0).await.unwrap();
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.unwrap();
            sqlx::query(
                "INSERT INTO promotions (id, name, fence_ids, valid_from_ms, valid_until_ms, active, cooldown_ms, version, updated_at_ms)
                 VALUES ('orphan', 'Orphan', '[\"bandung\"]', NULL, NULL, 1, 0, 2, 0)",
            )
            .execute(&pool)
            .await
            .unwrap();
        });
    let api = Running::start(dir.path(), &["api"], &env);
    let address = api.api_address();
    let log = api.log();
    assert!(log.contains("QUARANTINED"), "{log}");
    assert!(log.contains("NO ACTIVE PROMOTION"), "{log}");
    let (status, metrics) = get(address, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("geopromo_catalog_quarantined 1"),
        "the quarantined row is counted: {metrics}"
    );
    let (status, body) = get(address, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("degraded") && body.contains("orphan"),
        "{body}"
    );
}

#[test]
fn fences_import_says_promotions_are_missing_and_promotions_import_adds_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = [(
        "GEOPROMO__DATABASE__URL",
        format!("sqlite://{}", dir.path().join("s.sqlite").display()),
    )];
    let fences = root.join("geodata/cities.geojson");
    let imported = geopromo(
        dir.path(),
        &["fences", "import", fences.to_str().unwrap()],
        "",
        &env,
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(
        text(&imported.stderr).contains("promotions import"),
        "{}",
        text(&imported.stderr)
    );
    let promotions = root.join("config/promotions.json");
    let out = geopromo(
        dir.path(),
        &["promotions", "import", promotions.to_str().unwrap()],
        "",
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("imported 3 promotions"),
        "{}",
        text(&out.stdout)
    );

    let orphan = dir.path().join("orphan.json");
    std::fs::write(
        &orphan,
        r#"{"promotions":[{"id":"x","fences":["atlantis"]}]}"#,
    )
    .unwrap();
    let out = geopromo(
        dir.path(),
        &["promotions", "import", orphan.to_str().unwrap()],
        "",
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("atlantis"),
        "{}",
        text(&out.stderr)
    );

    let added = geopromo(
        dir.path(),
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--role",
            "ops",
            "--password-stdin",
        ],
        "a long enough password\n",
        &env,
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(!text(&added.stdout).contains("a long enough password"));
}

/// 24 logins with distinct 31 MiB usernames from each of three loopback addresses, and 32 concurrent
/// ones from one: the server answers without reading the bodies, and its peak RSS stays under 150 MB
/// (it reached 2.49 GiB before auth bodies were limited and the IP limit ran before the body).
#[test]
fn a_login_flood_with_huge_bodies_does_not_grow_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "GEOPROMO__DATABASE__URL",
        format!("sqlite://{}", dir.path().join("s.sqlite").display()),
    )];
    let api = Running::start(dir.path(), &["api"], &env);
    let address = api.api_address();
    let body_len = 31 * 1024 * 1024;
    let attack = |username: String| {
        let socket = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5));
        let Ok(mut stream) = socket else { return 0u16 };
        let head = format!(
            "POST /v1/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.write_all(head.as_bytes());
        let prefix = format!(r#"{{"client":"ops","password":"x","username":"{username}"#);
        let _ = stream.write_all(prefix.as_bytes());
        let chunk = vec![b'a'; 1024 * 1024];
        let mut sent = prefix.len();
        while sent + chunk.len() < body_len {
            if stream.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut raw = String::new();
        let _ = stream.read_to_string(&mut raw);
        raw.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    // The per-IP limit sees the peer address; loopback aliases 127.0.0.2/3 need a bound source socket,
    // which std's TcpStream cannot do, so the three senders share 127.0.0.1 here: a stricter case for
    // the limiter (all 72 count against one address) and the same case for memory.
    let mut statuses = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for source in 1..=3u8 {
            handles.push(scope.spawn(move || {
                (0..24)
                    .map(|i| attack(format!("u{source}-{i}-")))
                    .collect::<Vec<_>>()
            }));
        }
        for handle in handles {
            statuses.extend(handle.join().unwrap());
        }
        let concurrent: Vec<_> = (0..32)
            .map(|i| scope.spawn(move || attack(format!("c-{i}-"))))
            .collect();
        for handle in concurrent {
            statuses.push(handle.join().unwrap());
        }
    });
    let answered = statuses.iter().filter(|s| [413, 429].contains(*s)).count();
    assert!(
        answered >= statuses.len() / 2,
        "refused with 413/429: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s != 200 && *s != 500),
        "{statuses:?}"
    );
    assert_eq!(get(address, "/healthz").0, 200);
    let peak = api.peak_rss_mib();
    assert!(peak < 150.0, "peak RSS {peak:.1} MiB");
    eprintln!(
        "login flood: {} requests, peak RSS {peak:.1} MiB",
        statuses.len()
    );
}

/// librdkafka's own log reaches the service log with the default filter: a broker that refuses
/// connections is named (before, its lines were dropped, so SASL/SSL failures were invisible).
#[test]
fn librdkafka_lines_reach_the_default_log() {
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(
        dir.path(),
        &["process"],
        &[
            ("RUST_LOG", String::new()),
            ("GEOPROMO__KAFKA__BROKERS", "127.0.0.1:1".into()),
        ],
    );
    let log = running.wait_for("librdkafka: FAIL");
    assert!(log.contains("127.0.0.1:1"), "{log}");
    assert!(
        !log.contains("librdkafka: BRKMAIN") && !log.contains(" DEBUG "),
        "librdkafka's debug chatter stays out by default: {log}"
    );
}
