//! One file inside ComfyUI's folders, named the way ComfyUI resolves it (`/view`, uploads,
//! workflow inputs, mask references), and the per-user folder every user's uploads live in.
//!
//! ComfyUI reads `filename` (an ` [output]`/` [input]`/` [temp]` suffix picks the folder and
//! wins over `type`), refuses names starting with `/` or holding `..`, keeps only the last
//! segment of the name, and joins `subfolder` under the folder. The gateway does the same,
//! decides ownership on the result and forwards only that result, so no spelling (`x/NAME`,
//! `subfolder=./`, `a/..`, a second `filename=`) can make the two disagree.

use crate::http::ApiError;
use crate::policy::names::{self, NameError};

/// The folder under ComfyUI's `input/` that holds every gateway user's uploads, one subfolder
/// per user id: users name files relative to their own subfolder and never see this prefix.
pub const USERS_FOLDER: &str = "comfygate-users";

/// ComfyUI's three file folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Uploads (per user).
    Input,
    /// Job outputs.
    Output,
    /// Previews.
    Temp,
}

impl Kind {
    /// The name ComfyUI uses (`type=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Input => "input",
            Kind::Output => "output",
            Kind::Temp => "temp",
        }
    }

    /// The folder named by `type=`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "input" => Some(Kind::Input),
            "output" => Some(Kind::Output),
            "temp" => Some(Kind::Temp),
            _ => None,
        }
    }
}

/// Why a file name is refused, with ComfyUI's own status for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// `filename` starts with `/` or holds `..`, or holds invalid characters (400).
    #[error("invalid file name")]
    BadName,
    /// `type` names no folder (400).
    #[error("unknown file type `{0}` (use input, output or temp)")]
    BadKind(String),
    /// `subfolder` leaves the folder (ComfyUI answers 403).
    #[error("the subfolder leaves its folder")]
    Escapes,
    /// `subfolder` holds invalid characters (400).
    #[error("invalid subfolder")]
    BadSubfolder,
}

