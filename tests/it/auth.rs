//! Authentication end to end over HTTP: the attack suite, refresh rotation and reuse detection, the
//! 20-way concurrent refresh, logout everywhere, password change, key rotation, two instances sharing
//! PostgreSQL, rate limits, introspection and revocation, and the RBAC matrix over every route.

use crate::common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::http::{
    call, embedded_broker, fresh_store, send, spawn_app_on, spawn_apps, test_auth_settings,
    Backend, Call, Reply, TestApp, PASSWORD,
};
use geopromo::auth::ClientKind;
use geopromo::config::AuthSettings;
use geopromo::promo::timestamp::now_ms;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

async fn spawn_with(backend: Backend, settings: AuthSettings) -> TestApp {
    let (store, dir) = fresh_store(backend).await;
    spawn_app_on(store, dir, backend, Rc::new(embedded_broker()), settings).await
}

async fn login(app: &TestApp, username: &str, password: &str, client: &str) -> Reply {
    let body = serde_json::json!({"username": username, "password": password, "client": client,
        "device_label": "test phone"});
    send(
        app.address,
        Call::new("POST", "/v1/auth/login")
            .json(&body.to_string())
            .header("User-Agent", "geopromo-tests/1"),
    )
    .await
}

async fn refresh(app: &TestApp, token: &str) -> Reply {
    let body = serde_json::json!({ "refresh_token": token });
    send(
        app.address,
        Call::new("POST", "/v1/auth/refresh").json(&body.to_string()),
    )
    .await
}

/// The probe route: any authenticated caller may read their own promotions.
async fn probe(app: &TestApp, token: &str) -> Reply {
    send(
        app.address,
        Call::new("GET", "/v1/users/me/promotions").bearer(token),
    )
    .await
}

fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json", "{what}");
    assert!(
        reply.header("www-authenticate").is_some(),
        "{what}: no WWW-Authenticate"
    );
}

/// Signs `claims` with the store's current private key, under `header`.
async fn forge(app: &TestApp, header: Header, claims: serde_json::Value) -> String {
    let key = app
        .auth
        .store()
        .signing_keys()
        .await
        .unwrap()
        .pop()
        .unwrap();
    let der = STANDARD.decode(key.private_pkcs8).unwrap();
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).unwrap()
}

async fn current_kid(app: &TestApp) -> String {
    app.auth
        .store()
        .signing_keys()
        .await
        .unwrap()
        .pop()
        .unwrap()
        .kid
}

fn eddsa_header(kid: &str) -> Header {
    Header {
        typ: Some("at+jwt".into()),
        kid: Some(kid.into()),
        ..Header::new(Algorithm::EdDSA)
    }
}

fn claims(now_s: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": "geopromo", "aud": "geopromo:mobile", "sub": "tester", "sid": "forged-session",
        "jti": "j", "iat": now_s, "nbf": now_s, "exp": now_s + 600, "roles": ["mobile"],
    })
}

