//! The catalog as stored: fences and promotions loaded together, with what cannot be used quarantined
//! instead of failing; and seeding an empty store.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::fences::{fence_row, FENCE_SELECT};
use super::promotions::{promotion_row, PROMOTION_SELECT};
use super::{query_error, Store, StoreError};
use crate::geofence::{parse_fences, Fence, ParseOptions};
use crate::promo::Promotion;

/// What changed in the stored catalog between two versions.
#[derive(Debug, Clone)]
pub struct CatalogChanges {
    pub from: i64,
    pub to: i64,
    /// Fences stored or replaced after `from`.
    pub upserted: Vec<Fence>,
    /// Ids of fences deleted after `from`, oldest first. A fence deleted and stored again is in both
    /// lists: apply the deletions first.
    pub deleted: Vec<String>,
    /// Every promotion, as it stands at `to`.
    pub promotions: Vec<Promotion>,
    /// Changed rows that cannot be used, one line each.
    pub quarantined: Vec<String>,
}

/// Parses fence rows through the same validation as an upload; unusable rows are described, not fatal.
fn fences_from_rows(rows: &[AnyRow]) -> Result<(Vec<Fence>, Vec<String>), StoreError> {
    let mut quarantined = Vec::new();
    let mut features = Vec::with_capacity(rows.len());
    for row in rows {
        let fence = match fence_row(row) {
            Ok(fence) => fence,
            Err(error) => {
                quarantined.push(format!("a fence row: {error}"));
                continue;
            }
        };
        match serde_json::from_str::<serde_json::Value>(&fence.geometry) {
            Ok(geometry) => features.push(serde_json::json!({
                "type": "Feature", "id": fence.id,
                "properties": {"name": fence.name, "tolerance_m": fence.tolerance_m},
                "geometry": geometry,
            })),
            Err(error) => {
                quarantined.push(format!(
                    "fence {:?}: geometry is not JSON: {error}",
                    fence.id
                ));
            }
        }
    }
    let collection = serde_json::json!({"type": "FeatureCollection", "features": features});
    let parsed = parse_fences(
        collection.to_string().as_bytes(),
        &ParseOptions::default().skip_invalid(true),
    )
    .map_err(|err| StoreError::Corrupt {
        what: "fence set",
        id: String::new(),
        problem: err.report_lines().join("; "),
    })?;
    quarantined.extend(
        crate::geofence::geojson::problem_lines(&parsed.skipped)
            .into_iter()
            .map(|line| format!("fence {line}")),
    );
    Ok((parsed.fences, quarantined))
}

/// The stored catalog, as far as it can be built, and what had to be left out.
#[derive(Debug, Clone)]
pub struct CatalogParts {
    pub fences: Vec<Fence>,
    pub promotions: Vec<Promotion>,
    /// One line per row left out, saying which and why.
    pub quarantined: Vec<String>,
}

impl Store {
    /// What the catalog is built from: every fence and promotion that can be read back and fits the
    /// rest. A row that cannot (edited by hand, written by an older version, a promotion whose fence is
    /// gone) is left out and described in `quarantined`, so one bad row never stops a service.
    pub async fn load_catalog_parts(&self) -> Result<CatalogParts, StoreError> {
        let rows = sqlx::query(&format!("{FENCE_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading fences"))?;
        let (fences, mut quarantined) = fences_from_rows(&rows)?;
        let known: std::collections::HashSet<&str> = fences.iter().map(|f| f.id.as_str()).collect();
        let (promotions, unusable) = self.usable_promotions(|id| known.contains(id)).await?;
        quarantined.extend(unusable);
        Ok(CatalogParts {
            fences,
            promotions,
            quarantined,
        })
    }

    /// What changed after catalog version `from`, up to the current version (returned with it): the fences
    /// stored or replaced, the ids deleted, and every promotion (they are few; a change to one is cheap).
    /// Rows that cannot be used are described in `quarantined`, as for [`Store::load_catalog_parts`].
    pub async fn catalog_changes_since(&self, from: i64) -> Result<CatalogChanges, StoreError> {
        // The version first: every change at or below it has committed, later ones wait for the next call.
        let to = self.catalog_version().await?;
        let rows = sqlx::query(&format!(
            "{FENCE_SELECT} WHERE version > $1 AND version <= $2 ORDER BY id"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await
        .map_err(query_error("loading changed fences"))?;
        let (upserted, mut quarantined) = fences_from_rows(&rows)?;
        let deleted = sqlx::query(
            "SELECT id FROM fence_deletions WHERE version > $1 AND version <= $2 ORDER BY version",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await
        .map_err(query_error("loading fence deletions"))?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_error("loading fence deletions"))?;
        // Whether a promotion's fences exist is the catalog's to check: it knows the fences it holds.
        let (promotions, unusable) = self.usable_promotions(|_| true).await?;
        quarantined.extend(unusable);
        Ok(CatalogChanges {
            from,
            to,
            upserted,
            deleted,
            promotions,
            quarantined,
        })
    }

    /// Every promotion row that reads back and whose fences pass `fence_known`; the rest described.
    async fn usable_promotions(
        &self,
        fence_known: impl Fn(&str) -> bool,
    ) -> Result<(Vec<Promotion>, Vec<String>), StoreError> {
        let mut quarantined = Vec::new();
        let rows = sqlx::query(&format!("{PROMOTION_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading promotions"))?;
        let mut promotions = Vec::with_capacity(rows.len());
        for row in &rows {
            match promotion_row(row) {
                Ok(promotion) => {
                    let missing: Vec<&str> = promotion
                        .fence_ids
                        .iter()
                        .map(|f| &**f)
                        .filter(|f| !fence_known(f))
                        .collect();
                    if missing.is_empty() {
                        promotions.push(promotion);
                    } else {
                        quarantined.push(format!(
                            "promotion {:?}: targets missing or unreadable fence(s) {}",
                            &*promotion.id,
                            missing.join(", ")
                        ));
                    }
                }
                Err(error) => quarantined.push(format!("a promotion row: {error}")),
            }
        }
        Ok((promotions, quarantined))
    }

    /// Seeds fences and promotions when the store has none (first run on the bundled data).
    pub async fn seed_if_empty(
        &self,
        fences: &[Fence],
        promotions: &[Promotion],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM fences")
            .fetch_one(&self.reader)
            .await
            .map_err(query_error("counting fences"))?
            .try_get(0)
            .map_err(query_error("counting fences"))?;
        if count > 0 {
            return Ok(false);
        }
        self.upsert_fences(fences, now_ms).await?;
        self.upsert_promotions(promotions, now_ms).await?;
        Ok(true)
    }
}
