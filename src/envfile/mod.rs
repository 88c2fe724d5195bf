//! Credentials in dotenv files (`comfygate env write` and `env check`): reading and editing a
//! `.env` file line by line so that everything but the keys written stays byte for byte
//! (`edit.rs`), the private atomic replace (`write.rs`), finding `.env` files under folders
//! (`scan.rs`), and judging the tokens they hold, with drift between copies (`check.rs`).
//! Secrets are held in memory only: nothing here prints, logs or returns one in a report.

mod check;
mod edit;
mod scan;
mod write;

use std::path::PathBuf;

pub use check::{Drift, DriftCopy, Finding, Report, check, is_token_like};
pub use edit::{Entry, EnvFile, Placement};
pub use scan::{MAX_DEPTH, find_env_files, is_env_file_name, read_text};
pub use write::{read, write_private};

/// What can go wrong reading or writing a dotenv file.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The path is a symbolic link: writing through it could replace a file elsewhere.
    #[error("{0} is a symbolic link: refusing to write through it (give the file it points to)")]
    Symlink(PathBuf),
    /// The path is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The file is not UTF-8 text.
    #[error("{0} is not UTF-8 text")]
    NotText(PathBuf),
    /// The folder that would hold the file does not exist.
    #[error("the folder of {0} does not exist")]
    NoFolder(PathBuf),
    /// Reading or writing failed (the cause is its source).
    #[error("{path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl EnvFileError {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        EnvFileError::Io { path: path.to_path_buf(), source }
    }
}
