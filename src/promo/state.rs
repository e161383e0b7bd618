//! Per-user eligibility state: what the rules remember about one user.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::timestamp::EpochMs;

/// One user's standing for one promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionStanding {
    pub promotion_id: Arc<str>,
    /// The fence the last `enter` was for.
    pub fence_id: Arc<str>,
    pub eligible: bool,
    /// The changelog's field names are kept from when times were plain integers.
    #[serde(rename = "last_enter_ms")]
    pub last_enter: EpochMs,
}

/// Everything remembered about one user. Small on purpose: millions of these live in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// Time of the newest point that was applied; older points do not flip state.
    #[serde(rename = "last_ts_ms")]
    pub last_ts: EpochMs,
    /// Only promotions the user is eligible for, or is still cooling down from.
    pub standings: Vec<PromotionStanding>,
}
