//! Reading a dotenv file that is to be rewritten, and the private atomic replace: a new file
//! in the same folder (0600 whatever the umask), written, synced, renamed over the old one,
//! and the folder synced, so a crash leaves the old file or the new one, never half of one.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, fchown};
use std::path::Path;

use super::EnvFileError;
use crate::store::private::FILE_MODE;

/// The text of the file at `path`, `None` when there is none. A symbolic link is refused: in a
/// shared folder it could point the write at another user's (or the gateway's) file.
pub fn read(path: &Path) -> Result<Option<String>, EnvFileError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EnvFileError::io(path, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(EnvFileError::Symlink(path.to_path_buf()));
    }
    if !meta.is_file() {
        return Err(EnvFileError::NotAFile(path.to_path_buf()));
    }
    let bytes = fs::read(path).map_err(|e| EnvFileError::io(path, e))?;
    String::from_utf8(bytes).map(Some).map_err(|_| EnvFileError::NotText(path.to_path_buf()))
}

/// Replaces (or creates) the file at `path` with `text`, mode 0600. The rename replaces the
/// folder entry itself: a symbolic link put there meanwhile is replaced, not followed.
pub fn write_private(path: &Path, text: &str) -> Result<(), EnvFileError> {
    let name = path.file_name().ok_or_else(|| EnvFileError::NotAFile(path.to_path_buf()))?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(EnvFileError::NoFolder(path.to_path_buf()));
    }
    // The replaced file's owner and group stay (`sudo comfygate env write` on a user's file
    // must leave it readable by that user); when that is not allowed, the writer's own.
    let owner = fs::symlink_metadata(path).ok().map(|m| (m.uid(), m.gid()));
    let temp = folder.join(format!(".{}.{}.tmp", name.to_string_lossy(), uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&temp)?;
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
        if let Some((uid, gid)) = owner {
            if fchown(&file, Some(uid), Some(gid)).is_err() {
                let _ = fchown(&file, None, Some(gid));
            }
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(folder)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&temp);
        EnvFileError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_file_is_replaced_private_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        assert_eq!(read(&path).unwrap(), None);
        fs::write(&path, "A=1\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "A=2\n").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("A=2\n"));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "SECRET=x\n").unwrap();
        let link = dir.path().join(".env");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(read(&link), Err(EnvFileError::Symlink(_))));
        assert!(matches!(write_private(&dir.path().join("no/such/.env"), ""), Err(EnvFileError::NoFolder(_))));
        assert_eq!(fs::read_to_string(&target).unwrap(), "SECRET=x\n");
    }
}
