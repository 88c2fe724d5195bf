//! Free space, checked before any download starts so a 20 GB file does not fail at 19 GB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One filesystem that cannot hold what is to be written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// A folder on that filesystem (the first destination found on it).
    pub folder: PathBuf,
    /// Bytes still to download to it.
    pub needed: u64,
    /// Bytes available to an unprivileged user.
    pub available: u64,
}

/// Bytes available to this user on the filesystem holding `path`.
pub fn available(path: &Path) -> std::io::Result<u64> {
    let vfs = rustix::fs::statvfs(existing_ancestor(path))?;
    Ok(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

/// Checks `needs` (a folder, the bytes to write there) per filesystem: the first shortfall, or
/// the bytes available on the filesystem of the first folder.
pub fn check(needs: &[(PathBuf, u64)]) -> std::io::Result<Result<u64, Shortfall>> {
    // Filesystem id → (first folder, needed, available).
    let mut by_fs: BTreeMap<u64, (PathBuf, u64, u64)> = BTreeMap::new();
    let mut first_available = None;
    for (folder, bytes) in needs {
        let vfs = rustix::fs::statvfs(existing_ancestor(folder))?;
        let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        first_available.get_or_insert(available);
        let entry = by_fs.entry(vfs.f_fsid).or_insert_with(|| (folder.clone(), 0, available));
        entry.1 = entry.1.saturating_add(*bytes);
    }
    for (folder, needed, available) in by_fs.into_values() {
        if needed > available {
            return Ok(Err(Shortfall { folder, needed, available }));
        }
    }
    Ok(Ok(first_available.unwrap_or(0)))
}

/// The folders of a fresh models folder do not exist yet; their filesystem is their parent's.
fn existing_ancestor(path: &Path) -> &Path {
    let mut at = path;
    loop {
        if at.exists() {
            return at;
        }
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => return Path::new("."),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_missing_folder_is_measured_on_its_nearest_existing_parent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert!(available(&missing).unwrap() > 0);
        let ok = check(&[(missing.clone(), 1)]).unwrap();
        assert!(ok.is_ok());
        let short = check(&[(missing.clone(), u64::MAX / 2), (dir.path().to_owned(), u64::MAX / 2)]).unwrap();
        assert_eq!(short.unwrap_err().folder, missing);
    }
}
