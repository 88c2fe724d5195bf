//! The manifest: a TOML file of `[[file]]` tables, parsed strictly (unknown keys are errors) and
//! validated so that every destination stays inside the models folder.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// Where operators find a file's sha256, repeated in the "not filled in" error.
const SHA256_SOURCE: &str = "the file's page on Hugging Face ('SHA256' under 'Git LFS details'), or `sha256sum FILE`";

/// A manifest that cannot be read, parsed or validated (the CLI's exit 65).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("cannot read the manifest {}: {source}", path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or a key of the wrong type or unknown.
    #[error("{}: {where_}: {message}", path.display())]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The table and key (`[[file]] #2 (\"vae.safetensors\"), key \`sha256\``), or a line.
        where_: String,
        /// What is wrong, with an example of a valid value where one helps.
        message: String,
    },
    /// A `[[file]]` value that parses but is not acceptable.
    #[error("{}: [[file]] #{number} ({name:?}), key `{key}`: {message}", path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// The table's position, from 1.
        number: usize,
        /// The file's `name` as written.
        name: String,
        /// The offending key.
        key: &'static str,
        /// What is wrong, with an example of a valid value.
        message: String,
    },
    /// A top-level value that is not acceptable.
    #[error("{}: key `{key}`: {message}", path.display())]
    Top {
        /// The manifest.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The shipped examples carry an empty sha256 until the operator copies the real one.
    #[error("{}: [[file]] #{number}: sha256 for {name} is not filled in: copy it from {SHA256_SOURCE}", path.display())]
    NotFilledIn {
        /// The manifest.
        path: PathBuf,
        /// The table's position, from 1.
        number: usize,
        /// The file's name.
        name: String,
    },
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file itself.
    pub path: PathBuf,
    /// `models_dir`, resolved against the manifest's folder.
    pub models_dir: Option<PathBuf>,
    /// The files, in the manifest's order.
    pub files: Vec<ModelFile>,
}

/// One file to download and verify.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// A plain file name (no separators, not hidden).
    pub name: String,
    /// An `http` or `https` URL.
    pub url: reqwest::Url,
    /// 64 lowercase hex digits.
    pub sha256: String,
    /// The exact size in bytes.
    pub size: u64,
    /// A relative folder under the models folder (`checkpoints`, `loras/styles`).
    pub folder: PathBuf,
    /// The name of the environment variable holding the `Authorization` value.
    pub headers_env: Option<String>,
}

impl ModelFile {
    /// `folder/name`, as printed.
    pub fn label(&self) -> String {
        format!("{}/{}", self.folder.display(), self.name)
    }
    /// The final path under `models_dir`.
    pub fn dest(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(&self.folder).join(&self.name)
    }
    /// The hidden partial file beside the final one, so the rename stays on one filesystem.
    pub fn part(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(&self.folder).join(format!(".{}.part", self.name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    models_dir: Option<String>,
    #[serde(default)]
    file: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    url: String,
    sha256: String,
    size: i64,
    folder: String,
    headers_env: Option<String>,
}

/// Reads and validates the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

/// Parses and validates manifest `text` read from `path` (relative `models_dir` is resolved
/// against `path`'s folder).
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let parse_error = |where_: String, message: String| ManifestError::Parse { path: path.to_owned(), where_, message };
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let where_ = line.map_or_else(|| "TOML".to_owned(), |l| format!("line {l}"));
        parse_error(where_, e.message().trim().replace('\n', "; "))
    })?;
    let raw: RawManifest = serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let (where_, key) = describe_path(e.path(), &table);
        parse_error(where_, explain(&key, e.inner().message().trim()))
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let models_dir = match raw.models_dir {
        Some(dir) if dir.trim().is_empty() => {
            return Err(ManifestError::Top {
                path: path.to_owned(),
                key: "models_dir",
                message: "is empty; e.g. models_dir = \"/opt/ComfyUI/models\"".to_owned(),
            });
        }
        Some(dir) => Some(base.join(dir)),
        None => None,
    };
    if raw.file.is_empty() {
        return Err(ManifestError::Top {
            path: path.to_owned(),
            key: "file",
            message: "the manifest lists no files; add [[file]] tables with name, url, sha256, size and folder"
                .to_owned(),
        });
    }
    let mut files = Vec::with_capacity(raw.file.len());
    let mut not_filled_in = None;
    let mut seen: HashMap<(PathBuf, String), usize> = HashMap::new();
    for (index, raw) in raw.file.into_iter().enumerate() {
        let number = index + 1;
        let invalid = |key: &'static str, message: String| ManifestError::Invalid {
            path: path.to_owned(),
            number,
            name: raw.name.clone(),
            key,
            message,
        };
        validate_name(&raw.name).map_err(|m| invalid("name", m))?;
        let folder = validate_folder(&raw.folder).map_err(|m| invalid("folder", m))?;
        let url = validate_url(&raw.url).map_err(|m| invalid("url", m))?;
        let size = u64::try_from(raw.size)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| invalid("size", format!("{} is not a size in bytes; e.g. size = 254590000", raw.size)))?;
        if let Some(var) = &raw.headers_env {
            validate_env_name(var).map_err(|m| invalid("headers_env", m))?;
        }
        let sha256 = match validate_sha256(&raw.sha256) {
            Ok(Some(sha)) => sha,
            Ok(None) => {
                // Reported only when nothing else is wrong, so the examples are checked in full.
                not_filled_in.get_or_insert((number, raw.name.clone()));
                String::new()
            }
            Err(m) => return Err(invalid("sha256", m)),
        };
        let key = (folder.clone(), raw.name.clone());
        if let Some(first) = seen.insert(key, number) {
            return Err(invalid(
                "name",
                format!(
                    "{}/{} is also the destination of [[file]] #{first}; each file needs its own folder and name",
                    folder.display(),
                    raw.name
                ),
            ));
        }
        files.push(ModelFile { name: raw.name, url, sha256, size, folder, headers_env: raw.headers_env });
    }
    if let Some((number, name)) = not_filled_in {
        return Err(ManifestError::NotFilledIn { path: path.to_owned(), number, name });
    }
    Ok(Manifest { path: path.to_owned(), models_dir, files })
}

