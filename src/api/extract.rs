//! What handlers extract from a request besides the body: the verified caller (with the roles a route
//! admits in its type), the peer address, and the paging query.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Deref;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, ApiState};
use crate::auth::{Identity, Role};

/// Role checks for handlers.
pub trait Require {
    /// Fails with 403 unless the caller has one of `roles`.
    fn require(&self, roles: &[Role]) -> Result<(), ApiError>;
}

impl Require for Identity {
    fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.has_any(roles) {
            Ok(())
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this needs the role {}",
                names.join(" or ")
            )))
        }
    }
}

/// The bearer token of a request, or 401.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    bearer_token(&parts.headers)
}

/// The bearer token in `headers`, or 401.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <access token>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be Bearer <access token>",
        )),
    }
}

impl FromRequestParts<ApiState> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        state.auth.verify(token).map_err(ApiError::from)
    }
}

/// The peer address (for per-IP rate limits); unspecified when the server was not started by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip()),
        ))
    }
}

/// The roles a route admits. The guard is a type in the handler's signature ([`Caller`]), so a route
/// cannot be added without saying who may call it.
pub trait Admits {
    const ROLES: &'static [Role];
}

macro_rules! admits {
    ($($(#[$doc:meta])* $name:ident => [$($role:ident),+];)+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl Admits for $name {
            const ROLES: &'static [Role] = &[$(Role::$role),+];
        }
    )+};
}

admits! {
    /// Operations staff: fences and promotions.
    Ops => [Ops];
    /// Mobile apps: their own locations.
    Mobile => [Mobile];
    /// Administrators: users, sessions, keys.
    Admin => [Admin];
    /// Who reads promotions and anyone's eligibility.
    OpsOrConsumer => [Ops, Consumer];
    /// Who may introspect tokens.
    ConsumerOrAdmin => [Consumer, Admin];
}

/// A verified caller holding one of the roles `R` admits: 401 without a valid token, 403 without the role
/// (checked before the body is read).
#[derive(Debug, Clone)]
pub struct Caller<R> {
    identity: Identity,
    admits: PhantomData<R>,
}

impl<R> Deref for Caller<R> {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.identity
    }
}

impl<R: Admits> FromRequestParts<ApiState> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let identity = Identity::from_request_parts(parts, state).await?;
        identity.require(R::ROLES)?;
        Ok(Self {
            identity,
            admits: PhantomData,
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
    /// Only fences whose name contains this.
    pub name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}
