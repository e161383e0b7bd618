//! Sessions: logins, refresh rotation, revocation, and RFC 7009 / 7662 token endpoints.

use std::net::IpAddr;

use jsonwebtoken::{Algorithm, Header};

use super::{Auth, AuthError, Introspection, IssuedTokens};
use crate::auth::limits::retry_after_s;
use crate::auth::secret::{random_id, random_token, successor_token, token_hash};
use crate::auth::store::{RefreshOutcome, SessionRecord, REUSE_REASON};
use crate::auth::token::{AccessClaims, ClientKind, Role};
use crate::promo::timestamp::now_ms;

impl Auth {
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

    pub(super) async fn open_session(
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
    pub(super) fn tokens_for(
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

    /// The session a token belongs to: an access token (checked, revocation ignored) or a refresh token.
    pub(super) async fn session_of_token(
        &self,
        token: &str,
    ) -> Result<Option<SessionRecord>, AuthError> {
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
