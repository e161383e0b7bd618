//! The API reproductions of the hardening round, on both store backends: each failed before its fix
//! (a 204 that bricked the catalog, 500s on NUL, empty 405s, text/plain 400s, a spoofed user id and a
//! year-9999 timestamp accepted, cacheable tokens, a `crit` header accepted).

use crate::common;

use common::http::{call, send, spawn_apps, Call, PASSWORD};

const FENCES: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","id":"square","properties":{"name":"Square","tolerance_m":750},
  "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]]]}}]}"#;

fn assert_problem(reply: &common::http::Reply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.content_type, "application/problem+json",
        "{}",
        reply.body
    );
    assert_eq!(reply.json()["status"], status, "{}", reply.body);
}

#[tokio::test]
async fn a_fence_a_promotion_targets_cannot_be_deleted_until_the_promotion_is() {
    for app in spawn_apps().await {
        let stored = call(&app, "POST", "/v1/fences", Some("ops"), Some(FENCES)).await;
        assert_eq!(stored.status, 201, "{}", stored.body);
        let promotion = r#"{"id":"java-weekend-rides","fences":["square"]}"#;
        let created = call(&app, "POST", "/v1/promotions", Some("ops"), Some(promotion)).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let version = app.store.catalog_version().await.unwrap();

        let refused = call(&app, "DELETE", "/v1/fences/square", Some("ops"), None).await;
        assert_problem(&refused, 409);
        assert!(
            refused.body.contains("java-weekend-rides"),
            "names the promotion: {}",
            refused.body
        );
        assert!(app.store.get_fence("square").await.unwrap().is_some());
        assert_eq!(
            app.store.catalog_version().await.unwrap(),
            version,
            "a refused change leaves no new catalog version"
        );
        let parts = app.store.load_catalog_parts().await.unwrap();
        assert!(parts.quarantined.is_empty(), "{:?}", parts.quarantined);

        let deleted = call(
            &app,
            "DELETE",
            "/v1/promotions/java-weekend-rides",
            Some("ops"),
            None,
        )
        .await;
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        let again = call(
            &app,
            "DELETE",
            "/v1/promotions/java-weekend-rides",
            Some("ops"),
            None,
        )
        .await;
        assert_problem(&again, 404);
        let consumer = call(
            &app,
            "DELETE",
            "/v1/promotions/anything",
            Some("consumer"),
            None,
        )
        .await;
        assert_problem(&consumer, 403);
        let fence_gone = call(&app, "DELETE", "/v1/fences/square", Some("ops"), None).await;
        assert_eq!(fence_gone.status, 204, "{}", fence_gone.body);
    }
}

