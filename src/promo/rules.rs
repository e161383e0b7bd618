//! The promotion rules: one pure decision per GPS point, no I/O, no clock (times are passed in).
//!
//! A user enters a promotion when a point is inside, or within the tolerance of, a fence the promotion
//! targets while the promotion is valid, and the cooldown since their last enter has run out. An eligible
//! user exits when no targeted fence is within tolerance + hysteresis (so GPS jitter at the boundary does
//! not flap), or when the promotion stops being valid. Points older than the user's newest applied point
//! (late) and points with a reported accuracy worse than the limit change nothing.

use std::sync::Arc;

use super::catalog::Catalog;
use super::event::{
    eligibility_event_id, reported_distance_m, EligibilityEvent, GpsEvent, TransitionKind,
    ELIGIBILITY_SCHEMA_VERSION,
};
use super::state::{PromotionStanding, UserState};
use super::timestamp::{Clock, EpochMs, FixedClock};
use crate::geofence::FenceMatch;

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

impl EligibilityEvent {
    /// The output for one transition of one GPS event, decided at `decided_at`.
    #[must_use]
    pub fn new(event: &GpsEvent<'_>, transition: &Transition, decided_at: EpochMs) -> Self {
        Self {
            schema_version: ELIGIBILITY_SCHEMA_VERSION,
            event_id: eligibility_event_id(event, &transition.promotion_id, transition.kind),
            kind: transition.kind,
            user_id: event.user_id.to_string(),
            promotion_id: transition.promotion_id.to_string(),
            fence_id: transition.fence_id.to_string(),
            fence_name: transition.fence_name.to_string(),
            inside: transition.inside,
            distance_m: transition.distance_m.map(reported_distance_m),
            lat: event.point.lat(),
            lon: event.point.lon(),
            event_ts: event.ts,
            emitted_at: decided_at,
            source_event_id: event.event_id.as_deref().map(str::to_owned),
        }
    }
}

/// Reusable buffers, so deciding a point allocates nothing in the common case (no transition).
#[derive(Debug, Default)]
pub struct Scratch {
    matches: Vec<FenceMatch>,
    /// (promotion, fence match, close enough to enter)
    candidates: Vec<(u32, FenceMatch, bool)>,
    transitions: Vec<Transition>,
}

/// The times one decision uses, passed in: the core never reads the system clock itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionTime<C = FixedClock> {
    /// Event times further ahead of this than `max_future_skew_ms` are clamped to it. The processor
    /// passes the input record's own timestamp, so a replay after a crash clamps exactly as the first run.
    pub reference: EpochMs,
    /// Read only when the point produces output, for the outputs' `emitted_at`: most points produce
    /// none, and a clock read per point is a measurable share of the processor's time.
    pub clock: C,
}

impl DecisionTime<FixedClock> {
    /// Both times the same instant (tests, benchmarks).
    #[must_use]
    pub fn at(at: EpochMs) -> Self {
        Self {
            reference: at,
            clock: FixedClock(at),
        }
    }
}

/// What one point did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The point was applied and lies near some fence (inside, or within tolerance + hysteresis).
    pub matched_any: bool,
}

impl Catalog {
    /// Ids of the fences the last decision made with `scratch` found near the point (for traces).
    pub fn matched_fence_ids<'a>(&'a self, scratch: &'a Scratch) -> impl Iterator<Item = &'a str> {
        scratch
            .matches
            .iter()
            .map(|m| &*self.index.fence(m.fence).id)
    }

    /// The whole decision for one point: applies it to the user's state and appends the output events it
    /// causes to `outputs` (exits first, then enters, each sorted by promotion id, so that a replay
    /// produces identical output).
    pub fn decide<C: Clock>(
        &self,
        state: &mut UserState,
        event: &GpsEvent<'_>,
        time: DecisionTime<C>,
        scratch: &mut Scratch,
        outputs: &mut Vec<EligibilityEvent>,
    ) -> Decision {
        let mut transitions = std::mem::take(&mut scratch.transitions);
        transitions.clear();
        let outcome = self.apply(state, event, time.reference, scratch, &mut transitions);
        if !transitions.is_empty() {
            let decided_at = time.clock.now();
            outputs.extend(
                transitions
                    .iter()
                    .map(|t| EligibilityEvent::new(event, t, decided_at)),
            );
        }
        scratch.transitions = transitions;
        Decision {
            outcome,
            matched_any: outcome == Outcome::Applied && !scratch.matches.is_empty(),
        }
    }