#[tokio::test]
async fn attack_suite_every_forgery_gets_401_problem_json() {
    let app = spawn_with(Backend::Sqlite, test_auth_settings()).await;
    let now = now_ms() / 1000;
    let kid = current_kid(&app).await;
    // A correctly forged token is accepted: the cases below fail for their one defect only.
    let control = forge(&app, eddsa_header(&kid), claims(now)).await;
    assert_eq!(probe(&app, &control).await.status, 200);

    let mut cases: Vec<(&str, String)> = Vec::new();
    let segment = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            segment(serde_json::json!({"alg":"none","typ":"at+jwt","kid":kid})),
            segment(claims(now))
        ),
    ));
    let jwks = send(app.address, Call::new("GET", "/.well-known/jwks.json"))
        .await
        .json();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let hs256 = Header {
        typ: Some("at+jwt".into()),
        kid: Some(kid.clone()),
        ..Header::new(Algorithm::HS256)
    };
    for secret in [
        public_x.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&public_x).unwrap(),
    ] {
        cases.push((
            "HS256 signed with the public key",
            jsonwebtoken::encode(&hs256, &claims(now), &EncodingKey::from_secret(&secret)).unwrap(),
        ));
    }
    let mut wrong_aud = claims(now);
    wrong_aud["aud"] = "someone-else".into();
    cases.push((
        "wrong aud",
        forge(&app, eddsa_header(&kid), wrong_aud).await,
    ));
    let mut no_aud = claims(now);
    no_aud.as_object_mut().unwrap().remove("aud");
    cases.push(("missing aud", forge(&app, eddsa_header(&kid), no_aud).await));
    let mut wrong_iss = claims(now);
    wrong_iss["iss"] = "evil".into();
    cases.push((
        "wrong iss",
        forge(&app, eddsa_header(&kid), wrong_iss).await,
    ));
    let mut no_iss = claims(now);
    no_iss.as_object_mut().unwrap().remove("iss");
    cases.push(("missing iss", forge(&app, eddsa_header(&kid), no_iss).await));
    let mut expired = claims(now - 3600);
    expired["exp"] = (now - 120).into();
    cases.push(("expired", forge(&app, eddsa_header(&kid), expired).await));
    cases.push((
        "not yet valid",
        forge(&app, eddsa_header(&kid), claims(now + 600)).await,
    ));
    let mut roles_beyond_audience = claims(now);
    roles_beyond_audience["roles"] = serde_json::json!(["mobile", "admin"]);
    cases.push((
        "roles beyond the audience",
        forge(&app, eddsa_header(&kid), roles_beyond_audience).await,
    ));
    let (head, rest) = control.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let mut tampered = claims(now);
    tampered["sub"] = "someone-else".into();
    cases.push((
        "tampered payload",
        format!("{head}.{}.{signature}", segment(tampered)),
    ));
    cases.push((
        "unknown kid",
        forge(&app, eddsa_header("no-such-key"), claims(now)).await,
    ));
    let mut no_kid = eddsa_header(&kid);
    no_kid.kid = None;
    cases.push(("no kid", forge(&app, no_kid, claims(now)).await));
    let mut jwt_typ = eddsa_header(&kid);
    jwt_typ.typ = Some("JWT".into());
    cases.push(("typ not at+jwt", forge(&app, jwt_typ, claims(now)).await));
    cases.push(("garbage", "not.a.token".into()));

    // A token of a revoked session.
    let revoked = app
        .auth
        .issue_session("tester", ClientKind::Mobile, None)
        .await
        .unwrap();
    let logout = send(
        app.address,
        Call::new("POST", "/v1/auth/logout").bearer(&revoked.access_token),
    )
    .await;
    assert_eq!(logout.status, 204);
    cases.push(("revoked session", revoked.access_token));

    // A token of a disabled user.
    app.auth
        .create_user(
            "victim",
            PASSWORD.into(),
            vec![geopromo::auth::Role::Mobile],
            None,
        )
        .await
        .unwrap();
    let victim = app
        .auth
        .issue_session("victim", ClientKind::Mobile, None)
        .await
        .unwrap();
    assert_eq!(probe(&app, &victim.access_token).await.status, 200);
    let disabled = call(
        &app,
        "POST",
        "/v1/admin/users/victim/disable",
        Some("admin"),
        None,
    )
    .await;
    assert_eq!(disabled.status, 204, "{}", disabled.body);
    cases.push(("disabled user", victim.access_token));

    for (what, token) in &cases {
        assert_unauthorized(&probe(&app, token).await, what);
    }
    let missing = send(app.address, Call::new("GET", "/v1/users/me/promotions")).await;
    assert_unauthorized(&missing, "no Authorization header");
    let basic = send(
        app.address,
        Call::new("GET", "/v1/users/me/promotions").header("Authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    assert_unauthorized(&basic, "Basic scheme");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_after_the_grace_window_revokes_the_session() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_with(
            backend,
            AuthSettings {
                refresh_grace_s: 1,
                ..test_auth_settings()
            },
        )
        .await;
        let first = login(&app, "tester", PASSWORD, "mobile").await;
        assert_eq!(first.status, 200, "{}", first.body);
        let first = first.json();
        assert_eq!(first["token_type"], "Bearer");
        assert!(first["expires_in"].as_i64().unwrap() <= 900);
        let header = jsonwebtoken::decode_header(first["access_token"].as_str().unwrap()).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));

        let original = first["refresh_token"].as_str().unwrap().to_owned();
        let second = refresh(&app, &original).await;
        assert_eq!(second.status, 200, "{}", second.body);
        let second = second.json();
        assert_ne!(second["refresh_token"], first["refresh_token"]);
        assert_ne!(second["access_token"], first["access_token"]);
        assert_eq!(second["session_id"], first["session_id"]);
        assert_eq!(
            probe(&app, second["access_token"].as_str().unwrap())
                .await
                .status,
            200
        );

        // Within the grace window the spent token replays the same answer (a lost response, retried).
        let replay = refresh(&app, &original).await;
        assert_eq!(replay.status, 200);
        assert_eq!(replay.json(), second);

        let third = refresh(&app, second["refresh_token"].as_str().unwrap()).await;
        assert_eq!(third.status, 200);
        let third = third.json();

        // After the window, presenting a spent token is theft: the whole session goes.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let reuse = refresh(&app, &original).await;
        assert_unauthorized(&reuse, "reused refresh token");
        assert_eq!(
            reuse.json()["type"],
            "https://geopromo.dev/problems/session-ended"
        );
        assert_unauthorized(
            &probe(&app, third["access_token"].as_str().unwrap()).await,
            "access token of the revoked session",
        );
        assert_unauthorized(
            &refresh(&app, third["refresh_token"].as_str().unwrap()).await,
            "newest refresh token of the revoked session",
        );
        let session = app
            .store
            .session(first["session_id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            session.revoked_reason.as_deref(),
            Some("refresh token reused after rotation"),
            "{backend:?}"
        );
        assert_unauthorized(&refresh(&app, "made-up").await, "unknown refresh token");
    }
}

