//! The catalog: one immutable snapshot of fences and promotions with the index points are matched against.

use std::collections::HashMap;
use std::sync::Arc;

use super::event::reported_distance_m;
use super::promotion::Promotion;
use super::timestamp::EpochMs;
use rustc_hash::FxHashMap;

use crate::geofence::{Fence, FenceChange, IndexOptions, LayeredIndex};

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

fn check_rules(rules: RuleOptions) -> Result<(), CatalogError> {
    if !(0.0..=10_000.0).contains(&rules.hysteresis_m) {
        return Err(CatalogError::BadHysteresis(rules.hysteresis_m));
    }
    if !(rules.max_accuracy_m.is_finite() && rules.max_accuracy_m > 0.0) {
        return Err(CatalogError::BadAccuracy(rules.max_accuracy_m));
    }
    Ok(())
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
///
/// The index is layered ([`LayeredIndex`]): a fence change builds a new catalog sharing the old one's base
/// ([`Catalog::with_changes`]), a promotion change shares the whole index.
#[derive(Debug)]
pub struct Catalog {
    /// Every fence, reaching tolerance + hysteresis; [`FenceInfo::tolerance_m`] is the enter threshold.
    ///
    /// [`FenceInfo::tolerance_m`]: crate::geofence::FenceInfo::tolerance_m
    pub(crate) index: Arc<LayeredIndex>,
    pub(crate) promotions: Vec<Promotion>,
    /// Promotions (positions in `promotions`) per targeted fence position; fences nobody targets are absent.
    pub(crate) by_fence: FxHashMap<u32, Vec<u32>>,
    pub(crate) by_id: HashMap<Arc<str>, u32>,
    pub(crate) rules: RuleOptions,
    /// Stored rows left out of this catalog, and why (see `Store::load_catalog_parts`).
    quarantined: Vec<String>,
}

pub type SharedCatalog = arc_swap::ArcSwap<Catalog>;

impl Catalog {
    /// Builds the matcher: every fence, reaching tolerance + hysteresis, with the promotions targeting it.
    pub fn build(
        fences: Vec<Fence>,
        promotions: Vec<Promotion>,
        rules: RuleOptions,
        index_options: IndexOptions,
    ) -> Result<Self, CatalogError> {
        check_rules(rules)?;
        // Every fence is indexed (so `/v1/match` can answer for any of them); untargeted fences simply have
        // no promotions and cost only their share of the raster.
        let index = LayeredIndex::build(fences, index_options.extra_reach_m(rules.hysteresis_m));
        Self::assemble(Arc::new(index), promotions, rules)
    }

    /// This catalog with fences added, replaced or deleted, and the promotions replaced when `promotions`
    /// is given: costs the changed fences (see [`LayeredIndex::apply`]), not a rebuild.
    pub fn with_changes(
        &self,
        fence_changes: Vec<FenceChange>,
        promotions: Option<Vec<Promotion>>,
    ) -> Result<Self, CatalogError> {
        let index = if fence_changes.is_empty() {
            Arc::clone(&self.index)
        } else {
            Arc::new(self.index.apply(fence_changes))
        };
        let promotions = promotions.unwrap_or_else(|| self.promotions.clone());
        Self::assemble(index, promotions, self.rules)
            .map(|catalog| catalog.with_quarantined(self.quarantined.clone()))
    }

    /// This catalog over another index holding the same fences (a compaction of this one's).
    pub fn with_index(&self, index: LayeredIndex) -> Result<Self, CatalogError> {
        Self::assemble(Arc::new(index), self.promotions.clone(), self.rules)
            .map(|catalog| catalog.with_quarantined(self.quarantined.clone()))
    }

    /// The index this catalog matches with (to compact it in the background).
    #[must_use]
    pub fn index(&self) -> &Arc<LayeredIndex> {
        &self.index
    }

    fn assemble(
        index: Arc<LayeredIndex>,
        promotions: Vec<Promotion>,
        rules: RuleOptions,
    ) -> Result<Self, CatalogError> {
        let mut by_fence: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        for (p, promotion) in promotions.iter().enumerate() {
            for fence_id in &promotion.fence_ids {
                let Some(f) = index.position(fence_id) else {
                    return Err(CatalogError::UnknownFence {
                        promotion: promotion.id.to_string(),
                        fence: fence_id.to_string(),
                    });
                };
                let list = by_fence.entry(f).or_default();
                if !list.contains(&(p as u32)) {
                    list.push(p as u32);
                }
            }
        }
        let by_id = promotions
            .iter()
            .enumerate()
            .map(|(p, promotion)| (promotion.id.clone(), p as u32))
            .collect();
        Ok(Self {
            index,
            promotions,
            by_fence,
            by_id,
            rules,
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
        (self.index.len(), self.by_fence.len())
    }

    /// The promotions targeting the fence at `position` (none for an untargeted fence).
    pub(crate) fn promotions_of(&self, position: u32) -> &[u32] {
        self.by_fence.get(&position).map_or(&[], Vec::as_slice)
    }

    /// What matches a point at `at`: every fence the point is inside or within the fence's tolerance of,
    /// with the promotions valid then that target it.
    #[must_use]
    pub fn match_at(&self, point: crate::geofence::GeoPoint, at: EpochMs) -> Vec<PointMatch> {
        let mut found = Vec::new();
        self.index.match_point(point, &mut found);
        found
            .iter()
            .filter_map(|m| {
                let fence = self.index.fence(m.fence);
                (m.inside || m.distance_m <= fence.tolerance_m).then_some((m, fence))
            })
            .map(|(m, fence)| PointMatch {
                fence_id: fence.id.to_string(),
                fence_name: fence.name.to_string(),
                inside: m.inside,
                distance_m: reported_distance_m(m.distance_m),
                promotions: self
                    .promotions_of(m.fence)
                    .iter()
                    .map(|&p| &self.promotions[p as usize])
                    .filter(|p| p.is_valid_at(at))
                    .map(|p| p.id.to_string())
                    .collect(),
                nearest: None,
            })
            .collect()
    }
}
