//! The HTTP API on a random port, against both store backends (SQLite file, fresh PostgreSQL database).

use crate::common;

use common::http::{call, send, spawn_apps, Call};

const FENCES: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","id":"square","properties":{"name":"Square","tolerance_m":750},
  "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]]]}},
 {"type":"Feature","id":"far","properties":{"name":"Far"},
  "geometry":{"type":"Polygon","coordinates":[[[110.0,-7.1],[110.1,-7.1],[110.1,-7.0],[110.0,-7.0],[110.0,-7.1]]]}}]}"#;

#[tokio::test]
async fn fences_upload_list_get_delete() {
    for app in spawn_apps().await {
        let created = call(&app, "POST", "/v1/fences", Some("ops"), Some(FENCES)).await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.json()["stored"], 2);
        assert_eq!(app.store.catalog_version().await.unwrap(), 1);

        let page = call(&app, "GET", "/v1/fences?limit=1", Some("ops"), None).await;
        assert_eq!(page.status, 200);
        assert_eq!(page.json()["items"][0]["id"], "far");
        assert_eq!(page.json()["next"], "far");
        let rest = call(
            &app,
            "GET",
            "/v1/fences?limit=1&after=far",
            Some("ops"),
            None,
        )
        .await;
        assert_eq!(rest.json()["items"][0]["id"], "square");
        assert!(rest.json()["next"].is_null());
        let named = call(&app, "GET", "/v1/fences?name=Squ", Some("ops"), None).await;
        assert_eq!(named.json()["items"].as_array().unwrap().len(), 1);

        let feature = call(&app, "GET", "/v1/fences/square", Some("ops"), None).await;
        assert_eq!(feature.status, 200);
        assert_eq!(feature.content_type, "application/geo+json");
        assert_eq!(feature.json()["geometry"]["type"], "Polygon");
        assert_eq!(feature.json()["properties"]["tolerance_m"], 750.0);

        assert_eq!(
            call(&app, "DELETE", "/v1/fences/far", Some("ops"), None)
                .await
                .status,
            204
        );
        let gone = call(&app, "DELETE", "/v1/fences/far", Some("ops"), None).await;
        assert_eq!(gone.status, 404);
        assert_eq!(gone.content_type, "application/problem+json");
        assert_eq!(
            gone.json()["type"],
            "https://geopromo.dev/problems/not-found"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_problem_details() {
    for app in spawn_apps().await {
        let invalid = r#"{"type":"Feature","id":"open","properties":{},
            "geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}}"#;
        let reply = call(&app, "POST", "/v1/fences", Some("ops"), Some(invalid)).await;
        assert_eq!(reply.status, 422);
        assert_eq!(
            reply.json()["type"],
            "https://geopromo.dev/problems/invalid-geojson"
        );
        let errors = reply.json()["errors"].to_string();
        assert!(errors.contains("ring is not closed"), "{errors}");
        assert_eq!(
            app.store.catalog_version().await.unwrap(),
            0,
            "nothing stored"
        );

        let malformed = call(&app, "POST", "/v1/fences", Some("ops"), Some("{\"type\":")).await;
        assert_eq!(malformed.status, 400);
        assert_eq!(malformed.content_type, "application/problem+json");

        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000));
        assert_eq!(
            call(&app, "POST", "/v1/fences", Some("ops"), Some(&huge))
                .await
                .status,
            413
        );

        let unknown_field = r#"{"id":"p","fences":["square"],"colour":"red"}"#;
        let reply = call(
            &app,
            "POST",
            "/v1/promotions",
            Some("ops"),
            Some(unknown_field),
        )
        .await;
        assert_eq!(reply.status, 422);
        assert!(reply.json()["detail"].as_str().unwrap().contains("colour"));

        let wrong_type = r#"{"id":"p","fences":"square"}"#;
        assert_eq!(
            call(
                &app,
                "POST",
                "/v1/promotions",
                Some("ops"),
                Some(wrong_type)
            )
            .await
            .status,
            422
        );

        let unknown_fence = r#"{"id":"p","fences":["nowhere"]}"#;
        let reply = call(
            &app,
            "POST",
            "/v1/promotions",
            Some("ops"),
            Some(unknown_fence),
        )
        .await;
        assert_eq!(reply.status, 422);
        assert!(reply.json()["detail"].as_str().unwrap().contains("nowhere"));

        let backwards = r#"{"id":"p","fences":["x"],"valid_from":"2027-01-01T00:00:00Z","valid_until":"2026-01-01T00:00:00Z"}"#;
        let reply = call(&app, "POST", "/v1/promotions", Some("ops"), Some(backwards)).await;
        assert_eq!(reply.status, 422);
        assert!(reply.json()["errors"]
            .to_string()
            .contains("valid_from must be before valid_until"));

        assert_eq!(
            call(&app, "GET", "/v1/fences?limit=0", Some("ops"), None)
                .await
                .status,
            400
        );
        assert_eq!(
            call(&app, "GET", "/v1/nope", Some("ops"), None)
                .await
                .status,
            404
        );
    }
}

