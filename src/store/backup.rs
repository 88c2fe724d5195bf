//! Copies of the SQLite store: [`backup`] takes a consistent copy while a gateway serves (SQLite's
//! `VACUUM INTO`: one read transaction, so one snapshot, and WAL writers are never blocked);
//! [`restore`] puts a checked copy in place while no gateway serves, keeping the store it replaces.
//!
//! Every file written here is private (0600) whatever the umask: it is created empty and private
//! first, then filled, synced and renamed into place, and its folder synced, so a crash leaves
//! either the old file or the complete new one under the name.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

use super::private::FILE_MODE;
use super::running::{RunLock, RunLockError};
use super::schema::{self, Schema};
use super::{StoreError, private};

/// The first 16 bytes of every SQLite database file.
const HEADER: &[u8; 16] = b"SQLite format 3\0";
/// How long the copy waits for a lock it cannot take at once.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The files SQLite may keep beside a database, by suffix (moved with it on restore: a killed
/// gateway leaves committed transactions in `-wal`).
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Why a backup or a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store is PostgreSQL: its own tools copy it.
    #[error(
        "the store is PostgreSQL: back it up with its own tools, e.g. `pg_dump -Fc -f comfygate.dump \"$DATABASE_URL\"` \
         and restore with `pg_restore --clean --if-exists -d \"$DATABASE_URL\" comfygate.dump` (docs/backup.md)"
    )]
    Postgres,
    /// The URL names an in-memory database or no supported database.
    #[error("the store URL names no SQLite file (use sqlite://path)")]
    NoFile,
    /// There is no database at the store's path (nothing was created).
    #[error("there is no store at {0} (check [store] data_dir / url; `comfygate serve` creates it on first start)")]
    Missing(PathBuf),
    /// The backup's file exists and `--force` was not given.
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    /// The file named is the store itself (or one of its side files).
    #[error("{0} is the store itself")]
    SameFile(PathBuf),
    /// The folder the file should go in does not exist.
    #[error("the folder {0} does not exist")]
    NoFolder(PathBuf),
    /// A gateway serves from the data folder (restore refuses to replace its store).
    #[error(
        "a gateway{} is serving from {path}; stop it first",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Serving {
        /// The data folder.
        path: PathBuf,
        /// The gateway's process id, when its lock file says.
        pid: Option<u32>,
    },
    /// The file is not a SQLite database.
    #[error("{0} is not a SQLite database")]
    NotSqlite(PathBuf),
    /// The file is a damaged SQLite database.
    #[error("{path} is damaged: {report}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What SQLite said (`PRAGMA integrity_check`, or the error opening it).
        report: String,
    },
    /// The file is a SQLite database but not a comfygate store.
    #[error("{0} is a SQLite database but not a comfygate store (it has no comfygate migrations)")]
    NotAStore(PathBuf),
    /// The file was migrated by a newer comfygate.
    #[error(
        "{path} was made by a newer comfygate (schema version(s) {versions:?} unknown to this one): restore it with \
         that version"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// The versions this binary does not know.
        versions: Vec<i64>,
    },
    /// The file records a migration that failed part-way.
    #[error("{path} records migration(s) {versions:?} that failed part-way: it is not a usable store")]
    FailedMigration {
        /// The file.
        path: PathBuf,
        /// The failed versions.
        versions: Vec<i64>,
    },
    /// The store could not be read.
    #[error("cannot read the store {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// The data folder's lock could not be taken.
    #[error(transparent)]
    Lock(RunLockError),
    /// A file could not be read, written, synced or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl BackupError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.to_path_buf(), source }
    }
}

/// A copy written by [`backup`].
#[derive(Debug)]
pub struct Backup {
    /// The copy (absolute).
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its migrations, compared with this binary's.
    pub schema: Schema,
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct Restored {
    /// The store's file, now the restored copy.
    pub installed: PathBuf,
    /// Where the files it replaced were kept (empty: there was no store).
    pub kept: Vec<PathBuf>,
    /// The restored copy's migrations, compared with this binary's.
    pub schema: Schema,
}

/// The SQLite file a store URL names, parsed as the store parses it.
pub fn store_file(url: &str) -> Result<PathBuf, BackupError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(BackupError::Postgres);
    }
    // sqlx names an in-memory database `file:sqlx-in-memory-N`: told by the URL instead.
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return Err(BackupError::NoFile);
    }
    let options = SqliteConnectOptions::from_str(url).map_err(|_| BackupError::NoFile)?;
    let file = options.get_filename();
    if file.as_os_str().is_empty() || file.as_os_str() == ":memory:" {
        return Err(BackupError::NoFile);
    }
    Ok(file.to_path_buf())
}