#[tokio::test]
async fn twenty_concurrent_refreshes_rotate_once_with_identical_answers() {
    for app in spawn_apps().await {
        let issued = app
            .auth
            .issue_session("tester", ClientKind::Mobile, None)
            .await
            .unwrap();
        let refreshes = (0..20).map(|_| refresh(&app, &issued.refresh_token));
        let replies = futures_util::future::join_all(refreshes).await;
        for reply in &replies {
            assert_eq!(reply.status, 200, "{:?}: {}", app.backend, reply.body);
            assert_eq!(
                reply.body, replies[0].body,
                "{:?}: answers differ",
                app.backend
            );
        }
        let next = replies[0].json();
        let session = app
            .store
            .session(&issued.session_id)
            .await
            .unwrap()
            .unwrap();
        assert!(session.revoked_at_ms.is_none(), "{:?}", app.backend);
        assert_eq!(
            probe(&app, next["access_token"].as_str().unwrap())
                .await
                .status,
            200
        );
        // Exactly one rotation: the successor is live and rotates normally.
        let after = refresh(&app, next["refresh_token"].as_str().unwrap()).await;
        assert_eq!(after.status, 200, "{}", after.body);
        let introspected = send(
            app.address,
            Call::new("POST", "/oauth/introspect")
                .bearer(&app.tokens["consumer"])
                .form(&format!("token={}", issued.refresh_token)),
        )
        .await;
        assert_eq!(
            introspected.json()["active"],
            false,
            "the original is spent"
        );
    }
}

