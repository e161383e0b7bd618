//! Current eligibility: one row per (user, promotion) while the user is eligible, written from the
//! processor's output events.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{query_error, Store, StoreError};

/// One user's current eligibility for one promotion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eligibility {
    pub user_id: String,
    pub promotion_id: String,
    pub fence_id: String,
    pub since_ms: i64,
    pub event_id: String,
}

/// A transition to materialise: `enter` upserts the row, `exit` deletes it.
#[derive(Debug, Clone, PartialEq)]
pub enum EligibilityChange {
    Enter(Eligibility),
    Exit {
        user_id: String,
        promotion_id: String,
    },
}

pub(super) fn eligibility_row(row: &AnyRow) -> Result<Eligibility, StoreError> {
    (|| {
        Ok::<_, sqlx::Error>(Eligibility {
            user_id: row.try_get(0)?,
            promotion_id: row.try_get(1)?,
            fence_id: row.try_get(2)?,
            since_ms: row.try_get(3)?,
            event_id: row.try_get(4)?,
        })
    })()
    .map_err(query_error("reading eligibility"))
}

impl Store {
    /// Applies transitions in one transaction: enters upsert, exits delete.
    pub async fn record_eligibility(
        &self,
        changes: &[EligibilityChange],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        for change in changes {
            match change {
                EligibilityChange::Enter(e) => sqlx::query(
                    "INSERT INTO eligibility (user_id, promotion_id, fence_id, since_ms, event_id, updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (user_id, promotion_id) DO UPDATE SET fence_id = excluded.fence_id,
                       since_ms = excluded.since_ms, event_id = excluded.event_id, updated_at_ms = excluded.updated_at_ms",
                )
                .bind(e.user_id.as_str())
                .bind(e.promotion_id.as_str())
                .bind(e.fence_id.as_str())
                .bind(e.since_ms)
                .bind(e.event_id.as_str())
                .bind(now_ms),
                EligibilityChange::Exit { user_id, promotion_id } => {
                    sqlx::query("DELETE FROM eligibility WHERE user_id = $1 AND promotion_id = $2")
                        .bind(user_id.as_str())
                        .bind(promotion_id.as_str())
                }
            }
            .execute(&mut *tx)
            .await
            .map_err(query_error("recording eligibility"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("committing eligibility"))?;
        Ok(())
    }

    /// A user's current eligible promotions, by promotion id.
    pub async fn eligibility_of(&self, user_id: &str) -> Result<Vec<Eligibility>, StoreError> {
        self.list_by_key(
            "SELECT user_id, promotion_id, fence_id, since_ms, event_id FROM eligibility
             WHERE user_id = $1 ORDER BY promotion_id",
            user_id,
            "reading eligibility",
            eligibility_row,
        )
        .await
    }
}
