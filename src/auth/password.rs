//! Argon2id password hashes (PHC strings), and a dummy hash so that an unknown user costs the same time
//! as a wrong password.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::secret::random_bytes;

/// Shortest accepted password.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest accepted password (Argon2 would take more, but nobody types this much).
pub const MAX_PASSWORD_CHARS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")]
    Length,
    #[error("Argon2 parameters are invalid: {0}")]
    Params(String),
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// Hashes and checks passwords with fixed Argon2id parameters for new hashes.
#[derive(Debug, Clone)]
pub struct PasswordHashing {
    params: Params,
}

impl PasswordHashing {
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Self, PasswordError> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(Self { params })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$m=...`) with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let length = password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&length) {
            return Err(PasswordError::Length);
        }
        let salt = SaltString::encode_b64(&random_bytes::<16>())
            .map_err(|e| PasswordError::Hash(e.to_string()))?;
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    /// Whether `password` matches `phc`; a malformed stored hash never matches.
    #[must_use]
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        if password.len() > MAX_PASSWORD_CHARS * 4 {
            return false;
        }
        PasswordHash::new(phc)
            .map(|hash| {
                self.argon2()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password_and_are_salted() {
        let hashing = PasswordHashing::new(8 * 1024, 1).unwrap();
        let hash = hashing.hash("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
        assert!(hashing.verify("correct horse battery", &hash));
        assert!(!hashing.verify("correct horse battery!", &hash));
        assert_ne!(hash, hashing.hash("correct horse battery").unwrap());
        assert!(!hashing.verify("anything", "not a phc string"));
        assert!(matches!(hashing.hash("short"), Err(PasswordError::Length)));
    }
}