    /// Applies one point to a user's state and appends the transitions it causes.
    fn apply(
        &self,
        state: &mut UserState,
        event: &GpsEvent<'_>,
        reference: EpochMs,
        scratch: &mut Scratch,
        transitions: &mut Vec<Transition>,
    ) -> Outcome {
        let ts = event
            .ts
            .min(reference.plus_ms(self.rules.max_future_skew_ms));
        if ts < state.last_ts {
            return Outcome::IgnoredLate;
        }
        if event
            .accuracy_m
            .is_some_and(|a| a > self.rules.max_accuracy_m)
        {
            return Outcome::IgnoredInaccurate;
        }
        state.last_ts = ts;

        scratch.matches.clear();
        scratch.candidates.clear();
        self.index.match_point(event.point, &mut scratch.matches);
        for m in &scratch.matches {
            let promotions = self.promotions_of(m.fence);
            if promotions.is_empty() {
                continue;
            }
            let can_enter = m.inside || m.distance_m <= self.index.fence(m.fence).tolerance_m;
            for &p in promotions {
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
            let fence = self.index.position(&standing.fence_id);
            let found = fence.and_then(|f| scratch.matches.iter().find(|m| m.fence == f));
            transitions.push(Transition {
                kind: TransitionKind::Exit,
                promotion_id: standing.promotion_id.clone(),
                fence_id: standing.fence_id.clone(),
                fence_name: fence.map_or_else(
                    || standing.fence_id.clone(),
                    |f| self.index.fence(f).name.clone(),
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
                if standing.eligible || ts < standing.last_enter.plus_ms(promotion.cooldown_ms) {
                    continue;
                }
            }
            let fence = self.index.fence(m.fence);
            let fresh = PromotionStanding {
                promotion_id: promotion.id.clone(),
                fence_id: fence.id.clone(),
                eligible: true,
                last_enter: ts,
            };
            match existing {
                Some(i) => state.standings[i] = fresh,
                None => state.standings.push(fresh),
            }
            transitions.push(Transition {
                kind: TransitionKind::Enter,
                promotion_id: promotion.id.clone(),
                fence_id: fence.id.clone(),
                fence_name: fence.name.clone(),
                inside: m.inside,
                distance_m: Some(m.distance_m),
            });
        }
        // Forget standings that neither hold eligibility nor a running cooldown.
        state.standings.retain(|s| {
            s.eligible
                || self.by_id.get(&s.promotion_id).is_some_and(|&p| {
                    ts < s
                        .last_enter
                        .plus_ms(self.promotions[p as usize].cooldown_ms)
                })
        });
        transitions[first_new..].sort_by(|a, b| {
            (a.kind == TransitionKind::Enter, &a.promotion_id)
                .cmp(&(b.kind == TransitionKind::Enter, &b.promotion_id))
        });
        Outcome::Applied
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::geofence::{Fence, GeoPoint, IndexOptions, Polygon};
    use crate::promo::catalog::RuleOptions;
    use crate::promo::promotion::Promotion;

    /// Metres per degree of latitude near the test fences (WGS84 at 6° S).
    const METRES_PER_DEGREE: f64 = 110_590.0;
    const T0: i64 = 1_795_334_400_000;

    /// A fence 0.01° square (about 1.1 km) whose north edge is at `north`, with 1 km tolerance.
    fn square(id: &str, west: f64, north: f64) -> Fence {
        let (east, south) = (west + 0.01, north - 0.01);
        Fence {
            id: id.into(),
            name: format!("{id} city"),
            tolerance_m: 1000.0,
            polygons: vec![Polygon {
                rings: vec![vec![
                    [west, south],
                    [east, south],
                    [east, north],
                    [west, north],
                    [west, south],
                ]],
            }],
            circle: None,
        }
    }

    fn promotion(id: &str, fences: &[&str]) -> Promotion {
        Promotion {
            id: id.into(),
            name: id.into(),
            fence_ids: fences.iter().map(|f| Arc::from(*f)).collect(),
            valid_from: None,
            valid_until: None,
            active: true,
            cooldown_ms: 0,
        }
    }

    /// Fence `a` at 106.80 E, 6.20 S and fence `b` 0.5° east; promotions as given.
    fn catalog(promotions: Vec<Promotion>) -> Catalog {
        let fences = vec![square("a", 106.80, -6.20), square("b", 107.30, -6.20)];
        Catalog::build(
            fences,
            promotions,
            RuleOptions::default(),
            IndexOptions::default(),
        )
        .unwrap()
    }

    /// A point `metres` north of fence `a`'s north edge (negative: inside it).
    fn north_of_a(metres: f64) -> GeoPoint {
        GeoPoint::new(-6.20 + metres / METRES_PER_DEGREE, 106.805).unwrap()
    }

    fn inside_b() -> GeoPoint {
        GeoPoint::new(-6.205, 107.305).unwrap()
    }

    struct User {
        state: UserState,
        scratch: Scratch,
    }

    impl User {
        fn new() -> Self {
            Self {
                state: UserState::default(),
                scratch: Scratch::default(),
            }
        }

        /// Decides a point at `T0 + at_s` seconds; returns the outcome and the events as "kind promotion".
        fn at(
            &mut self,
            catalog: &Catalog,
            point: GeoPoint,
            at_s: i64,
            accuracy_m: Option<f64>,
        ) -> (Outcome, Vec<String>) {
            let ts = EpochMs::from_millis(T0 + at_s * 1000);
            let event = GpsEvent {
                user_id: Cow::Borrowed("u1"),
                point,
                ts,
                accuracy_m,
                event_id: None,
            };
            let mut outputs = Vec::new();
            let decision = catalog.decide(
                &mut self.state,
                &event,
                DecisionTime::at(ts),
                &mut self.scratch,
                &mut outputs,
            );
            let described = outputs
                .iter()
                .map(|o| format!("{} {}", o.kind.as_str(), o.promotion_id))
                .collect();
            (decision.outcome, described)
        }

        fn events(&mut self, catalog: &Catalog, point: GeoPoint, at_s: i64) -> Vec<String> {
            self.at(catalog, point, at_s, None).1
        }
    }

    #[test]
    fn a_point_within_tolerance_enters_and_the_event_says_how_far() {
        let catalog = catalog(vec![promotion("p", &["a"])]);
        let mut state = UserState::default();
        let ts = EpochMs::from_millis(T0);
        let event = GpsEvent {
            user_id: Cow::Borrowed("u1"),
            point: north_of_a(800.0),
            ts,
            accuracy_m: Some(10.0),
            event_id: Some(Cow::Borrowed("gps-1")),
        };
        let decided_at = ts.plus_ms(40);
        let mut outputs = Vec::new();
        let decision = catalog.decide(
            &mut state,
            &event,
            DecisionTime {
                reference: ts,
                clock: FixedClock(decided_at),
            },
            &mut Scratch::default(),
            &mut outputs,
        );
        assert_eq!(decision.outcome, Outcome::Applied);
        assert!(decision.matched_any);
        let [enter] = outputs.as_slice() else {
            panic!("{outputs:?}")
        };
        assert_eq!(enter.kind, TransitionKind::Enter);
        assert_eq!(
            (enter.fence_id.as_str(), enter.fence_name.as_str()),
            ("a", "a city")
        );
        assert!(!enter.inside);
        let distance = enter.distance_m.unwrap();
        assert!((distance - 800.0).abs() < 5.0, "{distance}");
        assert_eq!(
            distance,
            (distance * 10.0).round() / 10.0,
            "reported to the decimetre"
        );
        assert_eq!((enter.event_ts, enter.emitted_at), (ts, decided_at));
        assert_eq!(enter.source_event_id.as_deref(), Some("gps-1"));
        assert_eq!(
            enter.event_id,
            crate::promo::event::eligibility_event_id(&event, "p", TransitionKind::Enter)
        );
        assert!(state.standings[0].eligible);
    }

    #[test]
    fn hysteresis_keeps_an_eligible_user_in_but_does_not_let_a_new_one_enter() {
        let catalog = catalog(vec![promotion("p", &["a"])]);
        let mut newcomer = User::new();
        assert_eq!(
            newcomer.events(&catalog, north_of_a(1100.0), 0),
            Vec::<String>::new()
        );

        let mut user = User::new();
        assert_eq!(user.events(&catalog, north_of_a(-100.0), 0), ["enter p"]);
        // Beyond the 1 km tolerance but within tolerance + 200 m hysteresis: still eligible.
        assert!(user.events(&catalog, north_of_a(1100.0), 10).is_empty());
        assert!(user.events(&catalog, north_of_a(1180.0), 20).is_empty());
        assert_eq!(user.events(&catalog, north_of_a(1300.0), 30), ["exit p"]);
        assert!(
            user.state.standings.is_empty(),
            "no cooldown: nothing left to remember"
        );
    }

    #[test]
    fn the_cooldown_holds_back_a_second_enter_until_it_has_run_out() {
        let mut cooling = promotion("p", &["a"]);
        cooling.cooldown_ms = 600_000;
        let catalog = catalog(vec![cooling]);
        let mut user = User::new();
        assert_eq!(user.events(&catalog, north_of_a(-100.0), 0), ["enter p"]);
        assert_eq!(user.events(&catalog, north_of_a(5000.0), 60), ["exit p"]);
        assert!(user.events(&catalog, north_of_a(-100.0), 120).is_empty());
        assert!(user.events(&catalog, north_of_a(5000.0), 180).is_empty());
        // 600 s after the first enter, not after the exit.
        assert!(user.events(&catalog, north_of_a(-100.0), 599).is_empty());
        assert_eq!(user.events(&catalog, north_of_a(-100.0), 600), ["enter p"]);
    }

    #[test]
    fn late_and_inaccurate_points_change_nothing() {
        let catalog = catalog(vec![promotion("p", &["a"])]);
        let mut user = User::new();
        assert_eq!(user.events(&catalog, north_of_a(-100.0), 100), ["enter p"]);
        let before = user.state.clone();
        assert_eq!(
            user.at(&catalog, north_of_a(5000.0), 99, None),
            (Outcome::IgnoredLate, vec![])
        );
        assert_eq!(
            user.at(&catalog, north_of_a(5000.0), 200, Some(150.0)),
            (Outcome::IgnoredInaccurate, vec![])
        );
        assert_eq!(user.state, before);
        // Same time as the newest applied point is not late.
        assert_eq!(
            user.at(&catalog, north_of_a(5000.0), 100, Some(20.0)),
            (Outcome::Applied, vec!["exit p".to_owned()])
        );
    }

    #[test]
    fn a_promotion_counts_only_inside_its_window_and_ends_with_an_exit() {
        let mut windowed = promotion("p", &["a"]);
        windowed.valid_from = Some(EpochMs::from_millis(T0 + 60_000));
        windowed.valid_until = Some(EpochMs::from_millis(T0 + 120_000));
        let catalog = catalog(vec![windowed]);
        let mut user = User::new();
        assert!(user.events(&catalog, north_of_a(-100.0), 59).is_empty());
        assert_eq!(user.events(&catalog, north_of_a(-100.0), 60), ["enter p"]);
        assert!(user.events(&catalog, north_of_a(-100.0), 119).is_empty());
        assert_eq!(user.events(&catalog, north_of_a(-100.0), 120), ["exit p"]);
        assert!(user.scratch.matches.len() == 1, "the fence still matches");
    }

    #[test]
    fn moving_between_fences_exits_first_and_keeps_a_shared_promotion() {
        let catalog = catalog(vec![
            promotion("only-a", &["a"]),
            promotion("only-b", &["b"]),
            promotion("both", &["a", "b"]),
        ]);
        let mut user = User::new();
        assert_eq!(
            user.events(&catalog, north_of_a(-100.0), 0),
            ["enter both", "enter only-a"]
        );
        // `both` targets the new fence too: the user stays eligible, with no exit/enter pair.
        assert_eq!(
            user.events(&catalog, inside_b(), 60),
            ["exit only-a", "enter only-b"]
        );
        let both = user
            .state
            .standings
            .iter()
            .find(|s| &*s.promotion_id == "both")
            .unwrap();
        assert_eq!(
            &*both.fence_id, "a",
            "the fence of the enter, not of the latest point"
        );
    }

    #[test]
    fn a_time_far_ahead_of_the_reference_is_clamped_so_later_points_are_not_late() {
        let catalog = catalog(vec![promotion("p", &["a"])]);
        let mut state = UserState::default();
        let mut scratch = Scratch::default();
        let reference = EpochMs::from_millis(T0);
        let point = |ts: EpochMs, metres: f64| GpsEvent {
            user_id: Cow::Borrowed("u1"),
            point: north_of_a(metres),
            ts,
            accuracy_m: None,
            event_id: None,
        };
        let mut outputs = Vec::new();
        let skewed = point(reference.plus_ms(86_400_000), -100.0);
        catalog.decide(
            &mut state,
            &skewed,
            DecisionTime::at(reference),
            &mut scratch,
            &mut outputs,
        );
        assert_eq!(
            state.last_ts,
            reference.plus_ms(RuleOptions::default().max_future_skew_ms)
        );
        let next = point(reference.plus_ms(400_000), 5000.0);
        let decision = catalog.decide(
            &mut state,
            &next,
            DecisionTime::at(reference.plus_ms(400_000)),
            &mut scratch,
            &mut outputs,
        );
        assert_eq!(decision.outcome, Outcome::Applied);
        let kinds: Vec<_> = outputs.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [TransitionKind::Enter, TransitionKind::Exit]);
    }
}
