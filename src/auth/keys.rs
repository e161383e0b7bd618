//! The Ed25519 key ring: which key signs at a given time, which keys still verify, and the JWKS.
//!
//! Keys live in the store so that every instance signs and verifies with the same ones. A rotation adds a
//! key (optionally active some time ahead, so JWKS caches learn it before it signs); the previous key keeps
//! verifying for `overlap` after its successor took over (the longest an access token it signed can
//! live). An emergency revocation drops a key at once: its tokens fail everywhere within a poll.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::secret::random_id;

/// A key as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    /// PKCS#8 v2, base64.
    pub private_pkcs8: String,
    /// Raw public key, base64url.
    pub public_x: String,
    pub created_at_ms: i64,
    pub active_from_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("stored key {kid:?} is unusable: {problem}")]
    Unusable { kid: String, problem: String },
}

impl StoredKey {
    /// A fresh Ed25519 key that signs from `active_from_ms`.
    pub fn generate(now_ms: i64, active_from_ms: i64) -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
        Ok(Self {
            kid: random_id(),
            private_pkcs8: STANDARD.encode(pkcs8.as_ref()),
            public_x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            created_at_ms: now_ms,
            active_from_ms,
            revoked_at_ms: None,
        })
    }
}

/// One usable key.
pub struct RingKey {
    pub kid: String,
    pub public_x: String,
    pub active_from_ms: i64,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
}

/// The non-revoked keys, oldest first.
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<RingKey>,
    /// How long a superseded key keeps verifying.
    overlap_ms: i64,
    /// Kids of revoked keys (named in errors and logs).
    revoked: Vec<String>,
}

impl KeyRing {
    /// Builds the ring from stored keys; revoked ones are remembered only by kid.
    pub fn new(stored: &[StoredKey], overlap_ms: i64) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        let mut revoked = Vec::new();
        for key in stored {
            if key.revoked_at_ms.is_some() {
                revoked.push(key.kid.clone());
                continue;
            }
            let unusable = |problem: String| KeyError::Unusable {
                kid: key.kid.clone(),
                problem,
            };
            let pkcs8 = STANDARD
                .decode(&key.private_pkcs8)
                .map_err(|e| unusable(e.to_string()))?;
            let public = URL_SAFE_NO_PAD
                .decode(&key.public_x)
                .map_err(|e| unusable(e.to_string()))?;
            let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
                .map_err(|e| unusable(format!("not an Ed25519 PKCS#8 v2 key: {e}")))?;
            if pair.public_key().as_ref() != public.as_slice() {
                return Err(unusable("public key does not match the private key".into()));
            }
            keys.push(RingKey {
                kid: key.kid.clone(),
                public_x: key.public_x.clone(),
                active_from_ms: key.active_from_ms,
                encoding: EncodingKey::from_ed_der(&pkcs8),
                decoding: DecodingKey::from_ed_der(&public),
            });
        }
        keys.sort_by(|a, b| (a.active_from_ms, &a.kid).cmp(&(b.active_from_ms, &b.kid)));
        Ok(Self {
            keys,
            overlap_ms,
            revoked,
        })
    }

    /// The key that signs at `at_ms`: the newest already active one.
    #[must_use]
    pub fn signing_key_at(&self, at_ms: i64) -> Option<&RingKey> {
        self.keys.iter().rev().find(|k| k.active_from_ms <= at_ms)
    }

    /// The keys that verify at `now_ms`: not yet superseded for longer than the overlap.
    pub fn verifying(&self, now_ms: i64) -> impl Iterator<Item = &RingKey> {
        self.keys.iter().enumerate().filter_map(move |(i, key)| {
            let superseded_at = self
                .keys
                .get(i + 1..)
                .and_then(|later| later.iter().find(|k| k.active_from_ms <= now_ms))
                .map(|k| k.active_from_ms);
            match superseded_at {
                Some(at) if now_ms >= at + self.overlap_ms => None,
                _ => Some(key),
            }
        })
    }

    /// The decoding key for `kid` when it verifies at `now_ms`.
    #[must_use]
    pub fn decoding_key(&self, kid: &str, now_ms: i64) -> Option<&DecodingKey> {
        self.verifying(now_ms)
            .find(|k| k.kid == kid)
            .map(|k| &k.decoding)
    }

    #[must_use]
    pub fn is_revoked(&self, kid: &str) -> bool {
        self.revoked.iter().any(|k| k == kid)
    }

    /// RFC 7517 JSON Web Key Set of the verifying keys.
    #[must_use]
    pub fn jwks(&self, now_ms: i64) -> serde_json::Value {
        let keys: Vec<_> = self
            .verifying(now_ms)
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": k.public_x,
                    "kid": k.kid, "use": "sig", "alg": "EdDSA",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(active_from_ms: i64) -> StoredKey {
        StoredKey::generate(0, active_from_ms).unwrap()
    }

    #[test]
    fn the_newest_active_key_signs_and_a_superseded_one_verifies_for_the_overlap() {
        let (old, new) = (key(0), key(1_000));
        let ring = KeyRing::new(&[new.clone(), old.clone()], 500).unwrap();
        assert_eq!(ring.signing_key_at(999).unwrap().kid, old.kid);
        assert_eq!(ring.signing_key_at(1_000).unwrap().kid, new.kid);
        // Published ahead: the new key verifies and is in the JWKS before it signs.
        assert!(ring.decoding_key(&new.kid, 10).is_some());
        assert_eq!(ring.jwks(10)["keys"].as_array().unwrap().len(), 2);
        assert!(ring.decoding_key(&old.kid, 1_499).is_some());
        assert!(ring.decoding_key(&old.kid, 1_500).is_none());
        assert_eq!(ring.jwks(1_500)["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn revoked_keys_neither_sign_nor_verify() {
        let (mut old, new) = (key(0), key(1_000));
        old.revoked_at_ms = Some(5);
        let ring = KeyRing::new(&[old.clone(), new.clone()], 500).unwrap();
        assert!(ring.signing_key_at(10).is_none());
        assert!(ring.decoding_key(&old.kid, 10).is_none());
        assert!(ring.is_revoked(&old.kid));
        let jwk = &ring.jwks(10)["keys"][0];
        assert_eq!(jwk["kid"], new.kid.as_str());
        assert_eq!(jwk["crv"], "Ed25519");
    }

    #[test]
    fn a_key_whose_halves_do_not_match_is_refused() {
        let (mut a, b) = (key(0), key(0));
        a.public_x = b.public_x;
        assert!(matches!(
            KeyRing::new(&[a], 0),
            Err(KeyError::Unusable { .. })
        ));
    }
}
