//! The per-request verifier: the hot path of every authenticated request. It holds the key ring, the
//! set of revoked sessions and a cache of verified tokens, all in memory; the service ([`super::Auth`])
//! keeps them current from the store. No I/O here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, Validation};

use super::keys::KeyRing;
use super::service::AuthError;
use super::token::{AccessClaims, ClientKind, Identity};
use crate::config::AuthSettings;

/// Verified tokens remembered (so a token reused across requests costs one signature check).
const VERIFIED_CACHE_ENTRIES: usize = 50_000;

struct Verified {
    identity: Identity,
    exp_ms: i64,
}

/// Checks bearer tokens: signature, algorithm, `typ`, `kid`, claims, then the session's revocation.
pub struct Verifier {
    issuer: String,
    leeway_ms: i64,
    validation: Validation,
    keys: ArcSwap<KeyRing>,
    /// Sessions revoked recently enough that their access tokens could still be unexpired, with when.
    revoked: RwLock<HashMap<String, i64>>,
    verified: RwLock<HashMap<Box<str>, Verified>>,
}

impl Verifier {
    /// A verifier with no keys yet (every token fails until [`Verifier::replace_keys`]).
    #[must_use]
    pub fn new(settings: &AuthSettings) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = settings.leeway_s;
        validation.validate_nbf = true;
        validation.set_issuer(&[settings.issuer.as_str()]);
        let audiences: Vec<String> = ClientKind::ALL
            .iter()
            .map(|c| c.audience(&settings.issuer))
            .collect();
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Self {
            issuer: settings.issuer.clone(),
            leeway_ms: settings.leeway_s as i64 * 1000,
            validation,
            keys: ArcSwap::from_pointee(KeyRing::default()),
            revoked: RwLock::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// The current key ring.
    #[must_use]
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeyRing>> {
        self.keys.load()
    }

    /// Swaps in a new key ring and forgets verified tokens, so a revoked key's tokens fail at once.
    pub fn replace_keys(&self, ring: KeyRing) {
        self.keys.store(Arc::new(ring));
        self.verified
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Adds revoked sessions (id, revoked at) and forgets those revoked before `horizon`, whose access
    /// tokens have all expired.
    pub fn apply_revocations(
        &self,
        revoked: impl IntoIterator<Item = (String, i64)>,
        horizon: i64,
    ) {
        let mut set = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        set.extend(revoked);
        set.retain(|_, at| *at >= horizon);
    }

    /// The JWKS of the keys that verify at `now`.
    #[must_use]
    pub fn jwks(&self, now: i64) -> serde_json::Value {
        self.keys.load().jwks(now)
    }

    /// Checks a bearer token: signature, algorithm, `typ`, `kid`, claims, then the session's revocation.
    pub fn verify(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        let leeway_ms = self.leeway_ms;
        let cached = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .filter(|v| now < v.exp_ms + leeway_ms)
            .map(|v| v.identity.clone());
        let identity = match cached {
            Some(identity) => identity,
            None => {
                let (identity, exp_ms) = self.verify_signed(token, now)?;
                let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
                if verified.len() >= VERIFIED_CACHE_ENTRIES {
                    verified.retain(|_, v| now < v.exp_ms + leeway_ms);
                    if verified.len() >= VERIFIED_CACHE_ENTRIES {
                        verified.clear();
                    }
                }
                verified.insert(
                    token.into(),
                    Verified {
                        identity: identity.clone(),
                        exp_ms,
                    },
                );
                identity
            }
        };
        if let Some(reason) = self.revoked_reason(&identity.session_id) {
            return Err(AuthError::SessionEnded(reason));
        }
        Ok(identity)
    }

    /// [`Verifier::verify`] without the cache: what a token costs the first time it is seen.
    pub fn verify_uncached(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        let (identity, _) = self.verify_signed(token, now)?;
        if let Some(reason) = self.revoked_reason(&identity.session_id) {
            return Err(AuthError::SessionEnded(reason));
        }
        Ok(identity)
    }

    fn revoked_reason(&self, session_id: &str) -> Option<String> {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(session_id)
            .then(|| "the session was revoked".to_owned())
    }

    pub(super) fn verify_signed(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(Identity, i64), AuthError> {
        let (claims, client) = self.verify_claims(token, now)?;
        let exp_ms = claims.exp.saturating_mul(1000);
        Ok((
            Identity {
                user_id: claims.sub,
                roles: claims.roles,
                session_id: claims.sid,
                client,
            },
            exp_ms,
        ))
    }

    pub(super) fn verify_claims(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(AccessClaims, ClientKind), AuthError> {
        let invalid = |why: String| AuthError::InvalidToken(why);
        check_raw_header(token).map_err(invalid)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "token header refused");
            invalid("the token header is not a JWS header this server issues".into())
        })?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid(format!("alg {:?} is not EdDSA", header.alg)));
        }
        if header.typ.as_deref() != Some("at+jwt") {
            return Err(invalid("typ is not at+jwt".into()));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the header has no kid".into()))?;
        let keys = self.keys.load();
        let key = keys.decoding_key(&kid, now).ok_or_else(|| {
            if keys.is_revoked(&kid) {
                invalid(format!("key {kid:?} has been revoked"))
            } else {
                invalid(format!("unknown or retired key {kid:?}"))
            }
        })?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|e| {
                tracing::debug!(error = %e, "token refused");
                invalid(token_error_in_words(&e))
            })?
            .claims;
        let leeway_ms = self.leeway_ms;
        if claims.iat.saturating_mul(1000) > now + leeway_ms {
            return Err(invalid("issued in the future".into()));
        }
        let client = ClientKind::ALL
            .into_iter()
            .find(|c| c.audience(&self.issuer) == claims.aud)
            .ok_or_else(|| invalid("unknown audience".into()))?;
        if claims
            .roles
            .iter()
            .any(|r| !client.allowed_roles().contains(r))
        {
            return Err(invalid("roles beyond the audience's".into()));
        }
        Ok((claims, client))
    }
}

