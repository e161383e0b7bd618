//! [`Auth`]: logins, sessions, refresh rotation, revocation and key management over the store; it keeps
//! the per-request [`Verifier`] current.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::keys::{KeyError, KeyRing, StoredKey};
use super::limits::KeyedLimit;
use super::password::{PasswordError, PasswordHashing};
use super::secret::random_token;
use super::token::{Identity, Role};
use super::verifier::Verifier;
use crate::config::AuthSettings;
use crate::error::error_chain;
use crate::promo::timestamp::now_ms;
use crate::store::{Store, StoreError};

mod accounts;
mod sessions;

/// How far back each revocation poll re-reads, so that a revocation committed late or stamped by a
/// slightly slow clock on another instance is still seen.
const REVOCATION_LOOKBACK_MS: i64 = 60_000;

/// Why an authentication operation failed. The API maps each to a status and a problem type.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Same answer for an unknown user, a wrong password and a disabled account.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many attempts; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("invalid access token: {0}")]
    InvalidToken(String),
    #[error("the session has ended: {0}")]
    SessionEnded(String),
    #[error("the refresh token is not valid")]
    InvalidGrant,
    #[error("this account has no role a {0} client may use")]
    ClientNotAllowed(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the store failed")]
    Store(#[source] StoreError),
    #[error("signing keys are unusable")]
    Key(#[from] KeyError),
    #[error("token signing failed: {0}")]
    Sign(String),
}

impl From<StoreError> for AuthError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(what) => AuthError::Conflict(what),
            other => AuthError::Store(other),
        }
    }
}

impl From<PasswordError> for AuthError {
    fn from(error: PasswordError) -> Self {
        match error {
            PasswordError::Length => AuthError::Invalid(error.to_string()),
            other => AuthError::Sign(other.to_string()),
        }
    }
}

/// What login and refresh answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IssuedTokens {
    /// EdDSA JWT (`typ` `at+jwt`), sent as `Authorization: Bearer ...`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Lifetime of the access token in seconds.
    pub expires_in: i64,
    /// Opaque, single use: exchange it at `/v1/auth/refresh` for the next pair.
    pub refresh_token: String,
    pub session_id: String,
    pub roles: Vec<Role>,
}

/// RFC 7662 introspection answer; only `active` when the token is not active.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// Roles, space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Per-process authentication: the account and session service over the store, with the per-request
/// [`Verifier`] (kept current from the store by [`Auth::spawn_refresher`]) and the rate limits.
pub struct Auth {
    store: Store,
    settings: AuthSettings,
    hashing: PasswordHashing,
    /// Verified instead of a real hash for unknown users, so they cost the same time.
    dummy_hash: String,
    /// The keys as last read from the store, to notice changes.
    stored_keys: Mutex<Vec<StoredKey>>,
    verifier: Verifier,
    revocation_cursor_ms: AtomicI64,
    poll_health: PollHealth,
    login_ip: KeyedLimit,
    login_account: KeyedLimit,
    refresh_ip: KeyedLimit,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads the keys (creating the first one on an empty store) and the recent revocations.
    pub async fn start(store: Store, settings: AuthSettings) -> Result<Arc<Self>, AuthError> {
        let hashing = PasswordHashing::new(settings.argon2_memory_kib, settings.argon2_iterations)?;
        let dummy_hash = hashing.hash(&random_token())?;
        let now = now_ms();
        let verifier = Verifier::new(&settings);
        let auth = Arc::new(Self {
            login_ip: KeyedLimit::new(settings.login_ip_burst, settings.login_ip_per_minute),
            login_account: KeyedLimit::new(
                settings.login_account_burst,
                settings.login_account_per_minute,
            ),
            refresh_ip: KeyedLimit::new(settings.refresh_ip_burst, settings.refresh_ip_per_minute),
            revocation_cursor_ms: AtomicI64::new(now - token_window_ms(&settings)),
            store,
            settings,
            hashing,
            dummy_hash,
            stored_keys: Mutex::new(Vec::new()),
            verifier,
            poll_health: PollHealth::default(),
        });
        if auth.load_keys().await?.signing_key_at(now).is_none() {
            auth.store
                .add_signing_key(&StoredKey::generate(now, now)?)
                .await?;
            auth.load_keys().await?;
        }
        auth.sync_revocations().await?;
        Ok(auth)
    }