#[tokio::test]
async fn control_characters_get_a_4xx_on_both_backends_never_a_500() {
    for app in spawn_apps().await {
        let backend = app.backend;
        let bodies = [
            (
                "/v1/auth/login",
                None,
                r#"{"username":"ad\u0000min","password":"x","client":"ops"}"#,
            ),
            (
                "/v1/auth/login",
                None,
                r#"{"username":"admin","password":"x","client":"ops","device_label":"\u0000"}"#,
            ),
            (
                "/v1/auth/login",
                None,
                r#"{"username":"ad\u0007min","password":"x","client":"ops"}"#,
            ),
            (
                "/v1/promotions",
                Some("ops"),
                r#"{"id":"p\u0000","fences":["square"]}"#,
            ),
            (
                "/v1/promotions",
                Some("ops"),
                r#"{"id":"p\u001b","fences":["square"]}"#,
            ),
            (
                "/v1/fences",
                Some("ops"),
                r#"{"type":"Feature","id":"bell\u0007","properties":{},
                   "geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}}"#,
            ),
            (
                "/v1/fences",
                Some("ops"),
                r#"{"type":"Feature","id":"ok","properties":{"name":"a\u0000b"},
                   "geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}}"#,
            ),
        ];
        for (path, role, body) in bodies {
            let reply = call(&app, "POST", path, role, Some(body)).await;
            assert!(
                (400..500).contains(&reply.status) && reply.status != 401 && reply.status != 404,
                "{backend:?} POST {path} {body}: {} {}",
                reply.status,
                reply.body
            );
            assert_eq!(reply.content_type, "application/problem+json");
        }
        for path in [
            "/v1/fences/a%00b",
            "/v1/promotions/%00",
            "/v1/users/%00/promotions",
            "/v1/admin/users/%01/sessions",
            "/v1/fences?name=%00",
        ] {
            let role = if path.starts_with("/v1/admin") {
                "admin"
            } else {
                "ops"
            };
            let reply = call(&app, "GET", path, Some(role), None).await;
            assert_problem(&reply, 400);
        }
        assert_eq!(app.store.catalog_version().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn every_error_is_problem_json_even_405_and_bad_utf8_paths() {
    for app in spawn_apps().await {
        let not_allowed = call(&app, "PATCH", "/v1/fences", Some("ops"), None).await;
        assert_problem(&not_allowed, 405);
        assert!(
            not_allowed.header("allow").is_some(),
            "{:?}",
            not_allowed.headers
        );
        let bad_utf8 = call(&app, "GET", "/v1/fences/%FF%FE", Some("ops"), None).await;
        assert_problem(&bad_utf8, 400);
    }
}

#[tokio::test]
async fn a_location_names_no_user_and_no_far_future_time() {
    let apps = spawn_apps().await;
    let app = &apps[0];
    for body in [
        r#"{"locations":[{"lat":-6.05,"lon":106.05}],"user_id":"someone-else"}"#,
        r#"{"lat":-6.05,"lon":106.05,"user_id":"someone-else"}"#,
    ] {
        let reply = call(app, "POST", "/v1/locations", Some("mobile"), Some(body)).await;
        assert_problem(&reply, 422);
        assert!(reply.body.contains("user_id"), "{}", reply.body);
    }
    let future = r#"{"lat":-6.05,"lon":106.05,"ts":"9999-12-31T23:59:59Z"}"#;
    let reply = call(app, "POST", "/v1/locations", Some("mobile"), Some(future)).await;
    assert_problem(&reply, 422);
    assert!(reply.body.contains("future"), "{}", reply.body);
    let now = r#"{"lat":-6.05,"lon":106.05}"#;
    let reply = call(app, "POST", "/v1/locations", Some("mobile"), Some(now)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
}

#[tokio::test]
async fn token_answers_are_not_cacheable_and_token_errors_are_in_words() {
    use base64::Engine as _;
    let apps = spawn_apps().await;
    let app = &apps[0];
    let login = format!(r#"{{"username":"tester-ops","password":"{PASSWORD}","client":"ops"}}"#);
    let reply = call(app, "POST", "/v1/auth/login", None, Some(&login)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let refused = call(
        app,
        "POST",
        "/v1/auth/login",
        None,
        Some(r#"{"username":"x","password":"y","client":"ops"}"#),
    )
    .await;
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    let jwks = call(app, "GET", "/.well-known/jwks.json", None, None).await;
    assert_ne!(jwks.header("cache-control"), Some("no-store"));

    let token = app.tokens["ops"].clone();
    let (_, rest) = token.split_once('.').unwrap();
    let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let critical = format!(
        "{}.{rest}",
        encode(
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"x","crit":["geopromo-ext"],"geopromo-ext":1}"#
        )
    );
    let reply = send(
        app.address,
        Call::new("GET", "/v1/fences").bearer(&critical),
    )
    .await;
    assert_problem(&reply, 401);
    assert!(reply.body.contains("crit"), "{}", reply.body);
    let none = format!("{}.{rest}", encode(r#"{"alg":"none","typ":"at+jwt"}"#));
    let reply = send(app.address, Call::new("GET", "/v1/fences").bearer(&none)).await;
    assert_problem(&reply, 401);
    assert!(reply.body.contains("EdDSA"), "{}", reply.body);
    assert!(
        !reply.body.contains("unknown variant") && !reply.body.contains("expected one of"),
        "no parser internals: {}",
        reply.body
    );
}

#[tokio::test]
async fn api_metrics_count_requests_by_route_and_status() {
    let apps = spawn_apps().await;
    let app = &apps[0];
    for _ in 0..3 {
        call(app, "GET", "/v1/fences/nope", Some("ops"), None).await;
    }
    let metrics = send(app.address, Call::new("GET", "/metrics")).await;
    let line = metrics
        .body
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains(r#"route="/v1/fences/{id}""#)
                && l.contains(r#"status="404""#)
        })
        .unwrap_or_else(|| panic!("{}", metrics.body));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(metrics.body.contains("http_request_seconds_bucket{"));
    // The revocation poll reports its health (a failing poll means revocations stop arriving).
    assert!(
        metrics.body.contains("auth_poll_failures_total 0"),
        "{}",
        metrics.body
    );
    let last_poll: i64 = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("auth_last_poll_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", metrics.body));
    assert!(last_poll > 1_700_000_000, "{last_poll}");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_taken_from_the_caller_when_usable() {
    let apps = spawn_apps().await;
    let app = &apps[0];
    let given = send(
        app.address,
        Call::new("GET", "/v1/fences")
            .bearer(&app.tokens["ops"])
            .header("x-request-id", "trace-42.a"),
    )
    .await;
    assert_eq!(given.status, 200, "{}", given.body);
    assert_eq!(given.header("x-request-id"), Some("trace-42.a"));
    let generated = send(app.address, Call::new("GET", "/healthz")).await;
    let id = generated
        .header("x-request-id")
        .expect("a generated id")
        .to_owned();
    assert!(id.len() >= 16, "{id}");
    let again = send(app.address, Call::new("GET", "/healthz")).await;
    assert_ne!(
        again.header("x-request-id"),
        Some(id.as_str()),
        "ids are not reused"
    );
    // Not echoed when it is not a plain token: a log line must not carry what the caller chose.
    let refused = send(
        app.address,
        Call::new("GET", "/no/such/route").header("x-request-id", "a b<script>"),
    )
    .await;
    assert_eq!(refused.status, 404);
    let replaced = refused.header("x-request-id").unwrap();
    assert!(
        !replaced.contains(' ') && !replaced.contains('<'),
        "{replaced}"
    );
}

#[tokio::test]
async fn changes_through_the_api_are_in_the_audit_trail_with_who_what_and_where() {
    for app in &spawn_apps().await {
        let fence = r#"{"type":"Feature","properties":{"name":"Audited","tolerance_m":100},
            "geometry":{"type":"Polygon","coordinates":[[[107.0,-6.1],[107.1,-6.1],[107.1,-6.0],[107.0,-6.0],[107.0,-6.1]]]}}"#;
        let stored = call(app, "PUT", "/v1/fences/audited", Some("ops"), Some(fence)).await;
        assert_eq!(stored.status, 200, "{}", stored.body);
        let missing = call(app, "DELETE", "/v1/fences/never-there", Some("ops"), None).await;
        assert_eq!(missing.status, 404, "a refused change is not a change");
        let deleted = call(app, "DELETE", "/v1/fences/audited", Some("ops"), None).await;
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        let read = call(app, "GET", "/v1/fences", Some("ops"), None).await;
        assert_eq!(read.status, 200);

        let refused = call(app, "GET", "/v1/admin/audit", Some("ops"), None).await;
        assert_eq!(refused.status, 403);
        let page = call(app, "GET", "/v1/admin/audit?limit=1", Some("admin"), None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let first = page.json();
        assert_eq!(first["items"].as_array().unwrap().len(), 1);
        let next = first["next"].as_str().expect("a second page").to_owned();
        let rest = call(
            app,
            "GET",
            &format!("/v1/admin/audit?after={next}"),
            Some("admin"),
            None,
        )
        .await;
        let mut entries = first["items"].as_array().unwrap().clone();
        entries.extend(rest.json()["items"].as_array().unwrap().iter().cloned());
        let described: Vec<(String, String, String, String)> = entries
            .iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().to_owned(),
                    e["action"].as_str().unwrap().to_owned(),
                    e["target"].as_str().unwrap().to_owned(),
                    e["remote"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let ops = |action: &str, target: &str| {
            (
                "tester-ops".to_owned(),
                action.to_owned(),
                target.to_owned(),
                "127.0.0.1".to_owned(),
            )
        };
        assert_eq!(
            described,
            [
                ops("PUT /v1/fences/{id}", "/v1/fences/audited"),
                ops("DELETE /v1/fences/{id}", "/v1/fences/audited"),
            ],
            "{:?} on {:?}",
            entries,
            app.backend
        );
    }
}
