//! What is already on disk for a manifest entry, and hashing files.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::manifest::ModelFile;

/// Read size for hashing: large enough that a 20 GB file is not a million system calls.
const CHUNK: usize = 1 << 20;

/// A manifest entry's files on disk (by size only; hashing is separate, and slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDisk {
    /// The final file has the manifest's size.
    Present,
    /// The final file has another size (bytes).
    WrongSize(u64),
    /// No final file; a partial of this many bytes (0: none).
    Partial(u64),
}

impl OnDisk {
    /// Looks at `file`'s final and partial files under `models_dir`.
    pub fn of(file: &ModelFile, models_dir: &Path) -> std::io::Result<Self> {
        match std::fs::metadata(file.dest(models_dir)) {
            Ok(meta) if meta.len() == file.size => return Ok(Self::Present),
            Ok(meta) => return Ok(Self::WrongSize(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self::Partial(partial_len(file, models_dir)?))
    }
}

/// The partial's length, 0 when there is none.
pub fn partial_len(file: &ModelFile, models_dir: &Path) -> std::io::Result<u64> {
    match std::fs::metadata(file.part(models_dir)) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The first `limit` bytes of `path` fed to a hasher (blocking), calling `progress` per chunk;
/// the hasher and the bytes read (fewer than `limit` when the file is shorter).
pub fn hash_prefix(path: &Path, limit: u64, mut progress: impl FnMut(u64)) -> std::io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut reader = std::fs::File::open(path)?.take(limit);
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, read));
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        read += n as u64;
        progress(n as u64);
    }
}

/// The whole file's sha256 as lowercase hex (blocking).
pub fn hash_file(path: &Path, progress: impl FnMut(u64)) -> std::io::Result<String> {
    let (hasher, _) = hash_prefix(path, u64::MAX, progress)?;
    Ok(hex(hasher))
}

/// A finished hasher as lowercase hex.
pub fn hex(hasher: Sha256) -> String {
    use std::fmt::Write;
    hasher.finalize().iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
