//! The data folder is the gateway's alone: every user's stored requests, saved workflows and,
//! for an imported ComfyUI-Login admin, the bcrypt hash that is its legacy token live there.
//! Folders are made 0700 and files 0600 whatever the umask (the mode is set after creation,
//! since the umask only ever takes bits away and a strict umask could take too many).

use std::collections::HashSet;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Mode of the folders the gateway creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files the gateway creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parents as private folders (an existing folder is left as
/// it is: see [`warn_if_shared`]).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut missing: Vec<&Path> = Vec::new();
    let mut at = Some(path);
    while let Some(folder) = at.filter(|p| !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_err()) {
        missing.push(folder);
        at = folder.parent();
    }
    for folder in missing.into_iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(folder) {
            Ok(()) => fs::set_permissions(folder, Permissions::from_mode(DIR_MODE))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `path` as an empty private file if it does not exist, and makes it private if it
/// does.
pub fn create_file(path: &Path) -> io::Result<()> {
    OpenOptions::new().create(true).append(true).mode(FILE_MODE).open(path)?;
    make_private(path)
}

/// Makes the file at `path`, if there is one, readable by the gateway's user only.
pub fn make_private(path: &Path) -> io::Result<()> {
    match fs::set_permissions(path, Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Opens a new private file for writing (truncating one that exists).
pub fn open_for_writing(path: &Path) -> io::Result<fs::File> {
    let file = OpenOptions::new().create(true).write(true).truncate(true).mode(FILE_MODE).open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// The mode of the folder at `path` when it lets other local users in (`None`: private).
pub fn shared_mode(path: &Path) -> io::Result<Option<u32>> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

/// Warns (once per folder) when the folder at `path` lets other local users in, naming the fix.
pub fn warn_if_shared(path: &Path) {
    static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let Ok(Some(mode)) = shared_mode(path) else { return };
    let key = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut warned = WARNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.get_or_insert_with(HashSet::new).insert(key) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "the data folder {} is open to other local users (mode {mode:04o}): it holds every user's requests \
             and password hashes; run `chmod 700 {}`",
            path.display(),
            path.display(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_and_files_are_private_and_existing_folders_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_all(&nested).unwrap();
        for folder in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(folder)), 0o700, "{folder}");
        }
        assert_eq!(mode(dir.path()), 0o755);
        let file = nested.join("f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read(&file).unwrap(), b"x", "an existing file keeps its content");
        drop(open_for_writing(&nested.join("g")).unwrap());
        assert_eq!(mode(&nested.join("g")), 0o600);
        make_private(&nested.join("missing")).unwrap();
    }
}
