//! Random identifiers and tokens, their hashes, and the refresh-token derivation (ring's CSPRNG, SHA-256
//! and HMAC-SHA-256).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};

/// `n` bytes from the operating system's CSPRNG.
///
/// # Panics
/// When the operating system has no randomness to give, which leaves nothing safe to do.
#[must_use]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    bytes
}

/// 256 random bits, base64url: refresh tokens and rotation keys.
#[must_use]
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// 128 random bits, base64url: session ids, user ids, key ids.
#[must_use]
pub fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

/// SHA-256 of a token, hex: what the store keeps instead of the token.
#[must_use]
pub fn token_hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// The refresh token that replaces `previous` in a session whose rotation key is `rotation_key`.
///
/// Deterministic on purpose: every concurrent or retried refresh with the same token computes the same
/// successor, so the answers are identical while the store keeps only hashes.
#[must_use]
pub fn successor_token(rotation_key: &str, previous: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, rotation_key.as_bytes());
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, previous.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn successors_depend_on_key_and_token() {
        let key = random_token();
        let token = random_token();
        assert_eq!(successor_token(&key, &token), successor_token(&key, &token));
        assert_ne!(successor_token(&key, &token), token);
        assert_ne!(
            successor_token(&key, &token),
            successor_token(&random_token(), &token)
        );
    }
}
