//! Users, sessions, refresh tokens and signing keys in the store.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::keys::StoredKey;
use super::{ClientKind, Role};
use crate::store::{query_error, Store, StoreError};

/// A user who can log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<Role>,
    pub disabled_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// A login session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub client: ClientKind,
    pub roles: Vec<Role>,
    pub rotation_key: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: i64,
    pub idle_expires_at_ms: i64,
    pub absolute_expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoked_reason: Option<String>,
    pub device_label: Option<String>,
    pub user_agent: Option<String>,
}

impl SessionRecord {
    /// Not revoked and not expired at `now_ms`.
    #[must_use]
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none()
            && now_ms < self.idle_expires_at_ms
            && now_ms < self.absolute_expires_at_ms
    }
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// No such token.
    Unknown,
    /// The token's session is revoked or expired.
    Ended(SessionRecord),
    /// This call rotated the token (its successor is stored).
    Rotated {
        session: SessionRecord,
        rotated_at_ms: i64,
    },
    /// Already rotated within the grace window: answer as the rotation did.
    Replayed {
        session: SessionRecord,
        rotated_at_ms: i64,
    },
    /// Already rotated before the grace window: the session has now been revoked.
    Reused(SessionRecord),
}

const USER_SELECT: &str =
    "SELECT id, username, password_hash, roles, disabled_at_ms, created_at_ms FROM users";
const SESSION_SELECT: &str = "SELECT id, user_id, client, roles, rotation_key, created_at_ms, last_used_at_ms,
    idle_expires_at_ms, absolute_expires_at_ms, revoked_at_ms, revoked_reason, device_label, user_agent
    FROM sessions";
const KEY_SELECT: &str =
    "SELECT kid, private_pkcs8, public_x, created_at_ms, active_from_ms, revoked_at_ms FROM signing_keys";

/// Why refresh-token reuse revoked a session (recorded in `sessions.revoked_reason`).
pub const REUSE_REASON: &str = "refresh token reused after rotation";

fn corrupt(what: &'static str, id: &str, problem: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        id: id.to_owned(),
        problem: problem.to_string(),
    }
}

fn user_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    let read = || query_error("reading a user row");
    let id: String = row.try_get(0).map_err(read())?;
    let roles: Option<String> = row.try_get(3).map_err(read())?;
    Ok(UserRecord {
        username: row
            .try_get::<Option<String>, _>(1)
            .map_err(read())?
            .unwrap_or_default(),
        password_hash: row
            .try_get::<Option<String>, _>(2)
            .map_err(read())?
            .unwrap_or_default(),
        roles: Role::parse_list(roles.as_deref().unwrap_or(""))
            .map_err(|e| corrupt("user", &id, e))?,
        disabled_at_ms: row.try_get(4).map_err(read())?,
        created_at_ms: row.try_get(5).map_err(read())?,
        id,
    })
}

fn session_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let read = || query_error("reading a session row");
    let id: String = row.try_get(0).map_err(read())?;
    let client: String = row.try_get(2).map_err(read())?;
    let roles: String = row.try_get(3).map_err(read())?;
    Ok(SessionRecord {
        user_id: row.try_get(1).map_err(read())?,
        client: ClientKind::parse(&client)
            .ok_or_else(|| corrupt("session", &id, format!("unknown client {client:?}")))?,
        roles: Role::parse_list(&roles).map_err(|e| corrupt("session", &id, e))?,
        rotation_key: row.try_get(4).map_err(read())?,
        created_at_ms: row.try_get(5).map_err(read())?,
        last_used_at_ms: row.try_get(6).map_err(read())?,
        idle_expires_at_ms: row.try_get(7).map_err(read())?,
        absolute_expires_at_ms: row.try_get(8).map_err(read())?,
        revoked_at_ms: row.try_get(9).map_err(read())?,
        revoked_reason: row.try_get(10).map_err(read())?,
        device_label: row.try_get(11).map_err(read())?,
        user_agent: row.try_get(12).map_err(read())?,
        id,
    })
}

