//! Fences: stored as GeoJSON geometry with their tolerance; deleting one that a promotion targets is
//! refused in the same transaction.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{bump_version, query_error, Store, StoreError};
use crate::geofence::geojson::{fence_feature, fence_geometry};
use crate::geofence::{parse_fences, Fence, ParseOptions};

pub(super) const FENCE_SELECT: &str =
    "SELECT id, name, tolerance_m, geometry, vertex_count, version, updated_at_ms FROM fences";

/// A fence as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredFence {
    pub id: String,
    pub name: String,
    pub tolerance_m: f64,
    /// GeoJSON geometry text.
    pub geometry: String,
    pub vertex_count: i64,
    pub version: i64,
    pub updated_at_ms: i64,
}

/// Ids of the promotions whose fence list names `fence` (read inside the caller's transaction).
pub(super) async fn promotions_targeting(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    fence: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT id, fence_ids FROM promotions ORDER BY id")
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error("reading promotions' fences"))?;
    let mut targeting = Vec::new();
    for row in &rows {
        let id: String = row
            .try_get(0)
            .map_err(query_error("reading promotions' fences"))?;
        let fences: String = row
            .try_get(1)
            .map_err(query_error("reading promotions' fences"))?;
        // A row that cannot be read back counts as targeting: refusing is the safe side.
        let targets = serde_json::from_str::<Vec<String>>(&fences)
            .map_or(true, |list| list.iter().any(|f| f == fence));
        if targets {
            targeting.push(id);
        }
    }
    Ok(targeting)
}

pub(super) fn fence_row(row: &AnyRow) -> Result<StoredFence, StoreError> {
    let read = query_error("reading a fence row");
    (|| {
        Ok::<_, sqlx::Error>(StoredFence {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            tolerance_m: row.try_get(2)?,
            geometry: row.try_get(3)?,
            vertex_count: row.try_get(4)?,
            version: row.try_get(5)?,
            updated_at_ms: row.try_get(6)?,
        })
    })()
    .map_err(read)
}

impl Store {
    /// Inserts or replaces fences in one transaction and bumps the catalog version once. Returns it.
    pub async fn upsert_fences(&self, fences: &[Fence], now_ms: i64) -> Result<i64, StoreError> {
        self.upsert_fences_with_progress(fences, now_ms, |_| {})
            .await
    }

    /// [`Store::upsert_fences`], calling `progress` with the number stored so far.
    pub async fn upsert_fences_with_progress(
        &self,
        fences: &[Fence],
        now_ms: i64,
        mut progress: impl FnMut(usize),
    ) -> Result<i64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        let version = bump_version(&mut tx).await?;
        for (stored, fence) in fences.iter().enumerate() {
            sqlx::query(
                "INSERT INTO fences (id, name, tolerance_m, geometry, vertex_count, version, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, tolerance_m = excluded.tolerance_m,
                   geometry = excluded.geometry, vertex_count = excluded.vertex_count,
                   version = excluded.version, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(fence.id.as_str())
            .bind(fence.name.as_str())
            .bind(fence.tolerance_m)
            .bind(fence_geometry(fence).to_string())
            .bind(fence.vertex_count() as i64)
            .bind(version)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_error("storing a fence"))?;
            progress(stored + 1);
        }
        tx.commit()
            .await
            .map_err(query_error("committing fences"))?;
        Ok(version)
    }

    /// Fences ordered by id, after the cursor `after` (exclusive), optionally whose name contains `name`.
    pub async fn list_fences(
        &self,
        after: Option<&str>,
        name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredFence>, StoreError> {
        let pattern = name.map(|n| format!("%{}%", n.replace('%', "\\%").replace('_', "\\_")));
        let sql = format!(
            "{FENCE_SELECT} WHERE id > $1 AND ($2 = '' OR name LIKE $3 ESCAPE '\\') ORDER BY id LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(after.unwrap_or(""))
            .bind(pattern.as_deref().unwrap_or(""))
            .bind(pattern.as_deref().unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("listing fences"))?;
        rows.iter().map(fence_row).collect()
    }

    pub async fn get_fence(&self, id: &str) -> Result<Option<StoredFence>, StoreError> {
        let sql = format!("{FENCE_SELECT} WHERE id = $1");
        self.find_by_key(&sql, id, "reading a fence", fence_row)
            .await
    }

    /// Deletes a fence; `false` when there was none. Refused ([`StoreError::FenceInUse`]) while a
    /// promotion targets it, in the same transaction, so the stored catalog always builds.
    pub async fn delete_fence(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        // First, so that concurrent catalog changes queue behind this one (the version row is locked).
        let version = bump_version(&mut tx).await?;
        let promotions = promotions_targeting(&mut tx, id).await?;
        if !promotions.is_empty() {
            return Err(StoreError::FenceInUse {
                fence: id.to_owned(),
                promotions,
            });
        }
        let deleted = sqlx::query("DELETE FROM fences WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_error("deleting a fence"))?
            .rows_affected();
        if deleted == 0 {
            // Nothing changed: do not publish a new catalog version.
            return Ok(false);
        }
        sqlx::query("INSERT INTO fence_deletions (id, version) VALUES ($1, $2)")
            .bind(id)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(query_error("recording a fence deletion"))?;
        tx.commit()
            .await
            .map_err(query_error("committing a fence deletion"))?;
        Ok(true)
    }

    /// Every stored fence, validated again on the way out (a row edited by hand cannot poison the index).
    pub async fn load_fences(&self) -> Result<Vec<Fence>, StoreError> {
        let rows = sqlx::query(&format!("{FENCE_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading fences"))?;
        let mut features = Vec::with_capacity(rows.len());
        for row in &rows {
            let fence = fence_row(row)?;
            let geometry: serde_json::Value =
                serde_json::from_str(&fence.geometry).map_err(|err| StoreError::Corrupt {
                    what: "fence",
                    id: fence.id.clone(),
                    problem: err.to_string(),
                })?;
            features.push(serde_json::json!({
                "type": "Feature", "id": fence.id,
                "properties": {"name": fence.name, "tolerance_m": fence.tolerance_m},
                "geometry": geometry,
            }));
        }
        let collection = serde_json::json!({"type": "FeatureCollection", "features": features});
        parse_fences(collection.to_string().as_bytes(), &ParseOptions::default())
            .map(|parsed| parsed.fences)
            .map_err(|err| StoreError::Corrupt {
                what: "fence set",
                id: String::new(),
                problem: err.report_lines().join("; "),
            })
    }

    /// The fence as a GeoJSON Feature.
    #[must_use]
    pub fn feature_of(fence: &Fence) -> serde_json::Value {
        fence_feature(fence)
    }
}