/// The header checks `jsonwebtoken` does not make, on the raw header: it must be base64url JSON
/// with a string `alg`, and carry no `crit` (RFC 7515 §4.1.11: a recipient that does not understand
/// every listed extension must reject the token, and this server understands none). The messages say
/// what is wrong in words rather than quoting the parser.
fn check_raw_header(token: &str) -> Result<(), String> {
    use base64::Engine as _;
    let malformed =
        || "the token is not a compact JWS (three base64url parts, a JSON header first)".to_owned();
    let (encoded, rest) = token.split_once('.').ok_or_else(malformed)?;
    if rest.matches('.').count() != 1 {
        return Err(malformed());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| malformed())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if header.contains_key("crit") {
        return Err(
            "the header lists critical extensions (crit), which this server does not understand"
                .into(),
        );
    }
    match header.get("alg") {
        Some(serde_json::Value::String(alg)) if alg == "EdDSA" => Ok(()),
        Some(serde_json::Value::String(alg)) => Err(format!(
            "alg {alg:?} is not accepted; tokens are signed with EdDSA"
        )),
        _ => Err("the header has no alg".into()),
    }
}

/// What a failed `jsonwebtoken::decode` means, for the caller; the library's wording stays in the log.
fn token_error_in_words(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the signature does not verify".into(),
        ErrorKind::InvalidAudience => "the token is for another audience".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the claim {claim:?} is missing"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the signing algorithm is not accepted".into()
        }
        ErrorKind::Json(_) => {
            "the claims are not those of an access token this server issues".into()
        }
        _ => "the token is malformed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::StoredKey;
    use crate::auth::token::Role;
    use crate::promo::timestamp::now_ms;
    use base64::Engine as _;

    /// A verifier with one key, and a mobile access token for session `sid` signed with it.
    fn verifier_and_token(sid: &str) -> (Verifier, String, i64) {
        let settings = AuthSettings::default();
        let now = now_ms();
        let verifier = Verifier::new(&settings);
        let key = StoredKey::generate(now, now).unwrap();
        verifier.replace_keys(KeyRing::new(&[key], 3_600_000).unwrap());
        let keys = verifier.keys();
        let signing = keys.signing_key_at(now).unwrap();
        let iat = now / 1000;
        let claims = AccessClaims {
            iss: settings.issuer.clone(),
            aud: ClientKind::Mobile.audience(&settings.issuer),
            sub: "u1".into(),
            sid: sid.into(),
            jti: "j".into(),
            iat,
            nbf: iat,
            exp: iat + 600,
            roles: vec![Role::Mobile],
        };
        let header = jsonwebtoken::Header {
            typ: Some("at+jwt".into()),
            kid: Some(signing.kid.clone()),
            ..jsonwebtoken::Header::new(Algorithm::EdDSA)
        };
        let token = jsonwebtoken::encode(&header, &claims, &signing.encoding).unwrap();
        drop(keys);
        (verifier, token, now)
    }

    #[test]
    fn a_revocation_reaches_a_cached_token_at_once() {
        let (verifier, token, now) = verifier_and_token("s1");
        let identity = verifier.verify(&token, now).unwrap();
        assert_eq!(
            (identity.user_id.as_str(), identity.session_id.as_str()),
            ("u1", "s1")
        );
        // Cached now; the revocation must still apply to the next request.
        verifier.apply_revocations([("s1".to_owned(), now)], now - 1);
        assert!(matches!(
            verifier.verify(&token, now),
            Err(AuthError::SessionEnded(_))
        ));
        // Revocations older than the horizon are forgotten (their tokens have expired).
        verifier.apply_revocations([], now + 1);
        assert!(verifier.verify(&token, now).is_ok());
    }

    #[test]
    fn new_keys_drop_the_cache_so_a_removed_key_fails_at_once() {
        let (verifier, token, now) = verifier_and_token("s2");
        assert!(verifier.verify(&token, now).is_ok());
        let other = StoredKey::generate(now, now).unwrap();
        verifier.replace_keys(KeyRing::new(&[other], 3_600_000).unwrap());
        assert!(matches!(
            verifier.verify(&token, now),
            Err(AuthError::InvalidToken(_))
        ));
    }

    fn token_with_header(header: &str) -> String {
        let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        format!("{}.{}.c2ln", encode(header), encode("{}"))
    }

    #[test]
    fn a_critical_header_extension_is_refused() {
        let token =
            token_with_header(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","crit":["exp"],"exp":1}"#);
        let why = check_raw_header(&token).unwrap_err();
        assert!(why.contains("crit"), "{why}");
        assert!(check_raw_header(&token_with_header(r#"{"alg":"EdDSA","kid":"k"}"#)).is_ok());
    }

    #[test]
    fn header_problems_are_said_in_words_not_parser_internals() {
        let why = check_raw_header(&token_with_header(r#"{"alg":"none"}"#)).unwrap_err();
        assert_eq!(
            why,
            r#"alg "none" is not accepted; tokens are signed with EdDSA"#
        );
        let why = check_raw_header("not-a-token").unwrap_err();
        assert!(why.contains("compact JWS"), "{why}");
        let why = check_raw_header(&token_with_header("[1]")).unwrap_err();
        assert!(!why.contains("expected"), "{why}");
    }
}
