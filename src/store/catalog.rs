//! The catalog as stored: fences and promotions loaded together, with what cannot be used quarantined
//! instead of failing; and seeding an empty store.

use sqlx::Row;

use super::fences::{fence_row, FENCE_SELECT};
use super::promotions::{promotion_row, PROMOTION_SELECT};
use super::{query_error, Store, StoreError};
use crate::geofence::{parse_fences, Fence, ParseOptions};
use crate::promo::Promotion;

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
        let mut quarantined = Vec::new();
        let rows = sqlx::query(&format!("{FENCE_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(query_error("loading fences"))?;
        let mut features = Vec::with_capacity(rows.len());
        for row in &rows {
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
        let fences = parsed.fences;
        let known: std::collections::HashSet<&str> = fences.iter().map(|f| f.id.as_str()).collect();
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
                        .filter(|f| !known.contains(f))
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
        Ok(CatalogParts {
            fences,
            promotions,
            quarantined,
        })
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