/// `[[file]] #2 ("vae.safetensors"), key `sha256`` from serde's path, and the key alone.
fn describe_path(path: &serde_path_to_error::Path, table: &toml::Table) -> (String, String) {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    match segments.as_slice() {
        [Segment::Map { key: file }, Segment::Seq { index }, rest @ ..] if file == "file" => {
            let name = table
                .get("file")
                .and_then(|f| f.as_array())
                .and_then(|a| a.get(*index))
                .and_then(|t| t.get("name"))
                .and_then(|n| n.as_str());
            let mut where_ = format!("[[file]] #{}", index + 1);
            if let Some(name) = name {
                where_.push_str(&format!(" ({name:?})"));
            }
            let key = match rest {
                [Segment::Map { key }, ..] => key.clone(),
                _ => String::new(),
            };
            if !key.is_empty() {
                where_.push_str(&format!(", key `{key}`"));
            }
            (where_, key)
        }
        [Segment::Map { key }, ..] => (format!("key `{key}`"), key.clone()),
        _ => ("top level".to_owned(), String::new()),
    }
}

/// serde's message, with an example of a valid value for the key.
fn explain(key: &str, message: &str) -> String {
    let example = match key {
        "name" => "name = \"qwen_image_vae.safetensors\"",
        "url" => "url = \"https://huggingface.co/OWNER/REPO/resolve/main/FILE\"",
        "sha256" => "sha256 = \"<64 hex digits>\"",
        "size" => "size = 254590000 (the exact size in bytes, an integer: \"20.4GB\" would not verify)",
        "folder" => "folder = \"diffusion_models\"",
        "headers_env" => "headers_env = \"HF_AUTHORIZATION\"",
        "models_dir" => "models_dir = \"/opt/ComfyUI/models\"",
        "file" => "[[file]] tables",
        // An unknown key: serde's message lists the known ones.
        _ => return message.to_owned(),
    };
    format!("{message}; e.g. {example}")
}

fn validate_name(name: &str) -> Result<(), String> {
    let example = "e.g. name = \"qwen_image_vae.safetensors\"";
    if name.is_empty() {
        return Err(format!("is empty; {example}"));
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(format!("{name:?} is not a plain file name (no folders; use `folder` for those); {example}"));
    }
    if name == "." || name == ".." || name.starts_with('.') {
        // A leading dot would also collide with the hidden partial files.
        return Err(format!("{name:?} is not a plain file name (no leading dot); {example}"));
    }
    Ok(())
}

fn validate_folder(folder: &str) -> Result<PathBuf, String> {
    let example = "e.g. folder = \"diffusion_models\" or \"loras/qwen\"";
    let path = Path::new(folder);
    let plain = !folder.is_empty()
        && !folder.contains(['\\', '\0'])
        && folder.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "{folder:?} is not a relative folder inside the models folder (no `..`, no leading `/`); {example}"
        ));
    }
    Ok(path.to_owned())
}

fn validate_url(url: &str) -> Result<reqwest::Url, String> {
    let example = "e.g. url = \"https://huggingface.co/OWNER/REPO/resolve/main/FILE\"";
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e}); {example}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} is not an http or https URL; {example}"));
    }
    Ok(parsed)
}

