//! [`Auth`]: logins, sessions, refresh rotation, revocation and key management over the store; it keeps
//! the per-request [`Verifier`] current.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use super::keys::{KeyError, KeyRing, StoredKey};
use super::limits::{retry_after_s, KeyedLimit};
use super::password::{PasswordError, PasswordHashing};
use super::secret::{random_id, random_token, successor_token, token_hash};
use super::store::REUSE_REASON;
use super::store::{RefreshOutcome, SessionRecord, UserRecord};
use super::token::{AccessClaims, ClientKind, Identity, Role};
use super::verifier::Verifier;
use crate::config::AuthSettings;
use crate::error::error_chain;
use crate::promo::timestamp::now_ms;
use crate::store::{Store, StoreError};

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

    /// Username and password to a new session. Rate limited per IP and per username; an unknown user,
    /// a wrong password and a disabled account get the same error after the same Argon2 work.
    pub async fn login(
        &self,
        username: &str,
        password: String,
        client: ClientKind,
        device_label: Option<String>,
        user_agent: Option<String>,
        _ip: IpAddr,
    ) -> Result<IssuedTokens, AuthError> {
        let limited = |wait| AuthError::RateLimited {
            retry_after_s: retry_after_s(wait),
        };
        crate::text::check_printable("username", username)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if let Some(label) = &device_label {
            crate::text::check_printable("device_label", label)
                .map_err(|e| AuthError::Invalid(e.to_string()))?;
        }
        self.login_account
            .check(&username.to_lowercase())
            .map_err(limited)?;
        let user = self.store.user_by_username(username).await?;
        let hash = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let hashing = self.hashing.clone();
        let matches = tokio::task::spawn_blocking(move || hashing.verify(&password, &hash))
            .await
            .unwrap_or(false);
        let user = match user {
            Some(user) if matches && user.disabled_at_ms.is_none() => user,
            _ => return Err(AuthError::InvalidCredentials),
        };
        let roles = client.grant(&user.roles);
        if roles.is_empty() {
            return Err(AuthError::ClientNotAllowed(client.as_str()));
        }
        self.open_session(&user.id, client, roles, device_label, user_agent)
            .await
    }

    /// Opens a session for a user without a password (the CLI's `session issue`, for service accounts
    /// and load tests). The roles are the user's, bounded by the client kind.
    pub async fn issue_session(
        &self,
        user_id: &str,
        client: ClientKind,
        device_label: Option<String>,
    ) -> Result<IssuedTokens, AuthError> {
        let user = self
            .store
            .user_by_id(user_id)
            .await?
            .filter(|u| u.disabled_at_ms.is_none())
            .ok_or_else(|| AuthError::NotFound(format!("no enabled user {user_id:?}")))?;
        let roles = client.grant(&user.roles);
        if roles.is_empty() {
            return Err(AuthError::ClientNotAllowed(client.as_str()));
        }
        self.open_session(&user.id, client, roles, device_label, None)
            .await
    }

    async fn open_session(
        &self,
        user_id: &str,
        client: ClientKind,
        roles: Vec<Role>,
        device_label: Option<String>,
        user_agent: Option<String>,
    ) -> Result<IssuedTokens, AuthError> {
        let now = now_ms();
        let refresh = random_token();
        let session = SessionRecord {
            id: random_id(),
            user_id: user_id.to_owned(),
            client,
            roles,
            rotation_key: random_token(),
            created_at_ms: now,
            last_used_at_ms: now,
            idle_expires_at_ms: now + self.settings.idle_timeout_s as i64 * 1000,
            absolute_expires_at_ms: now + self.settings.absolute_timeout_s as i64 * 1000,
            revoked_at_ms: None,
            revoked_reason: None,
            device_label: device_label.map(|l| l.chars().take(200).collect()),
            user_agent: user_agent.map(|a| a.chars().take(400).collect()),
        };
        self.store
            .create_session(&session, &token_hash(&refresh))
            .await?;
        self.tokens_for(&session, now, refresh)
    }

    /// The answer for a session whose current refresh token is `refresh`, issued at `issued_at_ms`.
    /// Deterministic (Ed25519 signatures are), which makes replayed refreshes answer identically.
    fn tokens_for(
        &self,
        session: &SessionRecord,
        issued_at_ms: i64,
        refresh: String,
    ) -> Result<IssuedTokens, AuthError> {
        let keys = self.verifier.keys();
        let key = keys
            .signing_key_at(issued_at_ms)
            .ok_or_else(|| AuthError::Sign("no signing key is active".into()))?;
        let iat = issued_at_ms.div_euclid(1000);
        let exp = (iat + self.settings.access_ttl_s as i64)
            .min(session.absolute_expires_at_ms.div_euclid(1000));
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: session.client.audience(&self.settings.issuer),
            sub: session.user_id.clone(),
            sid: session.id.clone(),
            jti: token_hash(&format!("jti:{refresh}"))[..32].to_owned(),
            iat,
            nbf: iat,
            exp,
            roles: session.roles.clone(),
        };
        let header = Header {
            typ: Some("at+jwt".into()),
            kid: Some(key.kid.clone()),
            ..Header::new(Algorithm::EdDSA)
        };
        let access_token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))?;
        Ok(IssuedTokens {
            access_token,
            token_type: "Bearer",
            expires_in: exp - iat,
            refresh_token: refresh,
            session_id: session.id.clone(),
            roles: session.roles.clone(),
        })
    }

    /// Takes one login attempt from `ip`'s allowance. The HTTP layer calls it before reading the body.
    pub fn admit_login(&self, ip: IpAddr) -> Result<(), AuthError> {
        self.login_ip
            .check(&ip.to_string())
            .map_err(|wait| AuthError::RateLimited {
                retry_after_s: retry_after_s(wait),
            })
    }

    /// Takes one refresh from `ip`'s allowance. The HTTP layer calls it before reading the body.
    pub fn admit_refresh(&self, ip: IpAddr) -> Result<(), AuthError> {
        self.refresh_ip
            .check(&ip.to_string())
            .map_err(|wait| AuthError::RateLimited {
                retry_after_s: retry_after_s(wait),
            })
    }

    /// Exchanges a refresh token for the next pair (see [`Store::rotate_refresh_token`]).
    pub async fn refresh(
        &self,
        refresh_token: &str,
        _ip: IpAddr,
    ) -> Result<IssuedTokens, AuthError> {
        let now = now_ms();
        let outcome = self
            .store
            .rotate_refresh_token(
                &token_hash(refresh_token),
                |session| token_hash(&successor_token(&session.rotation_key, refresh_token)),
                now,
                self.settings.refresh_grace_s as i64 * 1000,
                self.settings.idle_timeout_s as i64 * 1000,
            )
            .await?;
        match outcome {
            RefreshOutcome::Unknown => Err(AuthError::InvalidGrant),
            RefreshOutcome::Ended(session) => Err(AuthError::SessionEnded(
                session
                    .revoked_reason
                    .unwrap_or_else(|| "the session expired".into()),
            )),
            RefreshOutcome::Reused(session) => {
                tracing::warn!(session = %session.id, user = %session.user_id, "refresh token reused after rotation: session revoked");
                self.sync_revocations().await?;
                Err(AuthError::SessionEnded(REUSE_REASON.into()))
            }
            RefreshOutcome::Rotated {
                session,
                rotated_at_ms,
            }
            | RefreshOutcome::Replayed {
                session,
                rotated_at_ms,
            } => {
                let next = successor_token(&session.rotation_key, refresh_token);
                self.tokens_for(&session, rotated_at_ms, next)
            }
        }
    }

    /// Revokes one session of `user_id` (their own, or any for an admin caller who passes `None`).
    pub async fn revoke_session(
        &self,
        session_id: &str,
        owner: Option<&str>,
        reason: &str,
    ) -> Result<(), AuthError> {
        let session = self
            .store
            .session(session_id)
            .await?
            .filter(|s| owner.is_none_or(|o| o == s.user_id))
            .ok_or_else(|| AuthError::NotFound(format!("no session {session_id:?}")))?;
        self.store
            .revoke_session(&session.id, reason, now_ms())
            .await?;
        self.sync_revocations().await
    }

    /// Revokes every session of a user; returns how many were live.
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        reason: &str,
    ) -> Result<u64, AuthError> {
        let revoked = self
            .store
            .revoke_sessions_of(user_id, reason, now_ms())
            .await?;
        self.sync_revocations().await?;
        Ok(revoked)
    }

    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<SessionRecord>, AuthError> {
        Ok(self.store.sessions_of(user_id).await?)
    }

    /// Adds a user (Argon2id hash of `password`); `id` defaults to the username.
    pub async fn create_user(
        &self,
        username: &str,
        password: String,
        roles: Vec<Role>,
        id: Option<String>,
    ) -> Result<UserRecord, AuthError> {
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@-+".contains(c))
        };
        if !valid_name(username) {
            return Err(AuthError::Invalid(
                "the username must be 1 to 128 of A-Z a-z 0-9 . _ @ - +".into(),
            ));
        }
        let id = id.unwrap_or_else(|| username.to_owned());
        if !valid_name(&id) {
            return Err(AuthError::Invalid(
                "the user id must be 1 to 128 of A-Z a-z 0-9 . _ @ - +".into(),
            ));
        }
        if roles.is_empty() {
            return Err(AuthError::Invalid("give the user at least one role".into()));
        }
        let hashing = self.hashing.clone();
        let password_hash = tokio::task::spawn_blocking(move || hashing.hash(&password))
            .await
            .map_err(|e| AuthError::Sign(e.to_string()))??;
        let user = UserRecord {
            id,
            username: username.to_owned(),
            password_hash,
            roles,
            disabled_at_ms: None,
            created_at_ms: now_ms(),
        };
        self.store.create_user(&user).await?;
        Ok(user)
    }

    /// Checks the current password, stores the new one and revokes the user's other sessions.
    pub async fn change_password(
        &self,
        identity: &Identity,
        current: String,
        new: String,
    ) -> Result<u64, AuthError> {
        let user = self
            .store
            .user_by_id(&identity.user_id)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let hashing = self.hashing.clone();
        let hash = user.password_hash.clone();
        let new_hash = tokio::task::spawn_blocking(move || {
            if hashing.verify(&current, &hash) {
                hashing.hash(&new).map(Some)
            } else {
                Ok(None)
            }
        })
        .await
        .map_err(|e| AuthError::Sign(e.to_string()))??
        .ok_or(AuthError::InvalidCredentials)?;
        let revoked = self
            .store
            .set_password(&user.id, &new_hash, Some(&identity.session_id), now_ms())
            .await?;
        self.sync_revocations().await?;
        Ok(revoked)
    }

    /// Disables a user and revokes their sessions.
    pub async fn disable_user(&self, user_id: &str) -> Result<(), AuthError> {
        if !self.store.disable_user(user_id, now_ms()).await? {
            return Err(AuthError::NotFound(format!("no user {user_id:?}")));
        }
        self.sync_revocations().await
    }

    /// Adds a signing key, active after `key_publish_ahead_s`; returns its kid.
    pub async fn rotate_keys(&self) -> Result<String, AuthError> {
        let now = now_ms();
        let key = StoredKey::generate(now, now + self.settings.key_publish_ahead_s as i64 * 1000)?;
        self.store.add_signing_key(&key).await?;
        self.load_keys().await?;
        Ok(key.kid)
    }

    /// Emergency: refuses a key's tokens at once (everywhere within a poll). When no usable key is left,
    /// a new one is made active immediately.
    pub async fn revoke_key(&self, kid: &str) -> Result<(), AuthError> {
        let now = now_ms();
        if !self.store.revoke_signing_key(kid, now).await? {
            return Err(AuthError::NotFound(format!("no unrevoked key {kid:?}")));
        }
        if self.load_keys().await?.signing_key_at(now).is_none() {
            self.store
                .add_signing_key(&StoredKey::generate(now, now)?)
                .await?;
            self.load_keys().await?;
        }
        Ok(())
    }

    /// The session a token belongs to: an access token (checked, revocation ignored) or a refresh token.
    async fn session_of_token(&self, token: &str) -> Result<Option<SessionRecord>, AuthError> {
        if let Ok((identity, _)) = self.verifier.verify_signed(token, now_ms()) {
            return Ok(self.store.session(&identity.session_id).await?);
        }
        Ok(self
            .store
            .refresh_token(&token_hash(token))
            .await?
            .map(|(session, _)| session))
    }

    /// RFC 7009: revokes the session of an access or refresh token; unknown tokens are not an error.
    pub async fn revoke_token(&self, token: &str) -> Result<(), AuthError> {
        if let Some(session) = self.session_of_token(token).await? {
            self.store
                .revoke_session(&session.id, "token revoked (RFC 7009)", now_ms())
                .await?;
            self.sync_revocations().await?;
        }
        Ok(())
    }

    /// RFC 7662: whether a token is active now, and what it says.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, AuthError> {
        let now = now_ms();
        if let Ok((claims, client)) = self.verifier.verify_claims(token, now) {
            let live = self
                .store
                .session(&claims.sid)
                .await?
                .is_some_and(|s| s.revoked_at_ms.is_none());
            if !live {
                return Ok(Introspection::default());
            }
            return Ok(Introspection {
                active: true,
                token_type: Some("access_token"),
                scope: Some(roles_scope(&claims.roles)),
                client_id: Some(client.as_str().to_owned()),
                sub: Some(claims.sub),
                aud: Some(claims.aud),
                iss: Some(claims.iss),
                exp: Some(claims.exp),
                iat: Some(claims.iat),
                jti: Some(claims.jti),
                sid: Some(claims.sid),
            });
        }
        let refresh = self.store.refresh_token(&token_hash(token)).await?;
        Ok(match refresh {
            Some((session, None)) if session.is_live(now) => Introspection {
                active: true,
                token_type: Some("refresh_token"),
                scope: Some(roles_scope(&session.roles)),
                client_id: Some(session.client.as_str().to_owned()),
                sub: Some(session.user_id),
                exp: Some(session.absolute_expires_at_ms.div_euclid(1000)),
                iat: Some(session.created_at_ms.div_euclid(1000)),
                sid: Some(session.id),
                ..Introspection::default()
            },
            _ => Introspection::default(),
        })
    }
}

fn roles_scope(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" ")
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
