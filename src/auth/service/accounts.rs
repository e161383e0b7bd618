//! Accounts and signing keys: users, password changes, disabling, key rotation and revocation.

use super::{Auth, AuthError};
use crate::auth::keys::StoredKey;
use crate::auth::store::UserRecord;
use crate::auth::token::{Identity, Role};
use crate::promo::timestamp::now_ms;

impl Auth {
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
}
