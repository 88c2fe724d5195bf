//! Finding dotenv files: `.env`, `.env.*` and `*.env`, under folders searched to a bounded
//! depth, without entering `.git`, `node_modules` or folders reached through symbolic links.

use std::fs;
use std::path::{Path, PathBuf};

use super::EnvFileError;

/// How deep below a given folder files are looked for.
pub const MAX_DEPTH: usize = 8;

/// Whether a file of this name is a dotenv file.
pub fn is_env_file_name(name: &str) -> bool {
    name == ".env" || name.starts_with(".env.") || (name.ends_with(".env") && name.len() > ".env".len())
}

/// The dotenv files named by `paths`: a file is taken whatever its name, a folder is searched.
/// Sorted, each once.
pub fn find_env_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, EnvFileError> {
    let mut found = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| EnvFileError::io(path, e))?;
        if meta.is_dir() {
            walk(path, 0, &mut found)?;
        } else {
            found.push(path.clone());
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The text of a dotenv file to be checked (a linked file is read: checking changes nothing).
pub fn read_text(path: &Path) -> Result<String, EnvFileError> {
    let bytes = fs::read(path).map_err(|e| EnvFileError::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| EnvFileError::NotText(path.to_path_buf()))
}

fn walk(folder: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<(), EnvFileError> {
    let entries = fs::read_dir(folder).map_err(|e| EnvFileError::io(folder, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EnvFileError::io(folder, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(|e| EnvFileError::io(&path, e))?;
        if kind.is_dir() {
            if depth < MAX_DEPTH && name != ".git" && name != "node_modules" {
                walk(&path, depth + 1, found)?;
            }
        } else if is_env_file_name(&name) && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            // A linked file is read (reading follows nothing further); a linked folder is not entered.
            found.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        for yes in [".env", ".env.local", ".env.production", "prod.env"] {
            assert!(is_env_file_name(yes), "{yes}");
        }
        for no in ["env", ".envrc", "a.environment", ".env_old", "README"] {
            assert!(!is_env_file_name(no), "{no}");
        }
    }

    #[test]
    fn folders_are_searched_except_git_node_modules_and_linked_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["a/b", ".git", "node_modules/x", "outside"] {
            fs::create_dir_all(root.join(folder)).unwrap();
        }
        for file in [".env", "a/b/.env.local", "a/prod.env", ".git/.env", "node_modules/x/.env", "outside/.env"] {
            fs::write(root.join(file), "K=v\n").unwrap();
        }
        fs::write(root.join("a/notes.txt"), "K=v\n").unwrap();
        std::os::unix::fs::symlink(root.join("outside"), root.join("a/linked")).unwrap();
        let found = find_env_files(&[root.join("a"), root.join(".env")]).unwrap();
        let names: Vec<_> =
            found.iter().map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, [".env", "a/b/.env.local", "a/prod.env"]);
        let deep = root.join((0..=MAX_DEPTH + 1).map(|i| i.to_string()).collect::<Vec<_>>().join("/"));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join(".env"), "K=v\n").unwrap();
        assert!(!find_env_files(&[root.join("0")]).unwrap().iter().any(|p| p.ends_with(".env")), "too deep");
    }
}