#[tokio::test]
async fn promotions_and_results_respect_roles() {
    for app in spawn_apps().await {
        assert_eq!(
            call(&app, "POST", "/v1/fences", Some("ops"), Some(FENCES))
                .await
                .status,
            201
        );
        let promotion = r#"{"id":"coffee","name":"Coffee","fences":["square"],"cooldown_s":60}"#;
        let mobile = call(
            &app,
            "POST",
            "/v1/promotions",
            Some("mobile"),
            Some(promotion),
        )
        .await;
        assert_eq!(mobile.status, 403);
        let created = call(&app, "POST", "/v1/promotions", Some("ops"), Some(promotion)).await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.json()["cooldown_s"], 60.0);
        let listed = call(&app, "GET", "/v1/promotions", Some("consumer"), None).await;
        assert_eq!(listed.json()[0]["id"], "coffee");
        assert_eq!(
            call(&app, "GET", "/v1/promotions/coffee", Some("ops"), None)
                .await
                .status,
            200
        );
        assert_eq!(
            call(&app, "GET", "/v1/promotions/none", Some("ops"), None)
                .await
                .status,
            404
        );

        app.store
            .record_eligibility(
                &[geopromo::store::EligibilityChange::Enter(
                    geopromo::store::Eligibility {
                        user_id: "tester".into(),
                        promotion_id: "coffee".into(),
                        fence_id: "square".into(),
                        since_ms: 1_795_334_400_000,
                        event_id: "e1".into(),
                    },
                )],
                1,
            )
            .await
            .unwrap();
        let own = call(&app, "GET", "/v1/users/me/promotions", Some("mobile"), None).await;
        assert_eq!(own.status, 200);
        assert_eq!(own.json()[0]["promotion_id"], "coffee");
        assert_eq!(own.json()[0]["since"], "2026-11-22T08:00:00.000Z");
        let other = call(
            &app,
            "GET",
            "/v1/users/someone/promotions",
            Some("mobile"),
            None,
        )
        .await;
        assert_eq!(other.status, 403);
        let as_ops = call(
            &app,
            "GET",
            "/v1/users/tester/promotions",
            Some("ops"),
            None,
        )
        .await;
        assert_eq!(as_ops.json().as_array().unwrap().len(), 1);

        let anonymous = call(&app, "GET", "/v1/promotions", None, None).await;
        assert_eq!(anonymous.status, 401);
        assert_eq!(anonymous.content_type, "application/problem+json");
        assert_eq!(call(&app, "GET", "/healthz", None, None).await.status, 200);
        assert_eq!(call(&app, "GET", "/readyz", None, None).await.body, "ready");
    }
}

#[tokio::test]
async fn match_answers_fences_and_valid_promotions() {
    for app in spawn_apps().await {
        let inside = call(
            &app,
            "GET",
            "/v1/match?lat=-6.05&lon=106.05",
            Some("mobile"),
            None,
        )
        .await;
        assert_eq!(inside.status, 200, "{}", inside.body);
        let json = inside.json();
        assert_eq!(json[0]["fence_id"], "square");
        assert_eq!(json[0]["inside"], true);
        assert_eq!(json[0]["promotions"][0], "coffee");
        // 500 m east of the square: within its 750 m tolerance.
        let near = call(
            &app,
            "GET",
            "/v1/match?lat=-6.05&lon=106.1045",
            Some("mobile"),
            None,
        )
        .await;
        let distance = near.json()[0]["distance_m"].as_f64().unwrap();
        assert!((distance - 500.0).abs() < 10.0, "{distance}");
        let nowhere = call(&app, "GET", "/v1/match?lat=0&lon=0", Some("mobile"), None).await;
        assert_eq!(nowhere.json(), serde_json::json!([]));
        assert_eq!(
            call(&app, "GET", "/v1/match?lat=95&lon=0", Some("mobile"), None)
                .await
                .status,
            422
        );
        assert_eq!(
            call(&app, "GET", "/v1/match?lat=x&lon=0", Some("mobile"), None)
                .await
                .status,
            400
        );
    }
}

