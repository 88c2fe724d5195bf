//! The one place that resolves file names inside ComfyUI's folders as ComfyUI itself does
//! (`os.path.join` + `abspath` + a `commonpath` check), so the gateway decides on exactly the
//! file ComfyUI would touch: dot segments, empty segments and separators collapse to one
//! relative form, and anything that would leave the folder is refused.

/// Why a name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name climbs out of its folder (`..` above it, or an absolute path).
    #[error("the name leaves its folder")]
    Escapes,
    /// NUL or other control characters, backslashes, or percent-encoding that is not UTF-8.
    #[error("the name contains invalid characters")]
    InvalidCharacters,
    /// Longer than any file system allows.
    #[error("the name is too long")]
    TooLong,
}

/// Longest relative path accepted (Linux `PATH_MAX`).
const MAX_NAME: usize = 4096;

/// Resolves `raw` (already URL-decoded once, as aiohttp hands it to ComfyUI) into a relative
/// path of `/`-separated segments without `.`, `..` or empty segments; `""` is the folder
/// itself. `decode_percent` repeats ComfyUI's user-data rule: a name holding `%` is
/// URL-decoded once more before it is joined (so `workflows%2F..%2Fx` is `x`).
pub fn resolve_relative(raw: &str, decode_percent: bool) -> Result<String, NameError> {
    if raw.len() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    let decoded = if decode_percent && raw.contains('%') {
        percent_encoding::percent_decode_str(raw).decode_utf8().map_err(|_| NameError::InvalidCharacters)?
    } else {
        std::borrow::Cow::Borrowed(raw)
    };
    if decoded.chars().any(|c| c.is_control() || c == '\\') {
        return Err(NameError::InvalidCharacters);
    }
    if decoded.starts_with('/') {
        // `os.path.join(root, "/x")` is `/x`: outside every folder.
        return Err(NameError::Escapes);
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(NameError::Escapes)?;
            }
            s => segments.push(s),
        }
    }
    Ok(segments.join("/"))
}

/// Splits a resolved relative path into its folder (`""` for the top) and its last segment.
pub fn split_last(resolved: &str) -> (&str, &str) {
    resolved.rsplit_once('/').unwrap_or(("", resolved))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_spelling_of_one_file_resolves_to_one_form() {
        for raw in [
            "workflows/a.json",
            "workflows//a.json",
            "./workflows/a.json",
            "workflows/./a.json",
            "x/../workflows/a.json",
            "workflows/a.json/",
            "workflows/sub/../a.json",
        ] {
            assert_eq!(resolve_relative(raw, false).unwrap(), "workflows/a.json", "{raw}");
        }
        assert_eq!(resolve_relative("", false).unwrap(), "");
        assert_eq!(resolve_relative(".", false).unwrap(), "");
        assert_eq!(resolve_relative("a/..", false).unwrap(), "");
    }

    #[test]
    fn percent_names_are_decoded_once_more_like_comfyui_user_data() {
        let raw = "workflows%2F..%2FComfyUI-Manager%2Fstartup-scripts%2Finstall-scripts.txt";
        assert_eq!(resolve_relative(raw, true).unwrap(), "ComfyUI-Manager/startup-scripts/install-scripts.txt");
        assert_eq!(resolve_relative(raw, false).unwrap(), raw, "only one decoding when not asked");
        assert_eq!(resolve_relative("a%2F..%2F..%2Fx", true), Err(NameError::Escapes));
    }

    #[test]
    fn names_leaving_the_folder_or_holding_controls_are_refused() {
        assert_eq!(resolve_relative("../x", false), Err(NameError::Escapes));
        assert_eq!(resolve_relative("a/../../x", false), Err(NameError::Escapes));
        assert_eq!(resolve_relative("/etc/passwd", false), Err(NameError::Escapes));
        assert_eq!(resolve_relative("%2Fetc%2Fpasswd", true), Err(NameError::Escapes));
        assert_eq!(resolve_relative("a\\..\\b", false), Err(NameError::InvalidCharacters));
        assert_eq!(resolve_relative("a\0b", false), Err(NameError::InvalidCharacters));
        assert_eq!(resolve_relative("a%00b", true), Err(NameError::InvalidCharacters));
        assert_eq!(resolve_relative("%ff", true), Err(NameError::InvalidCharacters));
        assert_eq!(resolve_relative(&"a/".repeat(3000), false), Err(NameError::TooLong));
    }

    #[test]
    fn the_last_segment_is_split_off() {
        assert_eq!(split_last("a/b/c.png"), ("a/b", "c.png"));
        assert_eq!(split_last("c.png"), ("", "c.png"));
    }
}