    #[must_use]
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Polls the store for revocations and key changes every `revocation_poll_ms` until aborted.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let auth = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(auth.settings.revocation_poll_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks = 0u64;
            loop {
                tick.tick().await;
                let mut healthy = true;
                if let Err(error) = auth.sync_revocations().await {
                    healthy = false;
                    tracing::warn!(error = %error_chain(&error), "cannot read revocations; retrying");
                }
                if let Err(error) = auth.load_keys().await {
                    healthy = false;
                    tracing::warn!(error = %error_chain(&error), "cannot read signing keys; retrying");
                }
                auth.poll_health.record(healthy);
                ticks += 1;
                if ticks % 240 == 0 {
                    for limit in [&auth.login_ip, &auth.login_account, &auth.refresh_ip] {
                        limit.forget_idle();
                    }
                }
            }
        })
    }

    /// Registers the revocation-poll health metrics in `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "auth_poll_failures",
            "Revocation and key polls of the store that failed (revocations do not reach this instance meanwhile)",
            self.poll_health.failures.clone(),
        );
        registry.register(
            "auth_last_poll_timestamp_seconds",
            "Unix time of the last successful revocation and key poll",
            self.poll_health.last_success.clone(),
        );
    }

    /// Reads sessions revoked since the last poll (with a look-back) into the in-memory set and forgets
    /// those whose access tokens have all expired.
    pub async fn sync_revocations(&self) -> Result<(), AuthError> {
        let now = now_ms();
        let since = self.revocation_cursor_ms.load(Ordering::Relaxed) - REVOCATION_LOOKBACK_MS;
        let rows = self.store.revocations_since(since).await?;
        let newest = rows.iter().map(|(_, at)| *at).max();
        let horizon = now - token_window_ms(&self.settings) - REVOCATION_LOOKBACK_MS;
        self.verifier.apply_revocations(rows, horizon);
        if let Some(newest) = newest {
            self.revocation_cursor_ms
                .fetch_max(newest.min(now), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Rebuilds the key ring when the stored keys changed (and then forgets verified tokens, so a revoked
    /// key's tokens fail at once).
    async fn load_keys(&self) -> Result<arc_swap::Guard<Arc<KeyRing>>, AuthError> {
        let stored = self.store.signing_keys().await?;
        let mut current = self.stored_keys.lock().unwrap_or_else(|e| e.into_inner());
        if *current != stored {
            let ring = KeyRing::new(&stored, token_window_ms(&self.settings))?;
            self.verifier.replace_keys(ring);
            *current = stored;
        }
        Ok(self.verifier.keys())
    }

    /// The JWKS of the keys that verify now.
    #[must_use]
    pub fn jwks(&self) -> serde_json::Value {
        self.verifier.jwks(now_ms())
    }

    /// Checks a bearer token (see [`Verifier::verify`]): the per-request hot path.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verifier.verify(token, now_ms())
    }

    /// [`Auth::verify`] without the verified-token cache: what a token costs the first time it is seen.
    pub fn verify_uncached(&self, token: &str) -> Result<Identity, AuthError> {
        self.verifier.verify_uncached(token, now_ms())
    }
}

/// How long after issue an access token can still be accepted.
fn token_window_ms(settings: &AuthSettings) -> i64 {
    (settings.access_ttl_s + settings.leeway_s) as i64 * 1000
}

/// Whether the revocation and key poll keeps working: a failing poll means revocations stop reaching
/// this instance, which an operator must hear about.
#[derive(Debug, Default)]
struct PollHealth {
    failures: prometheus_client::metrics::counter::Counter,
    last_success: prometheus_client::metrics::gauge::Gauge,
}

impl PollHealth {
    fn record(&self, healthy: bool) {
        if healthy {
            self.last_success.set(now_ms() / 1000);
        } else {
            self.failures.inc();
        }
    }
}
