//! API keys: random secrets shown once, stored only as a SHA-256 hash,
//! compared in constant time.
//!
//! A key reads `sk-bn-<id>-<secret>`: the id (16 hex digits) finds the
//! stored row without scanning, the secret is 256 random bits. Because the
//! secret is random rather than chosen by a person, a fast hash is enough:
//! there is nothing to guess from it.

use crate::error::{PlatformError, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "sk-bn-";

/// A newly made key: the full text (show it once) and what is stored.
#[derive(Debug)]
pub struct NewKey {
    /// The key's public id.
    pub id: String,
    /// The whole key, for the client's `Authorization: Bearer` header.
    pub secret: String,
    /// The hash that is stored.
    pub hash: String,
}

/// `n` random bytes from the operating system, as lower-case hex.
pub(crate) fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)
        .map_err(|e| PlatformError::Config(format!("the system random source failed: {e}")))?;
    Ok(hex(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of `text`, hex.
pub(crate) fn sha256_hex(text: &[u8]) -> String {
    hex(&Sha256::digest(text))
}

/// Makes a key.
pub fn generate() -> Result<NewKey> {
    let id = random_hex(8)?;
    let secret = format!("{PREFIX}{id}-{}", random_hex(32)?);
    let hash = sha256_hex(secret.as_bytes());
    Ok(NewKey {
        id: format!("key_{id}"),
        secret,
        hash,
    })
}

/// The stored id a presented key claims, if it is shaped like a key.
pub fn key_id(presented: &str) -> Option<String> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, 16) && hexish(secret, 64)).then(|| format!("key_{id}"))
}

/// Whether `presented` hashes to `stored`, in time that does not depend on
/// where they differ.
pub fn matches(presented: &str, stored: &str) -> bool {
    let h = sha256_hex(presented.as_bytes());
    h.as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Compares two secrets (the admin token) in constant time: both are
/// hashed first so that the lengths leak nothing either.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes())
        .as_slice()
        .ct_eq(Sha256::digest(b.as_bytes()).as_slice())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_parseable_and_verify_only_themselves() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(key_id(&a.secret).as_deref(), Some(a.id.as_str()));
        assert!(matches(&a.secret, &a.hash));
        assert!(!matches(&b.secret, &a.hash));
        // 256 bits of secret after the id.
        assert_eq!(a.secret.rsplit('-').next().unwrap().len(), 64);
        assert!(!a.hash.contains(&a.secret));
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for k in [
            "",
            "sk-bn-",
            "sk-bn-zz-00",
            "Bearer x",
            "sk-bn-0123456789abcdef-short",
            "sk-bn-0123456789abcdef-' OR 1=1 --",
        ] {
            assert_eq!(key_id(k), None, "{k}");
        }
    }

    #[test]
    fn admin_token_comparison() {
        assert!(secrets_equal("abcdefghijklmnop", "abcdefghijklmnop"));
        assert!(!secrets_equal("abcdefghijklmnop", "abcdefghijklmnoq"));
        assert!(!secrets_equal("abcdefghijklmnop", "abc"));
    }
}
