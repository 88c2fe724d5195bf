//! Which gateway is serving from a data folder: `comfygate serve` holds an exclusive lock on
//! `<data_dir>/comfygate.pid` (with its process id inside) for as long as it runs. The kernel
//! drops the lock when the process ends, however it ends, so a stale file never blocks anyone.
//!
//! Two gateways on one SQLite store would both schedule its queue; `restore` must not replace a
//! store under a running gateway; `reload` needs the process to signal. All three ask here.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use super::private;

/// The lock file's name inside the data folder.
pub const FILE_NAME: &str = "comfygate.pid";

/// Why the lock could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    /// Another process holds it.
    #[error(
        "another comfygate{} is serving from the data folder {path}; stop it first, or give this one its own \
         `store.data_dir`",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The data folder.
        path: String,
        /// The holder's process id, when the file says.
        pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot use the lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// The lock of a serving gateway; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the data folder's lock for this process and writes its id into the file.
    pub fn acquire(data_dir: &Path) -> Result<Self, RunLockError> {
        let path = data_dir.join(FILE_NAME);
        let io_error = |source| RunLockError::Io { path: path.display().to_string(), source };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(private::FILE_MODE)
            .open(&path)
            .map_err(io_error)?;
        match try_lock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(true) => {}
            Ok(false) => {
                return Err(RunLockError::Held { path: data_dir.display().to_string(), pid: read_pid(&mut file) });
            }
            Err(e) => return Err(io_error(e)),
        }
        private::make_private(&path).map_err(io_error)?;
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a gateway serves from `data_dir`, and its process id when the file names one.
    /// `Ok(None)`: nobody holds the lock (or there is no lock file).
    pub fn holder(data_dir: &Path) -> Result<Option<Holder>, RunLockError> {
        let path = data_dir.join(FILE_NAME);
        let io_error = |source| RunLockError::Io { path: path.display().to_string(), source };
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        match try_lock(&file, FlockOperation::NonBlockingLockShared) {
            // Free: the shared lock ends with `file`.
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(Holder { pid: read_pid(&mut file) })),
            Err(e) => Err(io_error(e)),
        }
    }
}

/// A gateway holding a data folder's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, when the lock file names one.
    pub pid: Option<u32>,
}

/// `flock` without waiting: false when another open file holds a conflicting lock.
fn try_lock(file: &File, operation: FlockOperation) -> io::Result<bool> {
    match rustix::fs::flock(file, operation) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|pid| *pid > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunLock::holder(dir.path()).unwrap(), None, "no file yet");
        let lock = RunLock::acquire(dir.path()).unwrap();
        let me = Some(std::process::id());
        assert_eq!(RunLock::holder(dir.path()).unwrap(), Some(Holder { pid: me }));
        match RunLock::acquire(dir.path()) {
            Err(RunLockError::Held { pid, .. }) => assert_eq!(pid, me),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(lock);
        assert_eq!(RunLock::holder(dir.path()).unwrap(), None, "released with the lock");
        let again = RunLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()), "one pid, the old content replaced");
    }

    #[test]
    fn the_lock_file_is_private_and_a_stale_file_blocks_nobody() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "4242\n").unwrap();
        assert_eq!(RunLock::holder(dir.path()).unwrap(), None);
        let lock = RunLock::acquire(dir.path()).unwrap();
        let mode = std::fs::metadata(lock.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
