//! Standard Webhooks signatures and each user's signing secret.
//!
//! No secret is stored in the database: a user's key is HMAC-SHA256(master key,
//! `"webhook-signing:{user_id}:0"`), the master key being 32 random bytes in the private file
//! `<data_dir>/webhook-master.key`, made at first use. A database dump alone signs nothing.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::private;

type HmacSha256 = Hmac<Sha256>;

/// Why the master key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("webhook master key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("webhook master key {0} is not 32 base64-encoded bytes")]
    Corrupt(PathBuf),
    /// No randomness.
    #[error("no randomness for the webhook master key")]
    Random,
}

/// The master key file in a data folder.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("webhook-master.key")
}

/// Reads the master key, making it first if there is none (two processes racing both read the
/// one that was written first).
pub fn master_key(data_dir: &Path) -> Result<[u8; 32], KeyError> {
    let path = key_file(data_dir);
    let io = |source| KeyError::Io { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => return decode(&text).ok_or_else(|| KeyError::Corrupt(path.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    private::create_dir_all(data_dir).map_err(io)?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|_| KeyError::Random)?;
    // Written under a temporary name and linked into place: a reader never sees half a key,
    // and a key another process linked first wins.
    let temporary = data_dir.join(format!(".webhook-master.key.{}", uuid::Uuid::new_v4().simple()));
    {
        use std::io::Write;
        let mut file = private::open_for_writing(&temporary).map_err(io)?;
        file.write_all(STANDARD.encode(key).as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    let linked = std::fs::hard_link(&temporary, &path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            decode(&text).ok_or(KeyError::Corrupt(path))
        }
        Err(e) => Err(io(e)),
    }
}

fn decode(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

/// The signing key of user `user_id`.
pub fn user_key(master: &[u8; 32], user_id: i64) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(master).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(format!("webhook-signing:{user_id}:0").as_bytes());
    mac.finalize().into_bytes().into()
}

/// A key as users see it: `whsec_<base64>`.
pub fn shown(key: &[u8; 32]) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `webhook-signature` header: `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_computation() {
        // python3 -c "import hmac,hashlib,base64; print(base64.b64encode(hmac.new(bytes(range(32)),
        //   b'msg_1.1700000000.{\"a\":1}', hashlib.sha256).digest()).decode())"
        let key: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            signature(&key, "msg_1", 1_700_000_000, br#"{"a":1}"#),
            "v1,AMaOha7DUT/0J0JMycRuYOBSvbx3WtwLd2khXXbaVj4="
        );
        let key: [u8; 32] = key.try_into().unwrap();
        assert_eq!(shown(&key), "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
    }

    #[test]
    fn users_get_different_keys_and_the_master_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let master = master_key(dir.path()).unwrap();
        assert_eq!(master_key(dir.path()).unwrap(), master);
        assert_ne!(user_key(&master, 1), user_key(&master, 2));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(key_file(dir.path())).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }
}