/// `Ok(None)`: the placeholder (empty or all zeros) of the shipped examples.
fn validate_sha256(sha: &str) -> Result<Option<String>, String> {
    let sha = sha.trim();
    if sha.chars().all(|c| c == '0') {
        return Ok(None);
    }
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{sha:?} is not a sha256 ({} characters; one is 64 hex digits, e.g. sha256 = \"{}\")",
            sha.chars().count(),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        ));
    }
    Ok(Some(sha.to_ascii_lowercase()))
}

fn validate_env_name(var: &str) -> Result<(), String> {
    let ok = var.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(format!(
            "{var:?} is not an environment variable name (it names the variable, not its value); \
             e.g. headers_env = \"HF_AUTHORIZATION\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const SHA: &str = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";

    fn one(extra: &str) -> String {
        format!(
            "[[file]]\nname = \"a.safetensors\"\nurl = \"https://example.com/a\"\nsha256 = \"{SHA}\"\n\
             size = 10\nfolder = \"vae\"\n{extra}"
        )
    }

    fn error(text: &str) -> String {
        parse(Path::new("/m/x.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_file_parses_with_its_sha256_lowercased_and_models_dir_beside_the_manifest() {
        let m = parse(Path::new("/m/x.toml"), &format!("models_dir = \"models\"\n{}", one(""))).unwrap();
        assert_eq!(m.models_dir.as_deref(), Some(Path::new("/m/models")));
        assert_eq!(m.files[0].sha256, SHA.to_ascii_lowercase());
        assert_eq!(m.files[0].part(Path::new("/d")), Path::new("/d/vae/.a.safetensors.part"));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_file() {
        let e = error(&one("colour = \"red\"\n"));
        assert!(e.contains("[[file]] #1 (\"a.safetensors\")") && e.contains("colour"), "{e}");
    }

    #[test]
    fn a_size_string_is_refused_with_an_integer_example() {
        let e = error(&one("").replace("size = 10", "size = \"20.4GB\""));
        assert!(e.contains("key `size`") && e.contains("integer"), "{e}");
    }

    #[test]
    fn bad_names_folders_and_hashes_are_refused() {
        for (from, to, key) in [
            ("name = \"a.safetensors\"", "name = \"../x\"", "name"),
            ("name = \"a.safetensors\"", "name = \"\"", "name"),
            ("name = \"a.safetensors\"", "name = \".a.safetensors.part\"", "name"),
            ("folder = \"vae\"", "folder = \"../vae\"", "folder"),
            ("folder = \"vae\"", "folder = \"/etc\"", "folder"),
            ("folder = \"vae\"", "folder = \"a/../b\"", "folder"),
            ("url = \"https://example.com/a\"", "url = \"file:///etc/passwd\"", "url"),
            ("size = 10", "size = -1", "size"),
        ] {
            let e = error(&one("").replace(from, to));
            assert!(e.contains(&format!("key `{key}`")), "{to}: {e}");
        }
        let e = error(&one("").replace(SHA, "abc"));
        assert!(e.contains("key `sha256`") && e.contains("64 hex"), "{e}");
        let e = error(&one("headers_env = \"Bearer hf_x\"\n"));
        assert!(e.contains("key `headers_env`"), "{e}");
    }

    #[test]
    fn nested_folders_are_accepted() {
        let m = parse(Path::new("x.toml"), &one("").replace("\"vae\"", "\"loras/qwen\"")).unwrap();
        assert_eq!(m.files[0].folder, Path::new("loras/qwen"));
    }

    #[test]
    fn a_duplicate_destination_is_refused() {
        let e = error(&format!("{}\n{}", one(""), one("")));
        assert!(e.contains("[[file]] #2") && e.contains("#1"), "{e}");
    }

    #[test]
    fn an_empty_or_zero_sha256_is_not_filled_in_but_other_errors_come_first() {
        let e = parse(Path::new("x.toml"), &one("").replace(SHA, "")).unwrap_err();
        assert!(matches!(e, ManifestError::NotFilledIn { .. }), "{e}");
        let e = parse(Path::new("x.toml"), &one("").replace(SHA, &"0".repeat(64))).unwrap_err();
        assert!(matches!(e, ManifestError::NotFilledIn { .. }), "{e}");
        let text = format!("{}\n{}", one("").replace(SHA, ""), one("").replace("\"vae\"", "\"..\""));
        let e = parse(Path::new("x.toml"), &text).unwrap_err();
        assert!(matches!(e, ManifestError::Invalid { key: "folder", .. }), "{e}");
    }

    #[test]
    fn a_toml_syntax_error_names_its_line() {
        let e = error("[[file]]\nname = \n");
        assert!(e.contains("line 2"), "{e}");
    }
}
