//! The audit trail: who changed what, when and from where, for every change made through the API.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{query_error, Store, StoreError};

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Sorts in time order; pass the last one as `after` for the next page.
    pub id: String,
    pub at_ms: i64,
    /// The subject of the caller's token.
    pub actor: String,
    /// What was done, e.g. `fence.upsert`, `promotion.delete`, `user.disable`, `key.rotate`.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// The peer address of the request.
    pub remote: String,
    pub detail: Option<String>,
}

impl AuditEntry {
    /// An entry at `at_ms`; `suffix` (random) keeps ids of the same millisecond apart.
    #[must_use]
    pub fn new(
        at_ms: i64,
        suffix: &str,
        actor: &str,
        action: &str,
        target: &str,
        remote: &str,
    ) -> Self {
        Self {
            id: format!("{at_ms:013}-{suffix}"),
            at_ms,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            remote: remote.to_owned(),
            detail: None,
        }
    }

    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

fn audit_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    (|| {
        Ok::<_, sqlx::Error>(AuditEntry {
            id: row.try_get(0)?,
            at_ms: row.try_get(1)?,
            actor: row.try_get(2)?,
            action: row.try_get(3)?,
            target: row.try_get(4)?,
            remote: row.try_get(5)?,
            detail: row.try_get(6)?,
        })
    })()
    .map_err(query_error("reading the audit trail"))
}

impl Store {
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, actor, action, target, remote, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(entry.id.as_str())
        .bind(entry.at_ms)
        .bind(entry.actor.as_str())
        .bind(entry.action.as_str())
        .bind(entry.target.as_str())
        .bind(entry.remote.as_str())
        .bind(entry.detail.as_deref())
        .execute(&self.pool)
        .await
        .map_err(query_error("recording an audit entry"))?;
        Ok(())
    }

    /// Entries after `after` (an entry id), oldest first.
    pub async fn audit_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, target, remote, detail FROM audit_log
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(query_error("reading the audit trail"))?;
        rows.iter().map(audit_row).collect()
    }
}
