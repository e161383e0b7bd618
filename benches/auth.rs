//! What authentication costs per request: `Auth::verify` on a token seen before (the verified-token cache
//! plus the revocation lookup) and on a token seen for the first time (Ed25519 signature, claims,
//! revocation). Also Argon2id at the default cost, which bounds login throughput.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use geopromo::auth::password::PasswordHashing;
use geopromo::auth::{Auth, ClientKind, Role};
use geopromo::config::AuthSettings;
use geopromo::store::Store;

fn setup() -> (
    tokio::runtime::Runtime,
    std::sync::Arc<Auth>,
    Vec<String>,
    tempfile::TempDir,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.sqlite").display());
    let (auth, tokens) = runtime.block_on(async {
        let store = Store::connect(&url).await.unwrap();
        let settings = AuthSettings {
            argon2_memory_kib: 8 * 1024,
            argon2_iterations: 1,
            ..AuthSettings::default()
        };
        let auth = Auth::start(store, settings).await.unwrap();
        let mut tokens = Vec::new();
        for i in 0..1000 {
            let user = format!("user-{i}");
            auth.create_user(&user, "bench password".into(), vec![Role::Mobile], None)
                .await
                .unwrap();
            tokens.push(
                auth.issue_session(&user, ClientKind::Mobile, None)
                    .await
                    .unwrap()
                    .access_token,
            );
        }
        (auth, tokens)
    });
    (runtime, auth, tokens, dir)
}

mod verify {
    use super::*;

    pub fn bench(c: &mut Criterion) {
        let (_runtime, auth, tokens, _dir) = setup();
        let mut group = c.benchmark_group("verify");
        let mut i = 0;
        group.bench_function("cached_1000_users", |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                black_box(auth.verify(&tokens[i]).unwrap())
            })
        });
        group.bench_function("uncached_signature_and_claims", |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                black_box(auth.verify_uncached(&tokens[i]).unwrap())
            })
        });
        group.finish();
    }
}

mod password {
    use super::*;

    pub fn bench(c: &mut Criterion) {
        let defaults = AuthSettings::default();
        let hashing =
            PasswordHashing::new(defaults.argon2_memory_kib, defaults.argon2_iterations).unwrap();
        let hash = hashing.hash("correct horse battery").unwrap();
        let mut group = c.benchmark_group("password");
        group.sample_size(10);
        group.bench_function("argon2id_verify_default_cost", |b| {
            b.iter(|| black_box(hashing.verify("correct horse battery", &hash)))
        });
        group.finish();
    }
}

criterion_group!(benches, verify::bench, password::bench);
criterion_main!(benches);
