//! The audit file: lines appended to one file, private (0600) whatever the umask, each written
//! to the OS before the action goes on, and rotated by size (`audit.jsonl.1` … `.keep`).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::store::private;

/// The open audit file. One per process, behind a mutex: lines never interleave.
pub struct AuditFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: usize,
}

impl AuditFile {
    /// Opens (creating) the file at `path` for appending.
    pub fn open(path: &Path, max_size: u64, keep: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self { path: path.to_owned(), file, size, max_size, keep })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and its newline in one write, rotating first when it would pass the
    /// size limit.
    pub fn append(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let len = bytes.len() as u64;
        if self.size > 0 && self.size + len > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&bytes)?;
        self.file.flush()?;
        self.size += len;
        Ok(())
    }

    /// `audit.jsonl.(keep-1)` → `.keep` … `audit.jsonl` → `.1`, then a fresh file. Only a
    /// regular file is rotated (a device such as `/dev/null` is written as it is).
    fn rotate(&mut self) -> io::Result<()> {
        if !fs::metadata(&self.path)?.is_file() {
            self.size = 0;
            return Ok(());
        }
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                match fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }
}

/// Opens for appending, created 0600; an existing regular file is made 0600 too (never a
/// device: tests point the file at `/dev/full`).
fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).mode(private::FILE_MODE).open(path)?;
    if file.metadata()?.is_file() {
        file.set_permissions(Permissions::from_mode(private::FILE_MODE))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lines_rotate_past_the_size_keeping_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut file = AuditFile::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            file.append(&format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(30))).unwrap();
        }
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        let current = read(&path);
        assert!(current.lines().count() >= 1 && current.len() <= 100, "{current}");
        assert!(current.contains("\"n\":9,"), "{current}");
        assert!(read(&dir.path().join("audit.jsonl.1")).len() <= 100);
        assert!(dir.path().join("audit.jsonl.2").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
