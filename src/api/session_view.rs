//! How sessions and revocations are shown to their owner (`auth`) and to admins (`admin`).

use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::store::SessionRecord;
use crate::auth::{ClientKind, Role};
use crate::promo::timestamp::format_rfc3339_ms;

#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    /// Sessions that were live and are now revoked.
    pub revoked: u64,
}

/// A session as its owner or an admin sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    id: String,
    client: ClientKind,
    roles: Vec<Role>,
    created_at: String,
    last_used_at: String,
    idle_expires_at: String,
    absolute_expires_at: String,
    revoked_at: Option<String>,
    revoked_reason: Option<String>,
    device_label: Option<String>,
    user_agent: Option<String>,
    /// The session of the calling token.
    current: bool,
}

pub fn session_view(session: SessionRecord, current_session: &str) -> SessionView {
    SessionView {
        current: session.id == current_session,
        id: session.id,
        client: session.client,
        roles: session.roles,
        created_at: format_rfc3339_ms(session.created_at_ms),
        last_used_at: format_rfc3339_ms(session.last_used_at_ms),
        idle_expires_at: format_rfc3339_ms(session.idle_expires_at_ms),
        absolute_expires_at: format_rfc3339_ms(session.absolute_expires_at_ms),
        revoked_at: session.revoked_at_ms.map(format_rfc3339_ms),
        revoked_reason: session.revoked_reason,
        device_label: session.device_label,
        user_agent: session.user_agent,
    }
}
