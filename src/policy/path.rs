//! The one place that normalises request paths.
//!
//! The raw path is percent-decoded segment by segment, dot segments are resolved and empty
//! segments dropped; the result is re-encoded canonically and that canonical path is what
//! ComfyUI receives. So the path policy judges is exactly the path ComfyUI routes on: no
//! `%6Danager`, `/./`, `//` or `..` trick can make the two disagree.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Characters re-encoded inside a segment (`/` too: `%2F` stays part of its segment).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Longest path accepted.
const MAX_PATH: usize = 8 * 1024;

/// Why a path is refused (always a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path.
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// `..` above the root.
    #[error("the request path climbs above the root")]
    Escapes,
    /// Percent-encoding that is not UTF-8, or control characters / backslashes.
    #[error("the request path contains invalid characters")]
    InvalidCharacters,
    /// Too long.
    #[error("the request path is too long")]
    TooLong,
}

/// A path as ComfyUI will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// The canonical encoded path to forward.
    pub canonical: String,
    /// The decoded segments, kept only when one differs from its canonical (encoded) form;
    /// most paths have nothing to decode and their segments are read from `canonical`.
    decoded: Option<Vec<String>>,
}

impl NormalizedPath {
    /// The decoded segments, `/api` prefix included.
    pub fn segments(&self) -> Vec<&str> {
        match &self.decoded {
            Some(segments) => segments.iter().map(String::as_str).collect(),
            None => self.canonical.split(['/']).filter(|s| !s.is_empty()).collect(),
        }
    }

    /// The segments after an optional leading `api` (ComfyUI serves every route twice).
    pub fn route(&self) -> Vec<&str> {
        let mut segments = self.segments();
        if segments.first() == Some(&"api") {
            segments.remove(0);
        }
        segments
    }
}

/// Normalises a raw request path (without its query).
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if raw.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if is_canonical(raw) {
        // Most paths: nothing to decode, resolve or re-encode.
        return Ok(NormalizedPath { canonical: raw.to_owned(), decoded: None });
    }
    normalize_any(raw)
}

/// Whether `raw` is already canonical: absolute, only unreserved characters, no empty or dot
/// segments (a trailing slash is kept by both ways). One pass over the bytes.
fn is_canonical(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if b == b'/' {
            if matches!(&bytes[start..i], b"" | b"." | b"..") {
                return false;
            }
            start = i + 1;
        } else if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')) {
            return false;
        }
    }
    !matches!(&bytes[start..], b"." | b"..")
}

fn normalize_any(raw: &str) -> Result<NormalizedPath, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let trailing_slash = raw.len() > 1 && raw.ends_with('/');
    let mut segments: Vec<String> = Vec::new();
    for raw_segment in rest.split('/') {
        let decoded = percent_decode_str(raw_segment).decode_utf8().map_err(|_| PathError::InvalidCharacters)?;
        if decoded.chars().any(|c| c.is_control() || c == '\\') {
            return Err(PathError::InvalidCharacters);
        }
        match decoded.as_ref() {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::Escapes)?;
            }
            _ => segments.push(decoded.into_owned()),
        }
    }
    let mut canonical = String::with_capacity(raw.len() + 1);
    for segment in &segments {
        canonical.push('/');
        canonical.extend(utf8_percent_encode(segment, SEGMENT));
    }
    if canonical.is_empty() || trailing_slash {
        canonical.push('/');
    }
    // Segments that needed no encoding read the same from `canonical`.
    let decoded = canonical.contains('%').then_some(segments);
    Ok(NormalizedPath { canonical, decoded })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn canon(p: &str) -> String {
        normalize(p).unwrap().canonical
    }

    #[test]
    fn the_shortcut_for_canonical_paths_agrees_with_the_full_normalisation() {
        let paths = [
            "/",
            "/prompt",
            "/api/queue",
            "/api/",
            "/extensions/core/x.min.js",
            "/a/b/",
            "/a.b/c~d_e-f",
            "/.hidden",
            "/a/.",
            "/a/..",
            "/./a",
            "//a",
            "/a//b",
            "/a/../b",
            "/%61",
            "/a%2Fb",
            "/a b",
            "/a\\b",
            "/..",
            "/a/.../b",
            "/view",
            "/x/...",
            "/_",
            "/~",
            "",
        ];
        for p in paths {
            assert_eq!(normalize(p), normalize_any(p), "{p:?}");
        }
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in ["/", "/prompt", "/api/queue", "/view", "/extensions/core/x.js", "/api/"] {
            assert_eq!(canon(p), p);
        }
    }

    #[test]
    fn encoding_tricks_collapse_to_one_form() {
        assert_eq!(canon("/api/%6Danager/reboot"), "/api/manager/reboot");
        assert_eq!(canon("//manager///reboot"), "/manager/reboot");
        assert_eq!(canon("/x/./../manager/reboot"), "/manager/reboot");
        assert_eq!(canon("/api/%2e%2e/manager"), "/manager");
    }

    #[test]
    fn encoded_slashes_stay_inside_their_segment() {
        let n = normalize("/api/userdata/ComfyUI-Manager%2Fconfig.ini").unwrap();
        assert_eq!(n.route(), ["userdata", "ComfyUI-Manager/config.ini"]);
        assert_eq!(n.canonical, "/api/userdata/ComfyUI-Manager%2Fconfig.ini");
    }

    #[test]
    fn unicode_survives_round_trip() {
        let n = normalize("/userdata/%E7%94%BB.json").unwrap();
        assert_eq!(n.segments()[1], "画.json");
        assert_eq!(n.canonical, "/userdata/%E7%94%BB.json");
    }

    #[test]
    fn hostile_paths_are_errors() {
        assert_eq!(normalize("/../etc/passwd"), Err(PathError::Escapes));
        assert_eq!(normalize("/a/%2e%2e/%2e%2e/x"), Err(PathError::Escapes));
        assert_eq!(normalize("/a%00b"), Err(PathError::InvalidCharacters));
        assert_eq!(normalize("/a%5cb"), Err(PathError::InvalidCharacters));
        assert_eq!(normalize("/%ff"), Err(PathError::InvalidCharacters));
        assert_eq!(normalize("x"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(&format!("/{}", "a".repeat(9000))), Err(PathError::TooLong));
    }
}
