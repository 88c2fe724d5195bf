//! Secrets: generation, digests and constant-time comparison.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every comfygate API token starts with this, so secret scanners can recognise it.
pub const TOKEN_PREFIX: &str = "cg_";

/// A SHA-256 digest: how tokens and sessions are stored and looked up.
pub type SecretDigest = [u8; 32];

/// The system's random source failed: nothing secret can be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed")]
pub struct RandomUnavailable;

/// 256 random bits, base64url without padding (43 characters).
pub fn random_secret() -> Result<String, RandomUnavailable> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| RandomUnavailable)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A new API token: `cg_` + 256 random bits.
pub fn new_api_token() -> Result<String, RandomUnavailable> {
    Ok(format!("{TOKEN_PREFIX}{}", random_secret()?))
}

/// SHA-256 of a presented secret.
pub fn digest(secret: &str) -> SecretDigest {
    Sha256::digest(secret.as_bytes()).into()
}

/// The digest of the secret last presented on one client connection: a keep-alive connection
/// presents the same token or cookie on every request, and comparing it (in constant time) with
/// the last one costs ~50 instructions where SHA-256 costs ~3,500 (docs/performance.md). It only
/// saves the hashing: the digest is still looked up, so revocations apply as before.
#[derive(Default)]
pub struct DigestMemo(std::sync::Mutex<Option<(Box<[u8]>, SecretDigest)>>);

impl DigestMemo {
    /// [`digest`] of `secret`, remembered for the next call.
    pub fn digest(&self, secret: &str) -> SecretDigest {
        let Ok(mut last) = self.0.lock() else { return digest(secret) };
        if let Some((seen, digest)) = last.as_ref() {
            if constant_time_eq(seen, secret.as_bytes()) {
                return *digest;
            }
        }
        let fresh = digest(secret);
        *last = Some((secret.as_bytes().into(), fresh));
        fresh
    }
}

impl std::fmt::Debug for DigestMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestMemo(..)") // never the secret
    }
}

/// Lower-case hex of a digest, as stored.
pub fn hex(digest: &SecretDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets (or digests) in time independent of where they differ (only the
/// lengths may decide early, as with `subtle`'s slices). Eight bytes at a time: `subtle`'s
/// per-byte barrier cost ~650 instructions for a 47-byte token, on every keep-alive request.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut equal = a_words.remainder().ct_eq(b_words.remainder());
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
    for (x, y) in a_words.zip(b_words) {
        equal &= word(x).ct_eq(&word(y));
    }
    equal.into()
}

/// The start of a token shown in listings (`cg_AbCd1234`), never enough to use it.
pub fn display_prefix(token: &str) -> String {
    token.chars().take(11).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_memo_gives_each_secret_its_own_digest() {
        let memo = DigestMemo::default();
        assert_eq!(memo.digest("cg_one"), digest("cg_one"));
        assert_eq!(memo.digest("cg_one"), digest("cg_one"));
        assert_eq!(memo.digest("cg_two"), digest("cg_two"));
        assert_eq!(memo.digest("cg_one"), digest("cg_one"));
        assert_eq!(memo.digest("cg_on"), digest("cg_on"));
        assert!(!format!("{memo:?}").contains("cg_on"));
    }

    #[test]
    fn api_tokens_are_prefixed_and_unique() {
        let a = new_api_token().unwrap();
        let b = new_api_token().unwrap();
        assert!(a.starts_with("cg_"));
        assert_eq!(a.len(), 46);
        assert_ne!(a, b);
    }

    #[test]
    fn digest_hex_is_64_lowercase_chars() {
        let h = hex(&digest("cg_x"));
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        // Every position of a longer secret counts, in the words and in the rest.
        let secret = b"cg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
        assert!(constant_time_eq(secret, secret));
        assert!(constant_time_eq(b"", b""));
        for i in 0..secret.len() {
            let mut other = *secret;
            other[i] ^= 1;
            assert!(!constant_time_eq(secret, &other), "byte {i}");
        }
    }
}
