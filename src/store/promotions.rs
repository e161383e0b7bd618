//! Promotions: stored only when every fence they target is stored (checked in the same transaction).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{bump_version, query_error, Store, StoreError};
use crate::promo::{EpochMs, Promotion, PromotionSpec};

pub(super) const PROMOTION_SELECT: &str =
    "SELECT id, name, fence_ids, valid_from_ms, valid_until_ms, active, cooldown_ms FROM promotions";

pub(super) fn promotion_row(row: &AnyRow) -> Result<Promotion, StoreError> {
    let id: String = row
        .try_get(0)
        .map_err(query_error("reading a promotion row"))?;
    let raw = (|| {
        Ok::<_, sqlx::Error>((
            row.try_get::<String, _>(1)?,
            row.try_get::<String, _>(2)?,
            row.try_get::<Option<i64>, _>(3)?,
            row.try_get::<Option<i64>, _>(4)?,
            row.try_get::<i64, _>(5)?,
            row.try_get::<i64, _>(6)?,
        ))
    })()
    .map_err(query_error("reading a promotion row"))?;
    let (name, fence_ids, valid_from_ms, valid_until_ms, active, cooldown_ms) = raw;
    let fence_ids: Vec<String> =
        serde_json::from_str(&fence_ids).map_err(|err| StoreError::Corrupt {
            what: "promotion",
            id: id.clone(),
            problem: err.to_string(),
        })?;
    Ok(Promotion {
        id: id.as_str().into(),
        name,
        fence_ids: fence_ids.iter().map(|f| f.as_str().into()).collect(),
        valid_from: valid_from_ms.map(EpochMs::from_millis),
        valid_until: valid_until_ms.map(EpochMs::from_millis),
        active: active != 0,
        cooldown_ms,
    })
}

/// Stores one promotion inside `tx`, refusing it when a fence it targets is not stored (the catalog
/// invariant is kept in the same transaction as the change).
pub(super) async fn store_promotion_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    promotion: &Promotion,
    version: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let fence_ids: Vec<&str> = promotion.fence_ids.iter().map(|f| &**f).collect();
    let mut missing = Vec::new();
    for fence in &fence_ids {
        let found = sqlx::query("SELECT 1 FROM fences WHERE id = $1")
            .bind(*fence)
            .fetch_optional(&mut **tx)
            .await
            .map_err(query_error("checking a promotion's fences"))?;
        if found.is_none() {
            missing.push((*fence).to_owned());
        }
    }
    if !missing.is_empty() {
        return Err(StoreError::UnknownFences {
            promotion: promotion.id.to_string(),
            missing,
        });
    }
    sqlx::query(
        "INSERT INTO promotions (id, name, fence_ids, valid_from_ms, valid_until_ms, active, cooldown_ms, version, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, fence_ids = excluded.fence_ids,
           valid_from_ms = excluded.valid_from_ms, valid_until_ms = excluded.valid_until_ms,
           active = excluded.active, cooldown_ms = excluded.cooldown_ms, version = excluded.version,
           updated_at_ms = excluded.updated_at_ms",
    )
    .bind(&*promotion.id)
    .bind(promotion.name.as_str())
    .bind(serde_json::to_string(&fence_ids).unwrap_or_default())
    .bind(promotion.valid_from.map(EpochMs::as_millis))
    .bind(promotion.valid_until.map(EpochMs::as_millis))
    .bind(i64::from(promotion.active))
    .bind(promotion.cooldown_ms)
    .bind(version)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(query_error("storing a promotion"))?;
    Ok(())
}

/// Checks a promotion spec from an API body or file into a promotion.
pub fn promotion_from_spec(
    spec: &PromotionSpec,
) -> Result<Promotion, Vec<crate::promo::promotion::PromotionProblem>> {
    spec.parse(0)
}

impl Store {
    /// Creates or replaces a promotion (checked with the same rules as the promotions file).
    pub async fn upsert_promotion(
        &self,
        promotion: &Promotion,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        self.upsert_promotions(std::slice::from_ref(promotion), now_ms)
            .await
    }

    /// Creates or replaces promotions in one transaction (one catalog version): either all of them
    /// are stored or, when one targets a fence the store does not hold, none is.
    pub async fn upsert_promotions(
        &self,
        promotions: &[Promotion],
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        let version = bump_version(&mut tx).await?;
        for promotion in promotions {
            store_promotion_in(&mut tx, promotion, version, now_ms).await?;
        }
        tx.commit()
            .await
            .map_err(query_error("committing promotions"))?;
        Ok(version)
    }

    /// Deletes a promotion; `false` when there was none.
    pub async fn delete_promotion(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        bump_version(&mut tx).await?;
        let deleted = sqlx::query("DELETE FROM promotions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("deleting a promotion"))?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        tx.commit()
            .await
            .map_err(query_error("committing a promotion deletion"))?;
        Ok(true)
    }

    pub async fn load_promotions(&self) -> Result<Vec<Promotion>, StoreError> {
        let rows = sqlx::query(&format!("{PROMOTION_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading promotions"))?;
        rows.iter().map(promotion_row).collect()
    }

    pub async fn get_promotion(&self, id: &str) -> Result<Option<Promotion>, StoreError> {
        let sql = format!("{PROMOTION_SELECT} WHERE id = $1");
        self.find_by_key(&sql, id, "reading a promotion", promotion_row)
            .await
    }
}