impl From<FileNameError> for ApiError {
    fn from(e: FileNameError) -> Self {
        match e {
            FileNameError::Escapes => ApiError::Forbidden(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

/// A file as the user names it: folder, subfolder (relative to the user's own folder for
/// inputs) and plain file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFile {
    /// The folder.
    pub kind: Kind,
    /// `/`-separated, without dot or empty segments (`""` for none).
    pub subfolder: String,
    /// The last segment of the name (may be empty: ComfyUI then finds nothing).
    pub filename: String,
}

impl UserFile {
    /// Resolves `filename` (possibly annotated), `type` (default `default_kind`) and
    /// `subfolder` as ComfyUI does.
    pub fn resolve(
        filename: &str,
        kind: Option<&str>,
        subfolder: &str,
        default_kind: Kind,
    ) -> Result<Self, FileNameError> {
        let (name, annotated) = split_annotation(filename);
        if name.starts_with('/') || name.contains("..") || name.chars().any(|c| c.is_control() || c == '\\') {
            return Err(FileNameError::BadName);
        }
        let kind = match (annotated, kind) {
            (Some(kind), _) => kind,
            (None, None) => default_kind,
            (None, Some(kind)) => Kind::parse(kind).ok_or_else(|| FileNameError::BadKind(kind.to_owned()))?,
        };
        let subfolder = resolve_subfolder(subfolder)?;
        let filename = name.rsplit('/').next().unwrap_or_default().to_owned();
        Ok(Self { kind, subfolder, filename })
    }

    /// A folder (`kind` + `subfolder`) a file is to go in, before it has a name (uploads).
    pub fn folder(kind: Kind, subfolder: &str) -> Result<Self, FileNameError> {
        Ok(Self { kind, subfolder: resolve_subfolder(subfolder)?, filename: String::new() })
    }

    /// A workflow input value (`sub/cat.png`, `x.png [output]`): the folder part of the name is
    /// its subfolder, as ComfyUI's `LoadImage` reads it.
    pub fn from_input_value(value: &str, default_kind: Kind) -> Result<Self, FileNameError> {
        let (name, annotated) = split_annotation(value);
        let (subfolder, base) = name.rsplit_once('/').unwrap_or(("", name));
        let kind = annotated.unwrap_or(default_kind);
        Self::resolve(base, Some(kind.as_str()), subfolder, kind)
    }

    /// Where the file really is for the user `user_id`: inputs live in the user's own folder.
    pub fn located_for(&self, user_id: i64) -> Located {
        let subfolder = match self.kind {
            Kind::Input => join(&user_folder(user_id), &self.subfolder),
            Kind::Output | Kind::Temp => self.subfolder.clone(),
        };
        Located { kind: self.kind, subfolder, filename: self.filename.clone() }
    }
}

/// A file as ComfyUI names it (the subfolder includes the user's folder for inputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The folder.
    pub kind: Kind,
    /// The real subfolder.
    pub subfolder: String,
    /// The plain file name.
    pub filename: String,
}

impl Located {
    /// The workflow input value that names this file (`sub/x.png`, with ` [output]` when
    /// `annotate` is set).
    pub fn input_value(&self, annotate: bool) -> String {
        let path = join(&self.subfolder, &self.filename);
        if annotate { format!("{path} [{}]", self.kind.as_str()) } else { path }
    }
}

/// `subfolder` joined under its folder as ComfyUI joins it.
fn resolve_subfolder(subfolder: &str) -> Result<String, FileNameError> {
    names::resolve_relative(subfolder, false).map_err(|e| match e {
        NameError::Escapes => FileNameError::Escapes,
        NameError::InvalidCharacters | NameError::TooLong => FileNameError::BadSubfolder,
    })
}

/// The input subfolder of user `user_id` (relative to ComfyUI's `input/`).
pub fn user_folder(user_id: i64) -> String {
    format!("{USERS_FOLDER}/{user_id}")
}

/// A real input subfolder as the user `user_id` sees it (their own folder removed), or `None`
/// when it is not inside their folder.
pub fn user_view_of(user_id: i64, real_subfolder: &str) -> Option<String> {
    let own = user_folder(user_id);
    if real_subfolder == own {
        return Some(String::new());
    }
    real_subfolder.strip_prefix(&own).and_then(|rest| rest.strip_prefix('/')).map(str::to_owned)
}

/// `a/b`, either side possibly empty.
pub(super) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

/// `("x.png", Some(Output))` for `"x.png [output]"`.
fn split_annotation(name: &str) -> (&str, Option<Kind>) {
    for kind in [Kind::Output, Kind::Input, Kind::Temp] {
        if let Some(base) = name.strip_suffix(&format!(" [{}]", kind.as_str())) {
            return (base, Some(kind));
        }
    }
    (name, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn view(filename: &str, kind: Option<&str>, subfolder: &str) -> Result<UserFile, FileNameError> {
        UserFile::resolve(filename, kind, subfolder, Kind::Output)
    }

    #[test]
    fn every_spelling_of_one_output_resolves_to_one_file() {
        let plain = view("a.png", Some("output"), "").unwrap();
        for (filename, kind, subfolder) in [
            ("a.png", None, ""),
            ("x/a.png", Some("output"), ""),
            ("x/y/a.png", Some("output"), ""),
            ("a.png", Some("output"), "."),
            ("a.png", Some("output"), "./"),
            ("a.png", Some("output"), "b/.."),
            ("a.png", Some("output"), "b/../"),
            ("a.png [output]", Some("input"), ""),
            ("a.png [output]", Some("nonsense"), ""),
        ] {
            assert_eq!(view(filename, kind, subfolder).unwrap(), plain, "{filename} {kind:?} {subfolder}");
        }
        assert_eq!(view("a.png", Some("output"), "s//t/./").unwrap().subfolder, "s/t");
        assert_eq!(view("a.png [temp]", None, "").unwrap().kind, Kind::Temp);
    }

    #[test]
    fn names_comfyui_refuses_are_refused_with_its_status() {
        assert_eq!(view("/etc/passwd", None, ""), Err(FileNameError::BadName));
        assert_eq!(view("../a.png", None, ""), Err(FileNameError::BadName));
        assert_eq!(view("a..png", None, ""), Err(FileNameError::BadName), "ComfyUI refuses any `..`");
        assert_eq!(view("a\\b.png", None, ""), Err(FileNameError::BadName));
        assert_eq!(view("a\0.png", None, ""), Err(FileNameError::BadName));
        assert_eq!(view("a.png", Some("secret"), ""), Err(FileNameError::BadKind("secret".to_owned())));
        assert_eq!(view("a.png", None, ".."), Err(FileNameError::Escapes));
        assert_eq!(view("a.png", None, "a/../.."), Err(FileNameError::Escapes));
        assert_eq!(view("a.png", None, "/etc"), Err(FileNameError::Escapes));
        assert_eq!(view("a.png", None, "//"), Err(FileNameError::Escapes), "absolute, as os.path.join reads it");
        assert_eq!(view("a.png", None, "a\0"), Err(FileNameError::BadSubfolder));
        let e: ApiError = FileNameError::Escapes.into();
        assert_eq!(e.status(), 403);
    }

    #[test]
    fn inputs_live_in_the_users_own_folder_and_outputs_where_they_are() {
        let cat = UserFile::resolve("cat.png", Some("input"), "pets", Kind::Input).unwrap();
        let located = cat.located_for(7);
        assert_eq!(located.subfolder, "comfygate-users/7/pets");
        assert_eq!(located.input_value(false), "comfygate-users/7/pets/cat.png");
        // Another user's folder named from inside one's own folder stays inside it.
        let sneaky = UserFile::resolve("cat.png", Some("input"), "../8", Kind::Input);
        assert_eq!(sneaky, Err(FileNameError::Escapes));
        let nested = UserFile::resolve("cat.png", Some("input"), "comfygate-users/8", Kind::Input).unwrap();
        assert_eq!(nested.located_for(7).subfolder, "comfygate-users/7/comfygate-users/8");
        let out = UserFile::resolve("o.png", Some("output"), "", Kind::Input).unwrap().located_for(7);
        assert_eq!(out.subfolder, "");
        assert_eq!(out.input_value(true), "o.png [output]");
    }

    #[test]
    fn input_values_carry_their_subfolder_in_the_name() {
        let f = UserFile::from_input_value("pets/cat.png", Kind::Input).unwrap();
        assert_eq!((f.kind, f.subfolder.as_str(), f.filename.as_str()), (Kind::Input, "pets", "cat.png"));
        let f = UserFile::from_input_value("x.png [output]", Kind::Input).unwrap();
        assert_eq!(f.kind, Kind::Output);
        assert!(UserFile::from_input_value("../../etc/passwd", Kind::Input).is_err());
        assert!(UserFile::from_input_value("a/../../b.png", Kind::Input).is_err());
    }

    #[test]
    fn the_users_view_hides_their_folder_and_nobody_elses() {
        assert_eq!(user_view_of(7, "comfygate-users/7"), Some(String::new()));
        assert_eq!(user_view_of(7, "comfygate-users/7/pets"), Some("pets".to_owned()));
        assert_eq!(user_view_of(7, "comfygate-users/70"), None);
        assert_eq!(user_view_of(7, "comfygate-users/8/pets"), None);
        assert_eq!(user_view_of(7, ""), None);
    }
}
