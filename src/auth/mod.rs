//! Authentication: short-lived EdDSA access tokens tied to server-side sessions, opaque rotating refresh
//! tokens, Argon2id passwords, revocation that reaches every instance within a poll interval, and login
//! rate limits. The design and its decisions are in `docs/auth.md`.
//!
//! - [`token`]: roles, client kinds, claims and the checks on a token (pure; no I/O).
//! - [`keys`]: the Ed25519 key ring, the signing key at a given time, the JWKS.
//! - [`secret`]: random tokens, hashes and the refresh-token derivation.
//! - [`password`]: Argon2id hashing with a dummy hash for unknown users.
//! - [`limits`]: per-IP and per-account rate limits.
//! - [`store`]: users, sessions, revocations and keys in the database (auth owns its persistence).
//! - [`verifier`]: the per-request hot path: keys, revoked sessions and verified-token cache, in memory.
//! - [`service`]: [`Auth`], the account and session service over the store, which keeps the verifier
//!   current.

pub mod keys;
pub mod limits;
pub mod password;
pub mod secret;
pub mod service;
pub mod store;
pub mod token;
pub mod verifier;

pub use service::{Auth, AuthError, Introspection, IssuedTokens};
pub use token::{AccessClaims, ClientKind, Identity, Role};
