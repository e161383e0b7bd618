//! Schemathesis (from PyPI; `.ci/test` installs it) generates requests from `/openapi.json` against
//! `geopromo serve` on each store backend, as an ops + admin caller, and checks that no answer is a 5xx
//! and every answer conforms to the document (status, content type, body schema). On PostgreSQL this
//! found 500s on NUL characters and a catalog bricked by a fence delete before the hardening round.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::process::{geopromo, Running};

fn schemathesis_installed() -> bool {
    Command::new("st")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn fuzz(url: &str, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let env = [("GEOPROMO__DATABASE__URL", url.to_owned())];
    let token = |user: &str, role: &str, client: &str| {
        let run = |args: &[&str], stdin: &str| {
            let out = geopromo(dir.path(), args, stdin, &env);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run(
            &["user", "add", user, "--role", role, "--password-stdin"],
            "fuzzing password\n",
        );
        let issued = run(&["session", "issue", user, "--client", client], "");
        let issued: serde_json::Value = serde_json::from_str(issued.trim()).unwrap();
        issued["access_token"].as_str().unwrap().to_owned()
    };
    let ops = token("fuzzer-ops", "ops", "ops");
    let admin = token("fuzzer-admin", "admin", "ops");
    let mobile = token("fuzzer-mobile", "mobile", "mobile");

    let serve = Running::start(dir.path(), &["serve"], &env);
    let address = serve.api_address().to_string();

    // Each caller fuzzes the routes its role may call; the others would only ever answer 403.
    // Not /v1/events/stream: an endless response, which schemathesis would wait on forever.
    let ops_routes = "^/v1/(fences|promotions|match|users/|map/|activity/)";
    let admin_routes = "^/v1/admin/(users|audit)|^/v1/auth/sessions|^/oauth/introspect|^/(healthz|readyz|metrics|openapi.json|docs)$|^/.well-known/|^/v1/auth/(login|refresh)$";
    let mobile_routes = "^/v1/locations";
    for (caller, token, routes) in [
        ("ops", &ops, ops_routes),
        ("admin", &admin, admin_routes),
        ("mobile", &mobile, mobile_routes),
    ] {
        schemathesis(
            dir.path(),
            &address,
            token,
            routes,
            &format!("{label} as {caller}"),
            &serve,
        );
    }
}

/// Runs schemathesis against the operations whose path matches `routes`, as the caller of `token`.
fn schemathesis(
    dir: &Path,
    address: &str,
    token: &str,
    routes: &str,
    label: &str,
    serve: &Running,
) {
    let report = dir.join(format!("report-{}.ndjson", label.replace(' ', "-")));
    let out = Command::new("st")
        .args(["run", &format!("http://{address}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--include-path-regex", routes])
        // Operations that end the fuzzer's own session would turn the rest of the run into 401s.
        .args([
            "--exclude-path-regex",
            "^/v1/auth/logout|^/oauth/revoke|/disable$|^/v1/admin/keys/|^/v1/auth/password$",
        ])
        // Schemathesis feeds ids from responses into other operations: the session ids it lists would
        // revoke its own session.
        .args(["--exclude-operation-id", "revoke_own_session"])
        .args(["--exclude-operation-id", "revoke_user_sessions"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // One worker: hypothesis describes strategies with `ast`, which is not thread-safe on CPython 3.11.
        .args(["--max-examples", "40", "--seed", "7", "--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "ndjson", "--report-ndjson-path"])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: String = stdout
        .lines()
        .rev()
        .take(80)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "{label}: schemathesis found failures:\n{tail}\n{}\nserver log tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        serve
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A run whose token stopped working, or whose caller may not call what it fuzzes, would pass while
    // testing nothing behind authentication.
    assert!(
        !stdout.contains("Authentication failed"),
        "{label}: operations answered only 401/403:\n{tail}"
    );
    eprintln!("{label}:\n{tail}");
}

#[test]
fn the_api_fuzzed_from_its_openapi_document_gives_no_5xx_on_either_backend() {
    assert!(
        schemathesis_installed(),
        "schemathesis (`st`) is not installed; `bash .ci/test` installs it with pip"
    );
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("fuzz.sqlite").display());
    fuzz(&sqlite, "SQLite");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let postgres = runtime.block_on(common::fresh_postgres_url("geopromo_fuzz"));
    fuzz(&postgres, "PostgreSQL");
}
