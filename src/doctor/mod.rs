//! `comfygate doctor`: the whole chain checked in one command, one line per check with a
//! remedy for each failure. The checks read: they create, migrate and change nothing.
//!
//! In order: the configuration ([`local`]), the store, its data folder and an admin, the
//! token given ([`local::token`]), each backend ([`remote::backend`]), a workflow's needs
//! ([`workflow`]), then the running gateway and, when asked, a test job through it
//! ([`remote::gateway`]). A check that needs something that failed before it is skipped with a
//! warning saying so. Every network call has a deadline ([`remote::TIMEOUT`]).

pub mod local;
pub mod remote;
pub mod workflow;

use serde::Serialize;

use crate::config::{Config, ConfigError};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Pass,
    /// It could not be made, or something deserves attention.
    Warn,
    /// It failed.
    Fail,
}

impl Status {
    /// The line's mark.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`store`, `backend sim: reachable`, ...).
    pub name: String,
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Pass, detail: detail.into(), remedy: None }
    }

    /// A failed check and its remedy.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Fail, detail: detail.into(), remedy: Some(remedy.into()) }
    }

    /// A warning and its remedy.
    pub fn warn(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Warn, detail: detail.into(), remedy: Some(remedy.into()) }
    }
}

/// Everything the doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// 0 when every check passed, 1 when one failed, 2 when some only warned.
    pub fn exit_code(&self) -> u8 {
        if self.checks.iter().any(|c| c.status == Status::Fail) {
            1
        } else if self.checks.iter().any(|c| c.status == Status::Warn) {
            2
        } else {
            0
        }
    }

    /// One line per check (`✓ name: detail`), remedies indented below.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{} {}: {}\n", c.status.mark(), c.name, c.detail));
            if let Some(remedy) = &c.remedy {
                out.push_str(&format!("    → {remedy}\n"));
            }
        }
        out
    }
}

/// What to check beyond the configuration, store and backends.
#[derive(Default, Clone)]
pub struct Options {
    /// A secret to diagnose (never shown).
    pub token: Option<String>,
    /// A workflow file (API or UI format) to check against the backends.
    pub workflow: Option<std::path::PathBuf>,
    /// Run a job without models through the running gateway.
    pub run_test_job: bool,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("workflow", &self.workflow)
            .field("run_test_job", &self.run_test_job)
            .finish()
    }
}

/// Runs every check on the configuration as `serve` would have loaded it.
pub async fn run(config: Result<Config, ConfigError>, options: &Options) -> Report {
    let mut checks = Vec::new();
    let config = match config {
        Ok(config) => {
            checks.push(Check::pass("configuration", "valid"));
            config
        }
        Err(e) => {
            checks.push(Check::fail(
                "configuration",
                error_chain(&e),
                "fix the configuration file or COMFYGATE_* variable named; `serve` refuses to start with it",
            ));
            return Report { checks };
        }
    };
    let store = local::store(&config, &mut checks).await;
    let identity = match (&store, &options.token) {
        (Some(store), Some(token)) => local::token(store.as_ref(), token, &mut checks).await,
        (None, Some(_)) => {
            checks.push(Check::warn("token", "not diagnosed: the store is not usable", "fix the store first"));
            None
        }
        _ => None,
    };
    let client = remote::client(&config);
    let mut capabilities = Vec::new();
    for entry in &config.backends {
        // A `discover` entry is no URL: its workers are what its DNS name resolves to now.
        let backends = match &entry.discover {
            Some(target) => remote::discovered(&config, entry, target, &mut checks).await,
            None => vec![entry.clone()],
        };
        for backend in &backends {
            if let Some(caps) = remote::backend(&client, backend, &mut checks).await {
                capabilities.push((backend.name.clone(), caps));
            }
        }
    }
    if let Some(path) = &options.workflow {
        match std::fs::read_to_string(path) {
            Ok(text) => workflow::check(&text, &capabilities, &mut checks),
            Err(e) => checks.push(Check::fail("workflow", format!("{}: {e}", path.display()), "give a readable file")),
        }
    }
    let running = remote::gateway(&client, &config, options.token.as_deref(), identity.as_ref(), &mut checks).await;
    if options.run_test_job {
        if running {
            remote::test_job(&client, &config, options.token.as_deref(), &mut checks).await;
        } else {
            checks.push(Check::warn(
                "test job",
                "skipped: the gateway is not running",
                "start it with `comfygate serve`",
            ));
        }
    }
    if let Some(store) = store {
        store.close().await;
    }
    Report { checks }
}

/// An error and its causes, as the CLI prints them (`a: b: c`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_counts_failures_then_warnings() {
        let pass = Check::pass("a", "ok");
        let warn = Check::warn("b", "skipped", "give a token");
        let fail = Check::fail("c", "down", "start it");
        assert_eq!(Report { checks: vec![pass.clone()] }.exit_code(), 0);
        assert_eq!(Report { checks: vec![pass.clone(), warn.clone()] }.exit_code(), 2);
        assert_eq!(Report { checks: vec![warn, fail, pass] }.exit_code(), 1);
    }

    #[test]
    fn text_has_one_line_per_check_and_remedies_below() {
        let r = Report { checks: vec![Check::pass("a", "ok"), Check::fail("b", "down", "start it")] };
        assert_eq!(r.text(), "✓ a: ok\n✗ b: down\n    → start it\n");
    }

    #[test]
    fn options_never_show_the_token() {
        let o = Options { token: Some("cg_secret".into()), workflow: None, run_test_job: false };
        assert!(!format!("{o:?}").contains("cg_secret"));
    }
}