/// Copies the store at `url` to `dest` (refused if it exists, unless `force`), consistently even
/// while a gateway writes to it, then checks the copy.
pub async fn backup(url: &str, dest: &Path, force: bool) -> Result<Backup, BackupError> {
    let source = store_file(url)?;
    // A read-only connection never creates the file, but it says "unable to open": this says why.
    match fs::metadata(&source) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(BackupError::Missing(source)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BackupError::Missing(source)),
        Err(e) => return Err(BackupError::io(&source)(e)),
    }
    let dest = std::path::absolute(dest).map_err(BackupError::io(dest))?;
    let (folder, name) = split(&dest)?;
    if is_store_file(&folder.join(&name), &source) {
        return Err(BackupError::SameFile(dest));
    }
    if !force && fs::symlink_metadata(&dest).is_ok() {
        return Err(BackupError::Exists(dest));
    }
    let temp = folder.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = async {
        drop(create_private(&temp)?);
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| BackupError::Database { path: source.clone(), source: e })?;
        vacuum_into(options, &source, &temp).await?;
        sync_file(&temp)?;
        let schema = check(&temp).await?;
        place(&temp, &dest, force)?;
        sync_folder(folder)?;
        Ok(schema)
    }
    .await;
    let schema = written.inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })?;
    let bytes = fs::metadata(&dest).map_err(BackupError::io(&dest))?.len();
    Ok(Backup { path: dest, bytes, schema })
}

/// Checks that `file` is an intact comfygate store this binary can serve (perhaps after
/// migrating it), changing nothing; returns its migrations.
pub async fn check(file: &Path) -> Result<Schema, BackupError> {
    let mut header = [0u8; 16];
    let mut opened = File::open(file).map_err(BackupError::io(file))?;
    match opened.read_exact(&mut header) {
        Ok(()) if &header == HEADER => {}
        Ok(()) => return Err(BackupError::NotSqlite(file.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(BackupError::NotSqlite(file.to_path_buf())),
        Err(e) => return Err(BackupError::io(file)(e)),
    }
    drop(opened);
    let damaged = |e: sqlx::Error| BackupError::Damaged { path: file.to_path_buf(), report: e.to_string() };
    // Immutable, a copy nobody writes: no lock and no `-shm` beside it. But a store with a `-wal`
    // of its own (a kept `.replaced-` store whose gateway was killed) has committed transactions
    // there, even its schema: that one is read as SQLite reads a live store.
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    let has_wal = fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    let mut conn = SqliteConnectOptions::new()
        .filename(file)
        .read_only(true)
        .immutable(!has_wal)
        .create_if_missing(false)
        .connect()
        .await
        .map_err(damaged)?;
    let checked = async {
        let report: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut conn).await?;
        let schema = schema::sqlite_schema(&mut conn).await.map_err(|e| match e {
            StoreError::Database(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        })?;
        Ok::<_, sqlx::Error>((report, schema))
    }
    .await;
    let _ = conn.close().await;
    let (report, schema) = checked.map_err(damaged)?;
    if report != ["ok"] {
        let report = report.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        return Err(BackupError::Damaged { path: file.to_path_buf(), report: format!("integrity_check: {report}") });
    }
    if !schema.unknown.is_empty() {
        return Err(BackupError::Newer { path: file.to_path_buf(), versions: schema.unknown });
    }
    if !schema.failed.is_empty() {
        return Err(BackupError::FailedMigration { path: file.to_path_buf(), versions: schema.failed });
    }
    if schema.applied == 0 {
        return Err(BackupError::NotAStore(file.to_path_buf()));
    }
    Ok(schema)
}

/// Replaces the store at `url` with a checked copy of `file`, unless a gateway serves from
/// `data_dir`; holds the data folder's lock meanwhile (a `serve` starting then is refused) and
/// keeps the replaced files beside the store as `<name>.replaced-<UTC time>`.
pub async fn restore(url: &str, data_dir: &Path, file: &Path) -> Result<Restored, BackupError> {
    let target = std::path::absolute(store_file(url)?).map_err(BackupError::io(data_dir))?;
    if let Some(holder) = RunLock::holder(data_dir).map_err(BackupError::Lock)? {
        return Err(BackupError::Serving { path: data_dir.to_path_buf(), pid: holder.pid });
    }
    if is_store_file(file, &target) {
        return Err(BackupError::SameFile(file.to_path_buf()));
    }
    // Refused early and cheaply, before anything is created or locked.
    check(file).await?;
    // With no store yet, its folders are made (private) as `serve` would make them.
    private::create_dir_all(data_dir).map_err(BackupError::io(data_dir))?;
    if let Some(folder) = target.parent() {
        private::create_dir_all(folder).map_err(BackupError::io(folder))?;
    }
    let (folder, name) = split(&target)?;
    let _lock = RunLock::acquire(data_dir).map_err(|e| match e {
        RunLockError::Held { pid, .. } => BackupError::Serving { path: data_dir.to_path_buf(), pid },
        other => BackupError::Lock(other),
    })?;
    let temp = folder.join(format!(".{name}.restore-{}", uuid::Uuid::new_v4().simple()));
    let installed = async {
        // A copy as `backup` makes one: FILE may be a store with a `-wal` of its own (a kept
        // `.replaced-` store whose gateway was killed), which a byte copy would leave out.
        drop(create_private(&temp)?);
        vacuum_into(SqliteConnectOptions::new().filename(file), file, &temp).await.map_err(|e| match e {
            BackupError::Database { source, .. } => {
                BackupError::Damaged { path: file.to_path_buf(), report: source.to_string() }
            }
            other => other,
        })?;
        sync_file(&temp)?;
        // What is installed is what was checked: the copy, not the file (which could change).
        let schema = check(&temp).await?;
        let moved = move_aside(&target)?;
        if let Err(e) = fs::rename(&temp, &target) {
            for (from, to) in &moved {
                let _ = fs::rename(to, from);
            }
            return Err(BackupError::io(&target)(e));
        }
        sync_folder(folder)?;
        Ok(Restored { installed: target.clone(), kept: moved.into_iter().map(|(_, to)| to).collect(), schema })
    }
    .await;
    installed.inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })
}

