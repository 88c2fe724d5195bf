//! ComfyUI-Login's `PASSWORD` file: a bcrypt hash on line 1, the user name on line 2.
//!
//! ComfyUI-Login's "API token" is that hash string itself; comfygate can keep accepting it
//! as a named, revocable legacy token so existing notebooks work until they are rotated.

use super::password::is_bcrypt;

/// What a `PASSWORD` file holds.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyLogin {
    /// The bcrypt hash (also ComfyUI-Login's token).
    pub bcrypt_hash: String,
    /// The user name, when line 2 has one.
    pub username: Option<String>,
}

impl std::fmt::Debug for LegacyLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyLogin").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Parses the file's text.
pub fn parse_password_file(text: &str) -> Result<LegacyLogin, String> {
    let mut lines = text.lines();
    let hash = lines.next().map(str::trim).unwrap_or_default();
    if !is_bcrypt(hash) {
        return Err("line 1 is not a bcrypt hash ($2b$...); is this ComfyUI-Login's login/PASSWORD file?".to_owned());
    }
    let username = lines.next().map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
    Ok(LegacyLogin { bcrypt_hash: hash.to_owned(), username })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HASH: &str = "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5k";

    #[test]
    fn reads_hash_and_username() {
        let l = parse_password_file(&format!("{HASH}\nalice\n")).unwrap();
        assert_eq!(l.bcrypt_hash, HASH);
        assert_eq!(l.username.as_deref(), Some("alice"));
    }

    #[test]
    fn username_line_is_optional() {
        assert_eq!(parse_password_file(HASH).unwrap().username, None);
    }

    #[test]
    fn other_files_are_rejected() {
        assert!(parse_password_file("hunter2\nbob").is_err());
        assert!(parse_password_file("").is_err());
    }
}