#[tokio::test]
async fn logout_everywhere_and_password_change_revoke_the_right_sessions() {
    let app = spawn_with(Backend::Postgres, test_auth_settings()).await;
    let a = login(&app, "tester", PASSWORD, "mobile").await.json();
    let b = login(&app, "tester", PASSWORD, "mobile").await.json();
    let token = |reply: &serde_json::Value| reply["access_token"].as_str().unwrap().to_owned();

    // Password change through session a: b ends, a stays, the old password stops working.
    let new_password = "a much better passphrase";
    let change = send(
        app.address,
        Call::new("PUT", "/v1/auth/password")
            .bearer(&token(&a))
            .json(
                &serde_json::json!({"current_password": PASSWORD, "new_password": new_password})
                    .to_string(),
            ),
    )
    .await;
    assert_eq!(change.status, 200, "{}", change.body);
    assert!(change.json()["revoked"].as_u64().unwrap() >= 1);
    assert_eq!(probe(&app, &token(&a)).await.status, 200);
    assert_unauthorized(
        &probe(&app, &token(&b)).await,
        "other session after password change",
    );
    assert_eq!(login(&app, "tester", PASSWORD, "mobile").await.status, 401);
    let c = login(&app, "tester", new_password, "mobile").await;
    assert_eq!(c.status, 200);
    let c = c.json();
    let wrong = send(
        app.address,
        Call::new("PUT", "/v1/auth/password").bearer(&token(&c)).json(
            &serde_json::json!({"current_password": "nope nope nope", "new_password": "whatever 12345"})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(wrong.status, 401);

    // The session list shows both live sessions, the current one marked.
    let sessions = send(
        app.address,
        Call::new("GET", "/v1/auth/sessions").bearer(&token(&c)),
    )
    .await;
    assert_eq!(sessions.status, 200);
    let sessions = sessions.json();
    let listed: Vec<&serde_json::Value> = sessions.as_array().unwrap().iter().collect();
    assert!(listed
        .iter()
        .any(|s| s["current"] == true && s["id"] == c["session_id"]));
    let b_row = listed.iter().find(|s| s["id"] == b["session_id"]).unwrap();
    assert_eq!(b_row["revoked_reason"], "password changed");
    assert_eq!(b_row["device_label"], "test phone");
    assert_eq!(b_row["user_agent"], "geopromo-tests/1");

    // Revoke one own session by id; someone else's session id is not found.
    let revoke_a = send(
        app.address,
        Call::new(
            "DELETE",
            &format!("/v1/auth/sessions/{}", a["session_id"].as_str().unwrap()),
        )
        .bearer(&token(&c)),
    )
    .await;
    assert_eq!(revoke_a.status, 204);
    assert_unauthorized(&probe(&app, &token(&a)).await, "session revoked by id");
    let others = app
        .auth
        .issue_session("tester-ops", ClientKind::Ops, None)
        .await
        .unwrap();
    let foreign = send(
        app.address,
        Call::new(
            "DELETE",
            &format!("/v1/auth/sessions/{}", others.session_id),
        )
        .bearer(&token(&c)),
    )
    .await;
    assert_eq!(foreign.status, 404);

    // Logout everywhere ends every session of the user, this one included.
    let d = login(&app, "tester", new_password, "mobile").await.json();
    let all = send(
        app.address,
        Call::new("POST", "/v1/auth/logout-all").bearer(&token(&d)),
    )
    .await;
    assert_eq!(all.status, 200);
    assert!(all.json()["revoked"].as_u64().unwrap() >= 2);
    for session in [&c, &d] {
        assert_unauthorized(
            &probe(&app, &token(session)).await,
            "after logout everywhere",
        );
        assert_unauthorized(
            &refresh(&app, session["refresh_token"].as_str().unwrap()).await,
            "refresh after logout everywhere",
        );
    }
    assert_eq!(
        probe(&app, &others.access_token).await.status,
        200,
        "other users unaffected"
    );
}

#[tokio::test]
async fn key_rotation_overlaps_and_emergency_revocation_is_immediate() {
    let app = spawn_with(Backend::Sqlite, test_auth_settings()).await;
    let old = app
        .auth
        .issue_session("tester", ClientKind::Mobile, None)
        .await
        .unwrap();
    let old_kid = jsonwebtoken::decode_header(&old.access_token)
        .unwrap()
        .kid
        .unwrap();
    let rotated = call(&app, "POST", "/v1/admin/keys/rotate", Some("admin"), None).await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let new_kid = rotated.json()["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);

    let fresh = app
        .auth
        .issue_session("tester", ClientKind::Mobile, None)
        .await
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&fresh.access_token)
            .unwrap()
            .kid
            .unwrap(),
        new_kid
    );
    assert_eq!(
        probe(&app, &old.access_token).await.status,
        200,
        "overlap window"
    );
    let jwks = send(app.address, Call::new("GET", "/.well-known/jwks.json"))
        .await
        .json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));

    let revoked = call(
        &app,
        "POST",
        &format!("/v1/admin/keys/{old_kid}/revoke"),
        Some("admin"),
        None,
    )
    .await;
    assert_eq!(revoked.status, 204);
    assert_unauthorized(
        &probe(&app, &old.access_token).await,
        "token of a revoked key",
    );
    assert_eq!(probe(&app, &fresh.access_token).await.status, 200);
    let jwks = send(app.address, Call::new("GET", "/.well-known/jwks.json"))
        .await
        .json();
    assert!(!jwks.to_string().contains(&old_kid));
}