/// The folder and file name of an absolute path.
fn split(path: &Path) -> Result<(&Path, String), BackupError> {
    let name = path.file_name().ok_or_else(|| BackupError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let folder = path.parent().unwrap_or(Path::new("/"));
    if !folder.is_dir() {
        return Err(BackupError::NoFolder(folder.to_path_buf()));
    }
    Ok((folder, name.to_string_lossy().into_owned()))
}

/// A new, empty file only this user can read (whatever the umask).
fn create_private(path: &Path) -> Result<File, BackupError> {
    let file =
        OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path).map_err(BackupError::io(path))?;
    file.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(BackupError::io(path))?;
    Ok(file)
}

/// Whether `candidate` names the store's file or one of its side files (by resolved path: the
/// files need not exist).
fn is_store_file(candidate: &Path, store: &Path) -> bool {
    let resolve = |path: &Path| match (path.parent(), path.file_name()) {
        (Some(folder), Some(name)) => {
            let folder = if folder.as_os_str().is_empty() { Path::new(".") } else { folder };
            fs::canonicalize(folder).ok().map(|f| f.join(name))
        }
        _ => None,
    };
    let (Some(candidate), Some(store)) = (resolve(candidate), resolve(store)) else { return false };
    [""].into_iter().chain(SIDE_FILES).any(|suffix| {
        let mut name = store.as_os_str().to_owned();
        name.push(suffix);
        candidate.as_os_str() == name
    })
}

/// `VACUUM INTO` the empty file `temp` from the database `options` name, on a read-only
/// connection of its own.
async fn vacuum_into(options: SqliteConnectOptions, source: &Path, temp: &Path) -> Result<(), BackupError> {
    let database = |e| BackupError::Database { path: source.to_path_buf(), source: e };
    let into = temp.to_str().ok_or_else(|| BackupError::Io {
        path: temp.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path is not UTF-8"),
    })?;
    let mut conn: SqliteConnection = options
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT)
        .connect()
        .await
        .map_err(database)?;
    let copied = sqlx::query("VACUUM INTO ?").bind(into).execute(&mut conn).await;
    let _ = conn.close().await;
    copied.map(drop).map_err(database)
}

