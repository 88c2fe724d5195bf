//! `comfygate env check`: every token-like value in dotenv files judged by the token diagnosis
//! (the same verdicts as `doctor` and the 401 a client gets), and drift: one key holding
//! different tokens in different files. Values are compared in memory; reports carry the
//! diagnosis' fingerprint only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::EnvFile;
use crate::auth::diagnosis::{Diagnosis, diagnose};
use crate::auth::password::is_bcrypt;
use crate::auth::secret::TOKEN_PREFIX;
use crate::store::{Store, StoreError};

/// Whether a value is meant as a token: a `cg_` token or a ComfyUI-Login hash, also when
/// pasted with spaces or a `Bearer ` scheme (the diagnosis then says it is malformed).
pub fn is_token_like(value: &str) -> bool {
    let v = value.trim();
    let v = match v.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => v[7..].trim_start(),
        _ => v,
    };
    v.starts_with(TOKEN_PREFIX) || is_bcrypt(v)
}

/// One token-like value found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The file.
    pub file: PathBuf,
    /// The key.
    pub key: String,
    /// 1-based line of the assignment.
    pub line: usize,
    /// The verdict (fingerprint, shape, verdict and its facts).
    #[serde(flatten)]
    pub diagnosis: Diagnosis,
    /// A dotenv reader uses the last assignment of a key; earlier ones are not used.
    pub used: bool,
}

/// One copy in a drift.
#[derive(Debug, Clone, Serialize)]
pub struct DriftCopy {
    /// The file.
    pub file: PathBuf,
    /// The line.
    pub line: usize,
    /// Which token it is.
    pub fingerprint: String,
    /// Whether it is accepted.
    pub valid: bool,
}

/// One key holding different tokens in different files.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// The key.
    pub key: String,
    /// Each file's copy (the value a reader uses).
    pub copies: Vec<DriftCopy>,
}

/// What `env check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every token-like value, file by file, in line order.
    pub findings: Vec<Finding>,
    /// Keys whose used values differ between files.
    pub drift: Vec<Drift>,
}

impl Report {
    /// Every used value valid and no drift.
    pub fn is_clean(&self) -> bool {
        self.drift.is_empty() && self.findings.iter().filter(|f| f.used).all(|f| f.diagnosis.is_valid())
    }
}

/// Judges the token-like values of `files` (path and text) at `now` (unix ms).
pub async fn check(store: &dyn Store, files: &[(PathBuf, String)], now: i64) -> Result<Report, StoreError> {
    let mut findings = Vec::new();
    // key → file → (secret, finding index) of the value a reader uses.
    let mut used: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for (file, text) in files {
        let parsed = EnvFile::parse(text);
        for entry in parsed.entries().iter().filter(|e| is_token_like(&e.value)) {
            let is_used = parsed.get(&entry.key).is_some_and(|last| last.line == entry.line);
            let diagnosis = diagnose(store, &entry.value, now).await?;
            if is_used {
                used.entry(entry.key.clone()).or_default().push((entry.value.clone(), findings.len()));
            }
            findings.push(Finding {
                file: file.clone(),
                key: entry.key.clone(),
                line: entry.line,
                diagnosis,
                used: is_used,
            });
        }
    }
    let drift = used
        .into_iter()
        .filter(|(_, copies)| copies.iter().any(|(secret, _)| *secret != copies[0].0))
        .map(|(key, copies)| Drift {
            key,
            copies: copies
                .iter()
                .map(|(_, at)| {
                    let f = &findings[*at];
                    DriftCopy {
                        file: f.file.clone(),
                        line: f.line,
                        fingerprint: f.diagnosis.fingerprint.clone(),
                        valid: f.diagnosis.is_valid(),
                    }
                })
                .collect(),
        })
        .collect();
    Ok(Report { findings, drift })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_like_values() {
        for yes in
            ["cg_abc", " cg_abc", "Bearer cg_abc", "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5k"]
        {
            assert!(is_token_like(yes), "{yes}");
        }
        for no in ["", "http://127.0.0.1:8080", "secret", "$2b$short", "xcg_abc"] {
            assert!(!is_token_like(no), "{no}");
        }
    }
}
