//! The catalog: one immutable snapshot of fences and promotions with the index points are matched against.

use std::collections::HashMap;
use std::sync::Arc;

use super::event::reported_distance_m;
use super::promotion::Promotion;
use super::timestamp::EpochMs;
use crate::geofence::{Fence, FenceIndex, IndexOptions};

/// How points turn into eligibility.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleOptions {
    /// Points with a worse reported accuracy do not change state.
    pub max_accuracy_m: f64,
    /// An eligible user exits only when farther than tolerance + this from every targeted fence, so that
    /// GPS jitter at the boundary does not flap enter/exit.
    pub hysteresis_m: f64,
    /// Event times further ahead of the processing clock than this are clamped to it, so one device with
    /// a wrong clock cannot make its later, correct points look late.
    pub max_future_skew_ms: i64,
}

impl Default for RuleOptions {
    fn default() -> Self {
        Self {
            max_accuracy_m: 100.0,
            hysteresis_m: 200.0,
            max_future_skew_ms: 5 * 60 * 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("promotion {promotion:?} targets fence {fence:?}, which is not in the fence set")]
    UnknownFence { promotion: String, fence: String },
    #[error("hysteresis_m {0} must be between 0 and 10000")]
    BadHysteresis(f64),
    #[error("max_accuracy_m {0} must be a positive number of metres")]
    BadAccuracy(f64),
}

/// One fence a point matches, with the promotions it currently qualifies for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PointMatch {
    pub fence_id: String,
    pub fence_name: String,
    pub inside: bool,
    pub distance_m: f64,
    pub promotions: Vec<String>,
    /// `[lon, lat]` of the fence boundary's point nearest to the probe (only when asked for: `nearest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearest: Option<[f64; 2]>,
}

/// One immutable snapshot of fences and promotions, with the index the processor matches against. Swapped
/// whole (see [`SharedCatalog`]) so that a reader always sees a consistent pair.
#[derive(Debug)]
pub struct Catalog {
    pub(crate) index: FenceIndex,
    /// Enter threshold per indexed fence: its own tolerance (the index holds tolerance + hysteresis).
    pub(crate) enter_tolerance_m: Vec<f64>,
    pub(crate) fence_ids: Vec<Arc<str>>,
    pub(crate) fence_names: Vec<Arc<str>>,
    pub(crate) promotions: Vec<Promotion>,
    /// Promotions (positions in `promotions`) per indexed fence.
    pub(crate) by_fence: Vec<Vec<u32>>,
    pub(crate) by_id: HashMap<Arc<str>, u32>,
    pub(crate) rules: RuleOptions,
    /// All fences, targeted or not, for lookups by id.
    all_fences: usize,
    /// Stored rows left out of this catalog, and why (see `Store::load_catalog_parts`).
    quarantined: Vec<String>,
}

pub type SharedCatalog = arc_swap::ArcSwap<Catalog>;

impl Catalog {
    /// Builds the matcher: every fence, grown by the hysteresis, with the promotions targeting it.
    pub fn build(
        fences: &[Fence],
        promotions: Vec<Promotion>,
        rules: RuleOptions,
        index_options: IndexOptions,
    ) -> Result<Self, CatalogError> {
        if !(0.0..=10_000.0).contains(&rules.hysteresis_m) {
            return Err(CatalogError::BadHysteresis(rules.hysteresis_m));
        }
        if !(rules.max_accuracy_m.is_finite() && rules.max_accuracy_m > 0.0) {
            return Err(CatalogError::BadAccuracy(rules.max_accuracy_m));
        }
        let fence_position: HashMap<&str, usize> = fences
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.as_str(), i))
            .collect();
        // Every fence is indexed (so `/v1/match` can answer for any of them); untargeted fences simply have
        // no promotions and cost only their share of the raster.
        let indexed: Vec<usize> = (0..fences.len()).collect();
        let mut by_fence: Vec<Vec<u32>> = vec![Vec::new(); fences.len()];
        for (p, promotion) in promotions.iter().enumerate() {
            for fence_id in &promotion.fence_ids {
                let Some(&f) = fence_position.get(&**fence_id) else {
                    return Err(CatalogError::UnknownFence {
                        promotion: promotion.id.to_string(),
                        fence: fence_id.to_string(),
                    });
                };
                let list = &mut by_fence[f];
                if !list.contains(&(p as u32)) {
                    list.push(p as u32);
                }
            }
        }
        let grown: Vec<Fence> = indexed
            .iter()
            .map(|&f| {
                let mut fence = fences[f].clone();
                fence.tolerance_m += rules.hysteresis_m;
                fence
            })
            .collect();
        let index = FenceIndex::build(&grown, index_options);
        let by_id = promotions
            .iter()
            .enumerate()
            .map(|(p, promotion)| (promotion.id.clone(), p as u32))
            .collect();
        Ok(Self {
            index,
            enter_tolerance_m: indexed.iter().map(|&f| fences[f].tolerance_m).collect(),
            fence_ids: indexed
                .iter()
                .map(|&f| Arc::from(fences[f].id.as_str()))
                .collect(),
            fence_names: indexed
                .iter()
                .map(|&f| Arc::from(fences[f].name.as_str()))
                .collect(),
            promotions,
            by_fence,
            by_id,
            rules,
            all_fences: fences.len(),
            quarantined: Vec::new(),
        })
    }

    /// Records what was left out of this catalog when it was built from stored data.
    #[must_use]
    pub fn with_quarantined(mut self, quarantined: Vec<String>) -> Self {
        self.quarantined = quarantined;
        self
    }

    /// Stored rows left out of this catalog, one line each.
    #[must_use]
    pub fn quarantined(&self) -> &[String] {
        &self.quarantined
    }

    /// Promotions that are active (switched on; their window may still be ahead or behind).
    #[must_use]
    pub fn active_promotions(&self) -> usize {
        self.promotions.iter().filter(|p| p.active).count()
    }

    #[must_use]
    pub fn promotions(&self) -> &[Promotion] {
        &self.promotions
    }

    #[must_use]
    pub fn rules(&self) -> RuleOptions {
        self.rules
    }

    /// Fences loaded / fences some promotion targets.
    #[must_use]
    pub fn fence_counts(&self) -> (usize, usize) {
        (
            self.all_fences,
            self.by_fence.iter().filter(|p| !p.is_empty()).count(),
        )
    }

    /// What matches a point at `at`: every fence the point is inside or within the fence's tolerance of,
    /// with the promotions valid then that target it.
    #[must_use]
    pub fn match_at(&self, point: crate::geofence::GeoPoint, at: EpochMs) -> Vec<PointMatch> {
        let mut found = Vec::new();
        self.index.match_point(point, &mut found);
        found
            .iter()
            .filter(|m| m.inside || m.distance_m <= self.enter_tolerance_m[m.fence as usize])
            .map(|m| {
                let f = m.fence as usize;
                PointMatch {
                    fence_id: self.fence_ids[f].to_string(),
                    fence_name: self.fence_names[f].to_string(),
                    inside: m.inside,
                    distance_m: reported_distance_m(m.distance_m),
                    promotions: self.by_fence[f]
                        .iter()
                        .map(|&p| &self.promotions[p as usize])
                        .filter(|p| p.is_valid_at(at))
                        .map(|p| p.id.to_string())
                        .collect(),
                    nearest: None,
                }
            })
            .collect()
    }
}