fn key_row(row: &AnyRow) -> Result<StoredKey, StoreError> {
    let read = || query_error("reading a signing key row");
    Ok(StoredKey {
        kid: row.try_get(0).map_err(read())?,
        private_pkcs8: row.try_get(1).map_err(read())?,
        public_x: row.try_get(2).map_err(read())?,
        created_at_ms: row.try_get(3).map_err(read())?,
        active_from_ms: row.try_get(4).map_err(read())?,
        revoked_at_ms: row.try_get(5).map_err(read())?,
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Adds a user; a taken username or id is a [`StoreError::Conflict`].
    pub async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, roles, disabled_at_ms, created_at_ms, password_changed_at_ms)
             VALUES ($1, $2, $3, $4, NULL, $5, $5)",
        )
        .bind(user.id.as_str())
        .bind(user.username.as_str())
        .bind(user.password_hash.as_str())
        .bind(Role::join(&user.roles))
        .bind(user.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if is_unique_violation(&source) {
                StoreError::Conflict(format!(
                    "a user with username {:?} or id {:?} exists",
                    user.username, user.id
                ))
            } else {
                StoreError::Query {
                    context: "adding a user",
                    source,
                }
            }
        })?;
        Ok(())
    }

    pub async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("{USER_SELECT} WHERE username = $1");
        self.find_by_key(&sql, username, "reading a user", user_row)
            .await
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("{USER_SELECT} WHERE id = $1 AND username IS NOT NULL");
        self.find_by_key(&sql, id, "reading a user", user_row).await
    }

    /// How many users can log in (the dev banner's "no admin yet" hint).
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) FROM users WHERE username IS NOT NULL")
            .fetch_one(&self.reader)
            .await
            .map_err(query_error("counting users"))?
            .try_get(0)
            .map_err(query_error("counting users"))
    }

    /// Replaces a password hash and revokes every session of the user except `keep_session`.
    pub async fn set_password(
        &self,
        user_id: &str,
        password_hash: &str,
        keep_session: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at_ms = $2 WHERE id = $3",
        )
        .bind(password_hash)
        .bind(now_ms)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(query_error("changing a password"))?;
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked_at_ms = $1, revoked_reason = 'password changed'
             WHERE user_id = $2 AND revoked_at_ms IS NULL AND id <> $3",
        )
        .bind(now_ms)
        .bind(user_id)
        .bind(keep_session.unwrap_or(""))
        .execute(&mut *tx)
        .await
        .map_err(query_error("revoking sessions"))?
        .rows_affected();
        tx.commit()
            .await
            .map_err(query_error("committing a password change"))?;
        Ok(revoked)
    }

    /// Disables a user and revokes all their sessions; `false` when there is no such user.
    pub async fn disable_user(&self, user_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        let found = sqlx::query(
            "UPDATE users SET disabled_at_ms = COALESCE(disabled_at_ms, $1) WHERE id = $2 AND username IS NOT NULL",
        )
        .bind(now_ms)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(query_error("disabling a user"))?
        .rows_affected()
            > 0;
        sqlx::query(
            "UPDATE sessions SET revoked_at_ms = $1, revoked_reason = 'user disabled'
             WHERE user_id = $2 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(query_error("revoking sessions"))?;
        tx.commit()
            .await
            .map_err(query_error("committing a user change"))?;
        Ok(found)
    }

    /// Opens a session with its first refresh token (by hash).
    pub async fn create_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, client, roles, rotation_key, created_at_ms, last_used_at_ms,
               idle_expires_at_ms, absolute_expires_at_ms, revoked_at_ms, revoked_reason, device_label, user_agent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, $10, $11)",
        )
        .bind(session.id.as_str())
        .bind(session.user_id.as_str())
        .bind(session.client.as_str())
        .bind(Role::join(&session.roles))
        .bind(session.rotation_key.as_str())
        .bind(session.created_at_ms)
        .bind(session.last_used_at_ms)
        .bind(session.idle_expires_at_ms)
        .bind(session.absolute_expires_at_ms)
        .bind(session.device_label.as_deref())
        .bind(session.user_agent.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(query_error("opening a session"))?;
        insert_refresh(&mut tx, refresh_hash, &session.id, session.created_at_ms).await?;
        tx.commit()
            .await
            .map_err(query_error("committing a session"))?;
        Ok(())
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!("{SESSION_SELECT} WHERE id = $1");
        self.find_by_key(&sql, id, "reading a session", session_row)
            .await
    }

    /// A user's sessions, newest first.
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let sql = format!("{SESSION_SELECT} WHERE user_id = $1 ORDER BY created_at_ms DESC, id");
        self.list_by_key(&sql, user_id, "listing sessions", session_row)
            .await
    }

    /// Revokes one session; `false` when it was already revoked or does not exist.
    pub async fn revoke_session(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE sessions SET revoked_at_ms = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("revoking a session"))?
        .rows_affected()
            > 0)
    }

    /// Revokes every live session of a user; returns how many.
    pub async fn revoke_sessions_of(
        &self,
        user_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE sessions SET revoked_at_ms = $1, revoked_reason = $2 WHERE user_id = $3 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(query_error("revoking sessions"))?
        .rows_affected())
    }

    /// Sessions revoked at or after `since_ms`, as (id, revoked at).
    pub async fn revocations_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT id, revoked_at_ms FROM sessions WHERE revoked_at_ms >= $1")
            .bind(since_ms)
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("reading revocations"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(query_error("reading revocations"))?,
                    row.try_get(1).map_err(query_error("reading revocations"))?,
                ))
            })
            .collect()
    }

    /// The session of a refresh token (by hash) and when the token was rotated, if it was.
    pub async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRecord, Option<i64>)>, StoreError> {
        let row = sqlx::query(
            "SELECT session_id, rotated_at_ms FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await
        .map_err(query_error("reading a refresh token"))?;
        let Some(row) = row else { return Ok(None) };
        let session_id: String = row
            .try_get(0)
            .map_err(query_error("reading a refresh token"))?;
        let rotated: Option<i64> = row
            .try_get(1)
            .map_err(query_error("reading a refresh token"))?;
        Ok(self.session(&session_id).await?.map(|s| (s, rotated)))
    }

    /// Exchanges a refresh token: exactly one caller rotates it (storing the successor computed by
    /// `successor_hash` from the session), callers within `grace_ms` of that rotation replay it, later
    /// ones revoke the session. Runs in one transaction so concurrent callers serialise on the token row.
    pub async fn rotate_refresh_token(
        &self,
        token_hash: &str,
        successor_hash: impl FnOnce(&SessionRecord) -> String,
        now_ms: i64,
        grace_ms: i64,
        idle_ms: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        let context = "rotating a refresh token";
        let mut tx = self.pool.begin().await.map_err(query_error(context))?;
        let row = sqlx::query(
            "SELECT session_id, rotated_at_ms FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_error(context))?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Unknown);
        };
        let session_id: String = row.try_get(0).map_err(query_error(context))?;
        let mut rotated_at: Option<i64> = row.try_get(1).map_err(query_error(context))?;
        let session = sqlx::query(&format!("{SESSION_SELECT} WHERE id = $1"))
            .bind(session_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error(context))?;
        let Some(session) = session.as_ref().map(session_row).transpose()? else {
            return Ok(RefreshOutcome::Unknown);
        };
        if !session.is_live(now_ms) {
            return Ok(RefreshOutcome::Ended(session));
        }
        if rotated_at.is_none() {
            let won = sqlx::query(
                "UPDATE refresh_tokens SET rotated_at_ms = $1 WHERE token_hash = $2 AND rotated_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(token_hash)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?
            .rows_affected()
                == 1;
            if won {
                insert_refresh(&mut tx, &successor_hash(&session), &session.id, now_ms).await?;
                sqlx::query("UPDATE sessions SET last_used_at_ms = $1, idle_expires_at_ms = $2 WHERE id = $3")
                    .bind(now_ms)
                    .bind((now_ms + idle_ms).min(session.absolute_expires_at_ms))
                    .bind(session.id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error(context))?;
                tx.commit().await.map_err(query_error(context))?;
                return Ok(RefreshOutcome::Rotated {
                    session,
                    rotated_at_ms: now_ms,
                });
            }
            // Another caller rotated it between our read and our update (PostgreSQL re-reads after the
            // row lock is released): read what it wrote.
            rotated_at =
                sqlx::query("SELECT rotated_at_ms FROM refresh_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query_error(context))?
                    .try_get(0)
                    .map_err(query_error(context))?;
        }
        let rotated_at_ms = rotated_at.unwrap_or(now_ms);
        if now_ms - rotated_at_ms <= grace_ms {
            return Ok(RefreshOutcome::Replayed {
                session,
                rotated_at_ms,
            });
        }
        sqlx::query(
            "UPDATE sessions SET revoked_at_ms = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(REUSE_REASON)
        .bind(session.id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(query_error(context))?;
        tx.commit().await.map_err(query_error(context))?;
        Ok(RefreshOutcome::Reused(session))
    }

    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(&format!("{KEY_SELECT} ORDER BY active_from_ms, kid"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("reading signing keys"))?;
        rows.iter().map(key_row).collect()
    }

    pub async fn add_signing_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_pkcs8, public_x, created_at_ms, active_from_ms, revoked_at_ms)
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(key.kid.as_str())
        .bind(key.private_pkcs8.as_str())
        .bind(key.public_x.as_str())
        .bind(key.created_at_ms)
        .bind(key.active_from_ms)
        .execute(&self.pool)
        .await
        .map_err(query_error("adding a signing key"))?;
        Ok(())
    }

    /// Emergency revocation of a key; `false` when there is no such (unrevoked) key.
    pub async fn revoke_signing_key(&self, kid: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE signing_keys SET revoked_at_ms = $1 WHERE kid = $2 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(kid)
        .execute(&self.pool)
        .await
        .map_err(query_error("revoking a signing key"))?
        .rows_affected()
            > 0)
    }
}

async fn insert_refresh(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    token_hash: &str,
    session_id: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at_ms, rotated_at_ms) VALUES ($1, $2, $3, NULL)",
    )
    .bind(token_hash)
    .bind(session_id)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_error("storing a refresh token"))?;
    Ok(())
}
