//! Promotions, per-user eligibility state and the wire events: the pure rules core (no I/O, no clock).
//!
//! [`Catalog::decide`] takes a decoded [`GpsEvent`], the user's [`UserState`] and the [`DecisionTime`] and
//! returns the [`Decision`], the [`EligibilityEvent`]s to emit and the new state; everything around it
//! (Kafka, the API, the store) only moves bytes in and out.

pub mod catalog;
pub mod event;
mod fast_json;
pub mod promotion;
pub mod rules;
pub mod state;
pub mod timestamp;

pub use catalog::{Catalog, CatalogError, PointMatch, RuleOptions, SharedCatalog};
pub use event::{decode_gps_event, DecodeError, EligibilityEvent, GpsEvent, TransitionKind};
pub use promotion::{parse_promotions, Promotion, PromotionError, PromotionProblem, PromotionSpec};
pub use rules::{Decision, DecisionTime, Outcome, Scratch, Transition};
pub use state::{PromotionStanding, UserState};
pub use timestamp::EpochMs;
