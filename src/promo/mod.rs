//! Promotions, per-user eligibility state and the wire events: the pure rules core (no I/O, no clock).

pub mod event;
pub mod promotion;
pub mod state;
pub mod timestamp;

pub use event::{decode_gps_event, DecodeError, EligibilityEvent, GpsEvent, TransitionKind};
pub use promotion::{
    parse_promotions, Catalog, CatalogError, Promotion, PromotionError, PromotionSpec, RuleOptions,
    SharedCatalog,
};
pub use state::{Outcome, PromotionStanding, Scratch, Transition, UserState};