/// Gives `temp` the name `dest`: replacing it when `force`, else only if nothing took the name
/// meanwhile (a hard link fails on an existing name, where a rename would replace it).
fn place(temp: &Path, dest: &Path, force: bool) -> Result<(), BackupError> {
    if force {
        return fs::rename(temp, dest).map_err(BackupError::io(dest));
    }
    match fs::hard_link(temp, dest) {
        Ok(()) => fs::remove_file(temp).map_err(BackupError::io(temp)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(BackupError::Exists(dest.to_path_buf())),
        // A file system without hard links: checked just before, as well as it can be.
        Err(_) if fs::symlink_metadata(dest).is_ok() => Err(BackupError::Exists(dest.to_path_buf())),
        Err(_) => fs::rename(temp, dest).map_err(BackupError::io(dest)),
    }
}

/// Renames the store's file and its side files to `<name>.replaced-<UTC time>[suffix]` (the same
/// stamp for all, so SQLite opens the kept copy with its own `-wal`); returns `(from, to)`.
fn move_aside(target: &Path) -> Result<Vec<(PathBuf, PathBuf)>, BackupError> {
    let stamp: String =
        crate::time::format_ms(crate::time::now_ms()).chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let with = |path: &Path, suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let present: Vec<&str> =
        [""].into_iter().chain(SIDE_FILES).filter(|s| fs::symlink_metadata(with(target, s)).is_ok()).collect();
    if present.is_empty() {
        return Ok(Vec::new());
    }
    // Two restores within a second get distinct names.
    let taken = |base: &Path| [""].into_iter().chain(SIDE_FILES).any(|s| fs::symlink_metadata(with(base, s)).is_ok());
    let mut base = with(target, &format!(".replaced-{stamp}"));
    let mut n = 1;
    while taken(&base) {
        base = with(target, &format!(".replaced-{stamp}-{n}"));
        n += 1;
    }
    let mut moved = Vec::new();
    for suffix in present {
        let (from, to) = (with(target, suffix), with(&base, suffix));
        if let Err(e) = fs::rename(&from, &to) {
            for (from, to) in &moved {
                let _ = fs::rename(to, from);
            }
            return Err(BackupError::io(&from)(e));
        }
        moved.push((from, to));
    }
    Ok(moved)
}

fn sync_file(path: &Path) -> Result<(), BackupError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(BackupError::io(path))
}

/// Makes a rename in `folder` durable.
fn sync_folder(folder: &Path) -> Result<(), BackupError> {
    File::open(folder).and_then(|f| f.sync_all()).map_err(BackupError::io(folder))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    async fn store_in(dir: &Path) -> String {
        let url = format!("sqlite://{}", dir.join("comfygate.db").display());
        super::super::open(&url).await.unwrap().close().await;
        url
    }

    #[tokio::test]
    async fn a_backup_is_private_checked_current_and_never_overwrites_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let url = store_in(dir.path()).await;
        let dest = dir.path().join("copy.db");
        let copy = backup(&url, &dest, false).await.unwrap();
        assert_eq!(copy.path, dest);
        assert!(copy.schema.is_current(), "{:?}", copy.schema);
        assert_eq!(mode(&dest), 0o600);
        assert!(copy.bytes > 0);
        assert!(matches!(backup(&url, &dest, false).await, Err(BackupError::Exists(_))));
        backup(&url, &dest, true).await.unwrap();
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_missing_store_is_reported_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("none/comfygate.db").display());
        assert!(matches!(backup(&url, &dir.path().join("b.db"), false).await, Err(BackupError::Missing(_))));
        assert!(!dir.path().join("none").exists());
        assert!(matches!(store_file("postgres://x@y/z"), Err(BackupError::Postgres)));
        assert!(matches!(store_file("sqlite::memory:"), Err(BackupError::NoFile)));
    }

    #[tokio::test]
    async fn restore_without_a_store_installs_the_copy_in_a_new_private_folder() {
        let dir = tempfile::tempdir().unwrap();
        let url = store_in(dir.path()).await;
        let dest = dir.path().join("copy.db");
        backup(&url, &dest, false).await.unwrap();
        let data = dir.path().join("fresh");
        let target = format!("sqlite://{}", data.join("comfygate.db").display());
        let restored = restore(&target, &data, &dest).await.unwrap();
        assert!(restored.kept.is_empty());
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&restored.installed), 0o600);
        assert!(check(&restored.installed).await.unwrap().is_current());
    }

    #[tokio::test]
    async fn restore_keeps_the_replaced_store_with_its_side_files() {
        let dir = tempfile::tempdir().unwrap();
        let url = store_in(dir.path()).await;
        let dest = dir.path().join("copy.db");
        backup(&url, &dest, false).await.unwrap();
        fs::write(dir.path().join("comfygate.db-wal"), b"").unwrap();
        let restored = restore(&url, dir.path(), &dest).await.unwrap();
        let wal = dir.path().join(format!("{}-wal", restored.kept[0].display()));
        assert!(restored.kept.contains(&wal), "{:?}", restored.kept);
        assert!(restored.kept.iter().all(|k| k.exists()));
        assert!(!dir.path().join("comfygate.db-wal").exists());
        assert_eq!(mode(&restored.installed), 0o600);
        check(&restored.installed).await.unwrap();
        // A second restore within the same second gets its own names.
        let again = restore(&url, dir.path(), &dest).await.unwrap();
        assert!(!restored.kept.contains(&again.kept[0]));
    }
}