#[tokio::test]
async fn locations_are_produced_for_the_caller_only() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let apps = spawn_apps().await;
    let app = &apps[0];
    let one = call(
        app,
        "POST",
        "/v1/locations",
        Some("mobile"),
        Some(r#"{"lat":-6.05,"lon":106.05,"accuracy_m":8}"#),
    )
    .await;
    assert_eq!(one.status, 202, "{}", one.body);
    let batch = r#"{"locations":[{"lat":-6.0,"lon":106.0,"ts":"2026-11-22T08:00:00Z"},{"lat":-6.1,"lon":106.1,"event_id":"e-2"}]}"#;
    let reply = call(app, "POST", "/v1/locations", Some("mobile"), Some(batch)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["accepted"], 2);

    let spoof = r#"{"lat":-6.05,"lon":106.05,"user_id":"someone-else"}"#;
    assert_eq!(
        call(app, "POST", "/v1/locations", Some("mobile"), Some(spoof))
            .await
            .status,
        422
    );
    let bad = r#"{"locations":[{"lat":-6.0,"lon":106.0},{"lat":91,"lon":0}]}"#;
    let reply = call(app, "POST", "/v1/locations", Some("mobile"), Some(bad)).await;
    assert_eq!(reply.status, 422);
    assert!(reply.json()["errors"][0]
        .as_str()
        .unwrap()
        .starts_with("location 1:"));
    // A value of the wrong type is named by its path, in a single location and in a batch.
    for (body, path) in [
        (r#"{"lat":"x","lon":106.8}"#, "lat: invalid type"),
        (
            r#"{"locations":[{"lat":-6.0,"lon":106.0},{"lat":-6.0,"lon":"east"}]}"#,
            "locations[1].lon: invalid type",
        ),
    ] {
        let reply = call(app, "POST", "/v1/locations", Some("mobile"), Some(body)).await;
        assert_eq!(reply.status, 422, "{}", reply.body);
        let detail = reply.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(path), "{detail}");
    }
    assert_eq!(
        call(
            app,
            "POST",
            "/v1/locations",
            Some("ops"),
            Some(r#"{"lat":0,"lon":0}"#)
        )
        .await
        .status,
        403
    );

    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &app.brokers)
        .set("group.id", "api-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["gps-events"]).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.len() < 3 && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(100)) {
            assert_eq!(message.key(), Some(&b"tester"[..]));
            let event: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            assert_eq!(event["user_id"], "tester");
            seen.push(event);
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "exactly the accepted locations reach the topic"
    );
}

#[tokio::test]
async fn openapi_document_docs_page_and_metrics_are_served() {
    let apps = spawn_apps().await;
    let app = &apps[0];
    let doc = call(app, "GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.json()["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc.json(), geopromo::api::docs::openapi());
    let page = call(app, "GET", "/docs", None, None).await;
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(page.body.contains("<code>/v1/locations</code>"));
    let metrics = send(app.address, Call::new("GET", "/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);
}

/// The OpenAPI check every test call goes through does catch a body that breaks the document.
#[test]
fn the_openapi_check_rejects_responses_that_break_the_document() {
    use common::http::{check_against_openapi, Reply};
    let reply = |status: u16, body: &str| Reply {
        status,
        content_type: "application/json".into(),
        headers: Vec::new(),
        body: body.into(),
    };
    let list = Call::new("GET", "/v1/promotions");
    check_against_openapi(&list, &reply(200, "[]"));
    for (status, body) in [
        (200, r#"{"not":"a list"}"#),
        (200, r#"[{"id":"p"}]"#),
        (500, r#"{"unexpected":true}"#),
    ] {
        let outcome =
            std::panic::catch_unwind(|| check_against_openapi(&list, &reply(status, body)));
        assert!(outcome.is_err(), "{status} {body} passed the check");
    }
}