#[tokio::test]
async fn two_instances_sharing_postgres_agree_on_a_revocation_within_a_second() {
    let url = common::fresh_postgres_url("geopromo_auth").await;
    let broker = Rc::new(embedded_broker());
    let store_a = geopromo::store::Store::connect(&url).await.unwrap();
    let store_b = geopromo::store::Store::connect(&url).await.unwrap();
    let settings = AuthSettings {
        revocation_poll_ms: 250,
        ..test_auth_settings()
    };
    let a = spawn_app_on(
        store_a,
        None,
        Backend::Postgres,
        broker.clone(),
        settings.clone(),
    )
    .await;
    let b = spawn_app_on(store_b, None, Backend::Postgres, broker, settings).await;
    let session = login(&a, "tester", PASSWORD, "mobile").await.json();
    let token = session["access_token"].as_str().unwrap();
    assert_eq!(probe(&b, token).await.status, 200, "B accepts A's token");

    let logout = send(
        a.address,
        Call::new("POST", "/v1/auth/logout").bearer(token),
    )
    .await;
    assert_eq!(logout.status, 204);
    let revoked_at = Instant::now();
    assert_unauthorized(&probe(&a, token).await, "A, at once");
    loop {
        let reply = probe(&b, token).await;
        if reply.status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still accepts the token after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "B refused the revoked token after {:?}",
        revoked_at.elapsed()
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // Survives a restart: a new instance on the same store refuses it from its first request.
    let store_c = geopromo::store::Store::connect(&url).await.unwrap();
    let c = spawn_app_on(
        store_c,
        None,
        Backend::Postgres,
        Rc::new(embedded_broker()),
        test_auth_settings(),
    )
    .await;
    assert_unauthorized(&probe(&c, token).await, "after a restart");
}

#[tokio::test]
async fn logins_are_rate_limited_and_failures_look_the_same() {
    let app = spawn_with(
        Backend::Sqlite,
        AuthSettings {
            login_account_burst: 3,
            login_account_per_minute: 1,
            login_ip_burst: 6,
            login_ip_per_minute: 1,
            ..test_auth_settings()
        },
    )
    .await;
    let unknown = login(&app, "nobody", PASSWORD, "mobile").await;
    let wrong = login(&app, "tester", "wrong password!", "mobile").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.json(),
        wrong.json(),
        "an unknown user and a wrong password get the same answer"
    );
    assert_eq!(
        login(&app, "tester", PASSWORD, "ops").await.status,
        403,
        "no ops role"
    );
    assert_eq!(login(&app, "tester", PASSWORD, "mobile").await.status, 200);
    // tester has used its 3 attempts: the 4th is refused even with the right password.
    let limited = login(&app, "tester", PASSWORD, "mobile").await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(limited.json()["retry_after"], retry);
    // The IP has used 5 of 6; one more for another account, then the IP is limited too.
    assert_eq!(
        login(&app, "nobody-else", PASSWORD, "mobile").await.status,
        401
    );
    assert_eq!(login(&app, "third", PASSWORD, "mobile").await.status, 429);

    // The limit is checked before the body is read: a limited IP's body is never parsed (or buffered).
    let bad_body = send(
        app.address,
        Call::new("POST", "/v1/auth/login")
            .json(r#"{"username":"x","password":"y","client":"tv"}"#),
    )
    .await;
    assert_eq!(bad_body.status, 429);
    let fresh = spawn_with(Backend::Sqlite, test_auth_settings()).await;
    let bad_body = send(
        fresh.address,
        Call::new("POST", "/v1/auth/login")
            .json(r#"{"username":"x","password":"y","client":"tv"}"#),
    )
    .await;
    assert_eq!(bad_body.status, 422);
}

#[tokio::test]
async fn introspection_and_token_revocation_follow_the_rfcs() {
    let app = spawn_with(Backend::Sqlite, test_auth_settings()).await;
    let session = app
        .auth
        .issue_session("tester", ClientKind::Mobile, None)
        .await
        .unwrap();
    let introspect = |token: String| {
        send(
            app.address,
            Call::new("POST", "/oauth/introspect")
                .bearer(&app.tokens["consumer"])
                .form(&format!("token={token}&token_type_hint=access_token")),
        )
    };
    let access = introspect(session.access_token.clone()).await;
    assert_eq!(access.status, 200, "{}", access.body);
    let access = access.json();
    assert_eq!(access["active"], true);
    assert_eq!(access["token_type"], "access_token");
    assert_eq!(access["sub"], "tester");
    assert_eq!(access["scope"], "mobile");
    assert_eq!(access["aud"], "geopromo:mobile");
    let refresh_state = introspect(session.refresh_token.clone()).await.json();
    assert_eq!(refresh_state["active"], true);
    assert_eq!(refresh_state["token_type"], "refresh_token");
    assert_eq!(
        introspect("garbage".into()).await.json(),
        serde_json::json!({"active": false})
    );
    let as_mobile = send(
        app.address,
        Call::new("POST", "/oauth/introspect")
            .bearer(&app.tokens["mobile"])
            .form("token=x"),
    )
    .await;
    assert_eq!(as_mobile.status, 403);

    let revoke = send(
        app.address,
        Call::new("POST", "/oauth/revoke").form(&format!("token={}", session.refresh_token)),
    )
    .await;
    assert_eq!(revoke.status, 200);
    assert_eq!(
        introspect(session.access_token.clone()).await.json()["active"],
        false
    );
    assert_unauthorized(
        &probe(&app, &session.access_token).await,
        "after RFC 7009 revoke",
    );
    let unknown = send(
        app.address,
        Call::new("POST", "/oauth/revoke").form("token=unknown"),
    )
    .await;
    assert_eq!(
        unknown.status, 200,
        "RFC 7009: invalid tokens are not an error"
    );
    let no_token = send(
        app.address,
        Call::new("POST", "/oauth/revoke").form("nothing=1"),
    )
    .await;
    assert_eq!(no_token.status, 400);
}

#[tokio::test]
async fn admins_create_and_disable_users() {
    let app = spawn_with(Backend::Postgres, test_auth_settings()).await;
    let body = r#"{"username":"rider-7","password":"long enough pass","roles":["mobile"]}"#;
    let created = call(&app, "POST", "/v1/admin/users", Some("admin"), Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["id"], "rider-7");
    assert_eq!(
        call(&app, "POST", "/v1/admin/users", Some("admin"), Some(body))
            .await
            .status,
        409
    );
    let weak = r#"{"username":"rider-8","password":"short","roles":["mobile"]}"#;
    assert_eq!(
        call(&app, "POST", "/v1/admin/users", Some("admin"), Some(weak))
            .await
            .status,
        422
    );
    let session = login(&app, "rider-7", "long enough pass", "mobile").await;
    assert_eq!(session.status, 200);
    let token = session.json()["access_token"].as_str().unwrap().to_owned();
    let sessions = call(
        &app,
        "GET",
        "/v1/admin/users/rider-7/sessions",
        Some("admin"),
        None,
    )
    .await;
    assert_eq!(sessions.json().as_array().unwrap().len(), 1);
    let revoked = call(
        &app,
        "DELETE",
        "/v1/admin/users/rider-7/sessions",
        Some("admin"),
        None,
    )
    .await;
    assert_eq!(revoked.json()["revoked"], 1);
    assert_unauthorized(
        &probe(&app, &token).await,
        "after an admin revoked the user's sessions",
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/v1/admin/users/rider-7/disable",
            Some("admin"),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        login(&app, "rider-7", "long enough pass", "mobile")
            .await
            .status,
        401
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/v1/admin/users/nobody/disable",
            Some("admin"),
            None
        )
        .await
        .status,
        404
    );
}

/// Method, path, body, whether the body is a form, and the expected status for none, mobile, ops,
/// consumer and admin.
type MatrixRow = (
    &'static str,
    &'static str,
    Option<&'static str>,
    bool,
    [u16; 5],
);

/// Every documented route, with every role and with none. For allowed callers the request is built to
/// give a known non-auth status (often a 404 or 422, so the matrix changes nothing it depends on).
#[tokio::test]
async fn rbac_matrix_covers_every_route_and_role() {
    let app = spawn_with(Backend::Sqlite, test_auth_settings()).await;
    // Columns: none, mobile, ops, consumer, admin.
    let public = [200; 5];
    let rows: Vec<MatrixRow> = vec![
        ("GET", "/healthz", None, false, public),
        ("GET", "/readyz", None, false, public),
        ("GET", "/metrics", None, false, public),
        ("GET", "/openapi.json", None, false, public),
        ("GET", "/docs", None, false, public),
        ("GET", "/.well-known/jwks.json", None, false, public),
        ("GET", "/v1/fences", None, false, [401, 403, 200, 403, 403]),
        (
            "GET",
            "/v1/map/fences",
            None,
            false,
            [401, 403, 200, 403, 403],
        ),
        (
            "GET",
            "/v1/activity/fences",
            None,
            false,
            [401, 403, 200, 200, 403],
        ),
        (
            "GET",
            "/v1/activity/promotions",
            None,
            false,
            [401, 403, 200, 200, 403],
        ),
        // Another user's events: refused to mobile and admin callers (their own only); ops and
        // consumers pass that check and get 400 for the bad resume id (a 200 would stream forever).
        (
            "GET",
            "/v1/events/stream?user_id=someone-else&after=bad",
            None,
            false,
            [401, 403, 400, 400, 403],
        ),
        (
            "POST",
            "/v1/fences",
            Some("{}"),
            false,
            [401, 403, 422, 403, 403],
        ),
        (
            "GET",
            "/v1/fences/nope",
            None,
            false,
            [401, 403, 404, 403, 403],
        ),
        (
            "PUT",
            "/v1/fences/nope",
            Some("{}"),
            false,
            [401, 403, 422, 403, 403],
        ),
        (
            "DELETE",
            "/v1/fences/nope",
            None,
            false,
            [401, 403, 404, 403, 403],
        ),
        (
            "GET",
            "/v1/promotions",
            None,
            false,
            [401, 403, 200, 200, 403],
        ),
        (
            "POST",
            "/v1/promotions",
            Some(r#"{"id":"p","fences":["nowhere"]}"#),
            false,
            [401, 403, 422, 403, 403],
        ),
        (
            "GET",
            "/v1/promotions/nope",
            None,
            false,
            [401, 403, 404, 404, 403],
        ),
        (
            "PUT",
            "/v1/promotions/nope",
            Some(r#"{"id":"p","fences":["x"]}"#),
            false,
            [401, 403, 422, 403, 403],
        ),
        (
            "GET",
            "/v1/admin/audit",
            None,
            false,
            [401, 403, 403, 403, 200],
        ),
        (
            "DELETE",
            "/v1/promotions/nope",
            None,
            false,
            [401, 403, 404, 403, 403],
        ),
        (
            "POST",
            "/v1/promotions/nope/deactivate",
            None,
            false,
            [401, 403, 404, 403, 403],
        ),
        (
            "POST",
            "/v1/locations",
            Some(r#"{"lat":91,"lon":0}"#),
            false,
            [401, 422, 403, 403, 403],
        ),
        (
            "GET",
            "/v1/match?lat=0&lon=0",
            None,
            false,
            [401, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/users/me/promotions",
            None,
            false,
            [401, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/users/someone/promotions",
            None,
            false,
            [401, 403, 200, 200, 403],
        ),
        (
            "POST",
            "/v1/auth/login",
            Some(r#"{"username":"nobody","password":"x","client":"mobile"}"#),
            false,
            [401; 5],
        ),
        (
            "POST",
            "/v1/auth/refresh",
            Some(r#"{"refresh_token":"nope"}"#),
            false,
            [401; 5],
        ),
        (
            "POST",
            "/v1/auth/logout",
            None,
            false,
            [401, 204, 204, 204, 204],
        ),
        (
            "POST",
            "/v1/auth/logout-all",
            None,
            false,
            [401, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/auth/sessions",
            None,
            false,
            [401, 200, 200, 200, 200],
        ),
        (
            "DELETE",
            "/v1/auth/sessions/nope",
            None,
            false,
            [401, 404, 404, 404, 404],
        ),
        (
            "PUT",
            "/v1/auth/password",
            Some(r#"{"current_password":"correct horse battery","new_password":"short"}"#),
            false,
            [401, 422, 422, 422, 422],
        ),
        (
            "POST",
            "/v1/admin/users",
            Some(r#"{"username":"u","password":"long enough pass","roles":[]}"#),
            false,
            [401, 403, 403, 403, 422],
        ),
        (
            "POST",
            "/v1/admin/users/nope/disable",
            None,
            false,
            [401, 403, 403, 403, 404],
        ),
        (
            "GET",
            "/v1/admin/users/nope/sessions",
            None,
            false,
            [401, 403, 403, 403, 200],
        ),
        (
            "DELETE",
            "/v1/admin/users/nope/sessions",
            None,
            false,
            [401, 403, 403, 403, 200],
        ),
        (
            "POST",
            "/v1/admin/keys/rotate",
            None,
            false,
            [401, 403, 403, 403, 201],
        ),
        (
            "POST",
            "/v1/admin/keys/nope/revoke",
            None,
            false,
            [401, 403, 403, 403, 404],
        ),
        ("POST", "/oauth/revoke", Some("token=garbage"), true, public),
        (
            "POST",
            "/oauth/introspect",
            Some("token=garbage"),
            true,
            [401, 403, 403, 200, 200],
        ),
    ];
    let users = [
        None,
        Some(("tester", ClientKind::Mobile)),
        Some(("tester-ops", ClientKind::Ops)),
        Some(("tester-consumer", ClientKind::Consumer)),
        Some(("tester-admin", ClientKind::Ops)),
    ];
    let mut covered = std::collections::BTreeSet::new();
    for (method, path, body, form, expected) in &rows {
        let (template, _) = common::http::operation(method, path)
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        covered.insert(format!("{} {template}", method.to_lowercase()));
        for (user, want) in users.iter().zip(expected) {
            let mut request = Call::new(method, path);
            if let Some((user, client)) = user {
                // A fresh session per call: logout and logout-all must not spoil later rows.
                let issued = app.auth.issue_session(user, *client, None).await.unwrap();
                request = request.bearer(&issued.access_token);
            }
            if let Some(body) = body {
                request = if *form {
                    request.form(body)
                } else {
                    request.json(body)
                };
            }
            let reply = send(app.address, request).await;
            assert_eq!(
                reply.status,
                *want,
                "{method} {path} as {:?}: {}",
                user.map(|u| u.0),
                reply.body
            );
        }
    }
    let documented: std::collections::BTreeSet<String> = geopromo::api::docs::openapi()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{method} {path}"))
        })
        .collect();
    assert_eq!(
        covered, documented,
        "the matrix must cover every documented operation"
    );
}
