//! Promotions, the promotions file, and the catalog the processor matches against.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use super::timestamp;
use crate::geofence::{Fence, FenceIndex, IndexOptions};

/// A promotion: which fences it targets, when it is valid, and how often a user may be told again.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub id: Arc<str>,
    pub name: String,
    pub fence_ids: Vec<Arc<str>>,
    /// Inclusive start, epoch ms; `None` means always started.
    pub valid_from_ms: Option<i64>,
    /// Exclusive end, epoch ms; `None` means never ends.
    pub valid_until_ms: Option<i64>,
    pub active: bool,
    /// Minimum time between two `enter` events of one user for this promotion.
    pub cooldown_ms: i64,
}

impl Promotion {
    #[must_use]
    pub fn is_valid_at(&self, ts_ms: i64) -> bool {
        self.active
            && self.valid_from_ms.is_none_or(|from| ts_ms >= from)
            && self.valid_until_ms.is_none_or(|until| ts_ms < until)
    }
}

/// A promotion as written in the promotions file or an API body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionSpec {
    #[schema(min_length = 1, max_length = 128)]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[schema(min_items = 1)]
    pub fences: Vec<String>,
    /// RFC 3339; absent: valid from the start.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub valid_from: Option<String>,
    /// RFC 3339; absent: no end.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub valid_until: Option<String>,
    #[serde(default = "default_active")]
    pub active: bool,
    /// Least time between two enters of one user (counted from the last enter).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31536000)]
    pub cooldown_s: Option<f64>,
}

fn default_active() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromotionsFile {
    promotions: Vec<PromotionSpec>,
}

/// What is wrong with one promotion; `index` is its position in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("promotion {index} (id {id:?}): {problem}")]
pub struct PromotionProblem {
    pub index: usize,
    pub id: String,
    pub problem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error("promotions file is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{} invalid promotion(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<PromotionProblem>),
}

impl PromotionSpec {
    /// Checks one spec; `index` only labels the problems.
    pub fn parse(&self, index: usize) -> Result<Promotion, Vec<PromotionProblem>> {
        let mut problems = Vec::new();
        let mut problem = |text: String| {
            problems.push(PromotionProblem {
                index,
                id: self.id.clone(),
                problem: text,
            });
        };
        if self.id.trim().is_empty() || self.id.len() > 128 {
            problem("id must be 1 to 128 characters".into());
        }
        for (field, value) in std::iter::once(("id", &self.id))
            .chain(self.name.iter().map(|n| ("name", n)))
            .chain(self.fences.iter().map(|f| ("fences", f)))
        {
            if let Err(error) = crate::text::check_printable(field, value) {
                problem(error.to_string());
            }
        }
        if self.fences.is_empty() {
            problem("fences is empty; a promotion targets at least one fence".into());
        }
        let mut time = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(timestamp::parse_rfc3339_ms)
                .transpose()
                .unwrap_or_else(|err| {
                    problem(format!("{field}: {err}"));
                    None
                })
        };
        let valid_from_ms = time("valid_from", &self.valid_from);
        let valid_until_ms = time("valid_until", &self.valid_until);
        let mut problems_after = Vec::new();
        if let (Some(from), Some(until)) = (valid_from_ms, valid_until_ms) {
            if from >= until {
                problems_after.push("valid_from must be before valid_until".to_string());
            }
        }
        let cooldown_ms = match self.cooldown_s {
            None => 0,
            Some(s) if s.is_finite() && (0.0..=365.0 * 86_400.0).contains(&s) => {
                (s * 1000.0) as i64
            }
            Some(s) => {
                problems_after.push(format!("cooldown_s {s} must be between 0 and one year"));
                0
            }
        };
        for text in problems_after {
            problems.push(PromotionProblem {
                index,
                id: self.id.clone(),
                problem: text,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Promotion {
            id: Arc::from(self.id.as_str()),
            name: self.name.clone().unwrap_or_else(|| self.id.clone()),
            fence_ids: self.fences.iter().map(|f| Arc::from(f.as_str())).collect(),
            valid_from_ms,
            valid_until_ms,
            active: self.active,
            cooldown_ms,
        })
    }
}

/// Parses a promotions file: `{"promotions": [...]}`. Reports every problem of every promotion.
pub fn parse_promotions(bytes: &[u8]) -> Result<Vec<Promotion>, PromotionError> {
    let file: PromotionsFile = serde_json::from_slice(bytes)?;
    let mut promotions = Vec::with_capacity(file.promotions.len());
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (index, spec) in file.promotions.iter().enumerate() {
        if !seen.insert(spec.id.as_str()) {
            problems.push(PromotionProblem {
                index,
                id: spec.id.clone(),
                problem: "duplicate id".into(),
            });
        }
        match spec.parse(index) {
            Ok(promotion) => promotions.push(promotion),
            Err(mut found) => problems.append(&mut found),
        }
    }
    if problems.is_empty() {
        Ok(promotions)
    } else {
        Err(PromotionError::Invalid(problems))
    }
}

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

    /// What matches a point at `ts_ms`: every fence the point is inside or within the fence's tolerance of,
    /// with the promotions valid then that target it.
    #[must_use]
    pub fn match_now(&self, point: crate::geofence::GeoPoint, ts_ms: i64) -> Vec<PointMatch> {
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
                    distance_m: (m.distance_m * 10.0).round() / 10.0,
                    promotions: self.by_fence[f]
                        .iter()
                        .map(|&p| &self.promotions[p as usize])
                        .filter(|p| p.is_valid_at(ts_ms))
                        .map(|p| p.id.to_string())
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let err = parse_promotions(
            br#"{"promotions":[
                {"id":"a","fences":["x"],"valid_from":"2027-01-01T00:00:00Z","valid_until":"2026-01-01T00:00:00Z"},
                {"id":"a","fences":[],"cooldown_s":-5},
                {"id":"c","fences":["x"],"valid_until":"soon"}]}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("promotion 0 (id \"a\"): valid_from must be before valid_until"),
            "{text}"
        );
        assert!(
            text.contains("promotion 1 (id \"a\"): duplicate id"),
            "{text}"
        );
        assert!(
            text.contains("promotion 1 (id \"a\"): fences is empty"),
            "{text}"
        );
        assert!(
            text.contains("cooldown_s -5 must be between 0 and one year"),
            "{text}"
        );
        assert!(
            text.contains("promotion 2 (id \"c\"): valid_until: ts \"soon\""),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_json_name_the_spot() {
        let err = parse_promotions(br#"{"promotions":[{"id":"a","fences":["x"],"colour":"red"}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        assert!(err.to_string().contains("line 1 column"), "{err}");
    }

    #[test]
    fn validity_window_is_half_open_and_inactive_never_valid() {
        let promotion = parse_promotions(
            br#"{"promotions":[{"id":"a","fences":["x"],"valid_from":"2026-01-01T00:00:00Z","valid_until":"2026-02-01T00:00:00Z"}]}"#,
        )
        .unwrap()
        .remove(0);
        let from = promotion.valid_from_ms.unwrap();
        let until = promotion.valid_until_ms.unwrap();
        assert!(!promotion.is_valid_at(from - 1));
        assert!(promotion.is_valid_at(from));
        assert!(!promotion.is_valid_at(until));
        let inactive = Promotion {
            active: false,
            ..promotion
        };
        assert!(!inactive.is_valid_at(from));
    }
}
