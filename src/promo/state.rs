//! Per-user eligibility state and the rules that move it: pure, no I/O, time passed in.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::event::{GpsEvent, TransitionKind};
use super::promotion::Catalog;
use crate::geofence::FenceMatch;

/// One user's standing for one promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionStanding {
    pub promotion_id: Arc<str>,
    /// The fence the last `enter` was for.
    pub fence_id: Arc<str>,
    pub eligible: bool,
    pub last_enter_ms: i64,
}

/// Everything remembered about one user. Small on purpose: millions of these live in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// Time of the newest point that was applied; older points do not flip state.
    pub last_ts_ms: i64,
    /// Only promotions the user is eligible for, or is still cooling down from.
    pub standings: Vec<PromotionStanding>,
}

/// What happened to one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The point was applied (it may or may not have produced transitions).
    Applied,
    /// Reported accuracy worse than the limit.
    IgnoredInaccurate,
    /// Older than the user's newest applied point.
    IgnoredLate,
}

/// An enter or exit decided for one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub promotion_id: Arc<str>,
    pub fence_id: Arc<str>,
    pub fence_name: Arc<str>,
    pub inside: bool,
    pub distance_m: Option<f64>,
}

/// Reusable buffers, so evaluating a point allocates nothing in the common case.
#[derive(Debug, Default)]
pub struct Scratch {
    matches: Vec<FenceMatch>,
    /// (promotion, fence match, close enough to enter)
    candidates: Vec<(u32, FenceMatch, bool)>,
}

impl Scratch {
    /// Whether the last evaluated point was near any targeted fence.
    #[must_use]
    pub fn matched_any(&self) -> bool {
        !self.matches.is_empty()
    }
}

impl Catalog {
    /// Applies one point to a user's state and appends the transitions it causes (exits first, then
    /// enters, each sorted by promotion id so that replays produce identical output).
    pub fn evaluate(
        &self,
        state: &mut UserState,
        event: &GpsEvent<'_>,
        now_ms: i64,
        scratch: &mut Scratch,
        transitions: &mut Vec<Transition>,
    ) -> Outcome {
        let ts = event
            .ts_ms
            .min(now_ms.saturating_add(self.rules.max_future_skew_ms));
        if ts < state.last_ts_ms {
            return Outcome::IgnoredLate;
        }
        if event
            .accuracy_m
            .is_some_and(|a| a > self.rules.max_accuracy_m)
        {
            return Outcome::IgnoredInaccurate;
        }
        state.last_ts_ms = ts;

        scratch.matches.clear();
        scratch.candidates.clear();
        self.index.match_point(event.point, &mut scratch.matches);
        for m in &scratch.matches {
            let fence = m.fence as usize;
            let can_enter = m.inside || m.distance_m <= self.enter_tolerance_m[fence];
            for &p in &self.by_fence[fence] {
                if !self.promotions[p as usize].is_valid_at(ts) {
                    continue;
                }
                // Keep the best match per promotion: one that allows entry, then the nearest.
                match scratch.candidates.iter_mut().find(|c| c.0 == p) {
                    Some(best) => {
                        if (can_enter, -m.distance_m) > (best.2, -best.1.distance_m) {
                            *best = (p, *m, can_enter);
                        }
                    }
                    None => scratch.candidates.push((p, *m, can_enter)),
                }
            }
        }

        let first_new = transitions.len();
        // Exits: eligible standings with no candidate left within tolerance + hysteresis.
        for standing in &mut state.standings {
            if !standing.eligible {
                continue;
            }
            let still_near = self
                .by_id
                .get(&standing.promotion_id)
                .is_some_and(|p| scratch.candidates.iter().any(|c| c.0 == *p));
            if still_near {
                continue;
            }
            standing.eligible = false;
            let fence = self
                .fence_ids
                .iter()
                .position(|id| *id == standing.fence_id);
            let found = fence.and_then(|f| scratch.matches.iter().find(|m| m.fence as usize == f));
            transitions.push(Transition {
                kind: TransitionKind::Exit,
                promotion_id: standing.promotion_id.clone(),
                fence_id: standing.fence_id.clone(),
                fence_name: fence.map_or_else(
                    || standing.fence_id.clone(),
                    |f| self.fence_names[f].clone(),
                ),
                inside: found.is_some_and(|m| m.inside),
                distance_m: found.map(|m| m.distance_m),
            });
        }
        // Enters: candidates close enough, not already eligible, past their cooldown.
        for &(p, m, can_enter) in &scratch.candidates {
            if !can_enter {
                continue;
            }
            let promotion = &self.promotions[p as usize];
            let existing = state
                .standings
                .iter()
                .position(|s| s.promotion_id == promotion.id);
            if let Some(i) = existing {
                let standing = &state.standings[i];
                if standing.eligible
                    || ts < standing.last_enter_ms.saturating_add(promotion.cooldown_ms)
                {
                    continue;
                }
            }
            let fence = m.fence as usize;
            let fresh = PromotionStanding {
                promotion_id: promotion.id.clone(),
                fence_id: self.fence_ids[fence].clone(),
                eligible: true,
                last_enter_ms: ts,
            };
            match existing {
                Some(i) => state.standings[i] = fresh,
                None => state.standings.push(fresh),
            }
            transitions.push(Transition {
                kind: TransitionKind::Enter,
                promotion_id: promotion.id.clone(),
                fence_id: self.fence_ids[fence].clone(),
                fence_name: self.fence_names[fence].clone(),
                inside: m.inside,
                distance_m: Some(m.distance_m),
            });
        }
        // Forget standings that neither hold eligibility nor a running cooldown.
        state.standings.retain(|s| {
            s.eligible
                || self.by_id.get(&s.promotion_id).is_some_and(|&p| {
                    ts < s
                        .last_enter_ms
                        .saturating_add(self.promotions[p as usize].cooldown_ms)
                })
        });
        transitions[first_new..].sort_by(|a, b| {
            (a.kind == TransitionKind::Enter, &a.promotion_id)
                .cmp(&(b.kind == TransitionKind::Enter, &b.promotion_id))
        });
        Outcome::Applied
    }
}
