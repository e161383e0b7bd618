//! Roles, client kinds, access-token claims and the identity a verified token yields.

use serde::{Deserialize, Serialize};

/// What a caller may do. A user holds any set of roles; a session gets those its client kind allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Posts its own locations, reads its own promotions.
    Mobile,
    /// Manages fences and promotions, reads anyone's results.
    Ops,
    /// Reads eligibility, introspects tokens.
    Consumer,
    /// Manages users, sessions and signing keys.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Mobile, Role::Ops, Role::Consumer, Role::Admin];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mobile => "mobile",
            Role::Ops => "ops",
            Role::Consumer => "consumer",
            Role::Admin => "admin",
        }
    }

    /// Parses a comma-separated list (`"ops,admin"`); unknown names are an error naming them.
    pub fn parse_list(text: &str) -> Result<Vec<Role>, String> {
        let mut roles = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let role = Role::ALL
                .into_iter()
                .find(|r| r.as_str() == name)
                .ok_or_else(|| format!("unknown role {name:?} (mobile, ops, consumer, admin)"))?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(roles)
    }

    #[must_use]
    pub fn join(roles: &[Role]) -> String {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The kind of client a session is opened for; it is the token's audience and bounds its roles, so a
/// phone never carries an ops token even when its user also works in ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    Mobile,
    Ops,
    Consumer,
}

impl ClientKind {
    pub const ALL: [ClientKind; 3] = [ClientKind::Mobile, ClientKind::Ops, ClientKind::Consumer];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Mobile => "mobile",
            ClientKind::Ops => "ops",
            ClientKind::Consumer => "consumer",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Roles a session of this kind may carry.
    #[must_use]
    pub fn allowed_roles(self) -> &'static [Role] {
        match self {
            ClientKind::Mobile => &[Role::Mobile],
            ClientKind::Ops => &[Role::Ops, Role::Admin],
            ClientKind::Consumer => &[Role::Consumer],
        }
    }

    /// The `aud` of this kind's access tokens.
    #[must_use]
    pub fn audience(self, issuer: &str) -> String {
        format!("{issuer}:{}", self.as_str())
    }

    /// The session roles for a user holding `roles`: those this client kind allows.
    #[must_use]
    pub fn grant(self, roles: &[Role]) -> Vec<Role> {
        roles
            .iter()
            .copied()
            .filter(|r| self.allowed_roles().contains(r))
            .collect()
    }
}

/// The claims of an access token (RFC 9068 profile, plus `sid` and `roles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// The session the token belongs to; revoking the session kills the token.
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub roles: Vec<Role>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<Role>,
    pub session_id: String,
    pub client: ClientKind,
}

impl Identity {
    #[must_use]
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_lists_parse_and_name_the_unknown_role() {
        assert_eq!(
            Role::parse_list("ops, admin,ops").unwrap(),
            vec![Role::Ops, Role::Admin]
        );
        assert!(Role::parse_list("ops,root")
            .unwrap_err()
            .contains("\"root\""));
        assert_eq!(
            Role::join(&[Role::Mobile, Role::Consumer]),
            "mobile,consumer"
        );
    }

    #[test]
    fn a_client_kind_bounds_the_roles_of_its_sessions() {
        let everything = Role::ALL;
        assert_eq!(ClientKind::Mobile.grant(&everything), vec![Role::Mobile]);
        assert_eq!(
            ClientKind::Ops.grant(&everything),
            vec![Role::Ops, Role::Admin]
        );
        assert!(ClientKind::Consumer.grant(&[Role::Mobile]).is_empty());
        assert_eq!(ClientKind::Ops.audience("geopromo"), "geopromo:ops");
    }
}
