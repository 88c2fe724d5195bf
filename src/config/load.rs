//! Reading the configuration: TOML file, then `COMFYGATE_*` overrides, then validation.
//!
//! Environment keys use `__` for nesting: `COMFYGATE_SERVER__LISTEN=0.0.0.0:8080`,
//! `COMFYGATE_AUTH__SESSION_IDLE_TIMEOUT=1h`. Secrets can come from files:
//! `COMFYGATE_STORE__URL_FILE=/run/secrets/db_url`. Relative paths in the file (and the
//! default data folder) are relative to the file's folder; those from the environment to the
//! current one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http::Uri;
use toml::{Table, Value};

use super::{BackendConfig, Config, Secret};

/// `COMFYGATE_*` variables that are not configuration keys.
pub const RESERVED_ENV: &[&str] = &[
    "COMFYGATE_CONFIG",
    "COMFYGATE_LOG",
    "COMFYGATE_ADMIN_USER",
    "COMFYGATE_ADMIN_PASSWORD",
    "COMFYGATE_ADMIN_PASSWORD_FILE",
    "COMFYGATE_TEST_POSTGRES_URL",
];

/// Keys that may be read from a file with a `_FILE` variable.
const FILE_SECRETS: &[&str] = &["store.url"];

const ENV_PREFIX: &str = "COMFYGATE_";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {cause}{}", read_hint(cause))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (said once: not a `source`, which error chains would repeat).
        cause: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key is unknown or its value is invalid.
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        /// The file or environment variable the value came from.
        origin: String,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads the file (if any) and applies the `COMFYGATE_*` variables from `env`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let (table, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|cause| ConfigError::Read { path: path.to_owned(), cause })?;
                (parse_toml(&text, path)?, format!("config file {}", path.display()))
            }
            None => (Table::new(), "built-in defaults".to_owned()),
        };
        // Relative paths in a file mean the file's folder, wherever the command runs.
        let base = path.map(|p| {
            let folder = p.parent().filter(|f| !f.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf())
        });
        Config::from_table(table, origin, env, base.as_deref())
    }

    /// Parses a TOML document with no environment overrides (examples, tests).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table = parse_toml(text, Path::new("<text>"))?;
        Config::from_table(table, "config file <text>".to_owned(), std::iter::empty(), None)
    }

    fn from_table(
        mut table: Table,
        file_origin: String,
        env: impl IntoIterator<Item = (String, String)>,
        base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let overrides = env_overrides(env)?;
        for (key, (var, value)) in &overrides {
            insert(&mut table, key, value.clone()).map_err(|message| ConfigError::Invalid {
                origin: format!("environment variable {var}"),
                key: key.clone(),
                message,
            })?;
        }
        let origin_of = |key: &str| {
            overrides
                .iter()
                .find(|(k, _)| key == k.as_str() || key.starts_with(&format!("{k}.")))
                .map(|(_, (var, _))| format!("environment variable {var}"))
                .unwrap_or_else(|| file_origin.clone())
        };
        let mut config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = with_hint(&key, e.inner().message().trim().to_owned());
            ConfigError::Invalid { origin: origin_of(&key), key, message }
        })?;
        if config.backends.is_empty() {
            config.backends.push(BackendConfig::local());
        }
        if let Some(base) = base {
            // Values from the environment keep meaning the current folder.
            let from_env = |key: &str| origin_of(key) != file_origin;
            config.resolve_paths(base, &from_env);
        }
        config.validate().map_err(|(key, message)| ConfigError::Invalid { origin: origin_of(&key), key, message })?;
        Ok(config)
    }

    /// Makes the relative paths of the file (and the defaults) relative to `base` instead of
    /// the current folder; keys `from_env` are left as they are.
    fn resolve_paths(&mut self, base: &Path, from_env: &dyn Fn(&str) -> bool) {
        let under = |path: &mut PathBuf, key: &str| {
            if path.is_relative() && !from_env(key) {
                *path = base.join(&*path);
            }
        };
        under(&mut self.store.data_dir, "store.data_dir");
        if let Some(file) = self.audit.file.as_mut() {
            under(file, "audit.file");
        }
        if let Some(tls) = self.server.tls.as_mut() {
            under(&mut tls.cert_file, "server.tls.cert_file");
            under(&mut tls.key_file, "server.tls.key_file");
        }
        if let Some(url) = &self.store.url {
            let relative_sqlite = url
                .expose()
                .strip_prefix("sqlite://")
                .filter(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.starts_with(":memory:"));
            if let (Some(rest), false) = (relative_sqlite, from_env("store.url")) {
                self.store.url = Some(Secret::new(format!("sqlite://{}", base.join(rest).display())));
            }
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        let mut urls = std::collections::HashMap::new();
        let mut targets = std::collections::HashMap::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let at = |field: &str| format!("backends[{i}].{field}");
            let valid_name = !backend.name.is_empty()
                && backend.name.len() <= 64
                && backend.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err((at("name"), "use 1-64 letters, digits, '-' or '_'".to_owned()));
            }
            if !names.insert(backend.name.as_str()) {
                return Err((at("name"), format!("`{}` is used twice", backend.name)));
            }
            match (&backend.discover, backend.url.is_empty()) {
                (Some(_), false) => {
                    return Err((
                        at("discover"),
                        "give either `url` (one server) or `discover` (every address of a DNS name), not both"
                            .to_owned(),
                    ));
                }
                (None, true) => {
                    return Err((
                        at("url"),
                        "missing: give url = \"http://10.0.0.5:8188\" or discover = \"dns://comfyui-workers:8188\""
                            .to_owned(),
                    ));
                }
                (Some(target), true) => {
                    // One name discovered twice would get every worker twice.
                    if let Some(first) = targets.insert(target.to_string(), backend.name.as_str()) {
                        return Err((at("discover"), format!("`{target}` is already discovered by backend `{first}`")));
                    }
                    backend_settings(backend, &at)?;
                    continue;
                }
                (None, false) => {}
            }
            let example = "e.g. url = \"http://127.0.0.1:8188\"";
            let scheme = backend.url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("http") => {}
                Some("https") => {
                    return Err((
                        at("url"),
                        format!(
                            "`{}`: backends are reached over plain http:// (ComfyUI serves no TLS of its own): keep \
                             them on a private network, e.g. url = \"http://10.0.0.5:8188\", and put TLS in front of \
                             the gateway",
                            backend.url
                        ),
                    ));
                }
                _ => return Err((at("url"), format!("`{}` must start with http://, {example}", backend.url))),
            }
            let url = parse_base_url(&backend.url).map_err(|m| (at("url"), format!("{m}, {example}")))?;
            // One server listed twice would get twice its `max_inflight` and mix two monitors.
            let same_server = url.to_string().trim_end_matches('/').to_ascii_lowercase();
            if let Some(first) = urls.insert(same_server, backend.name.as_str()) {
                return Err((
                    at("url"),
                    format!("`{}` is already the URL of backend `{first}`: list each ComfyUI server once", backend.url),
                ));
            }
            backend_settings(backend, &at)?;
        }
        let discovery = &self.discovery;
        if discovery.interval < MIN_DISCOVERY_INTERVAL {
            return Err((
                "discovery.interval".to_owned(),
                "must be at least 100ms, e.g. interval = \"10s\"".to_owned(),
            ));
        }
        if discovery.scale_target.is_zero() {
            return Err(("discovery.scale_target".to_owned(), "must be greater than zero, e.g. \"60s\"".to_owned()));
        }
        for (pattern, _) in &self.scheduler.model_load_times {
            globset::Glob::new(pattern).map_err(|e| {
                (
                    "scheduler.model_load_times".to_owned(),
                    format!("model pattern `{pattern}`: {e}, e.g. \"flux1-dev*\" = \"60s\""),
                )
            })?;
        }
        if let Some(url) = &self.server.public_url {
            parse_base_url(url).map_err(|m| ("server.public_url".to_owned(), m))?;
        }
        if self.server.workers > MAX_WORKERS {
            return Err(("server.workers".to_owned(), format!("at most {MAX_WORKERS} (0: one per CPU)")));
        }
        self.validate_server()?;
        let s = &self.scheduler;
        if s.health_interval.is_zero() || s.health_timeout.is_zero() || s.capabilities_refresh.is_zero() {
            return Err(("scheduler.health_interval".to_owned(), "intervals must be greater than zero".to_owned()));
        }
        if s.unhealthy_after == 0 {
            return Err(("scheduler.unhealthy_after".to_owned(), "must be at least 1".to_owned()));
        }
        if s.dispatch_attempts == 0 {
            return Err(("scheduler.dispatch_attempts".to_owned(), "must be at least 1".to_owned()));
        }
        if s.max_dispatches < s.dispatch_attempts {
            return Err(("scheduler.max_dispatches".to_owned(), "must be at least dispatch_attempts".to_owned()));
        }
        let auth = &self.auth;
        if auth.session_idle_timeout.is_zero() || auth.session_absolute_timeout.is_zero() {
            return Err(("auth.session_idle_timeout".to_owned(), "must be greater than zero".to_owned()));
        }
        let cookie_ok = !auth.cookie_name.is_empty()
            && auth.cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !cookie_ok {
            return Err(("auth.cookie_name".to_owned(), "use letters, digits, '-' or '_'".to_owned()));
        }
        if auth.hash_concurrency == 0 {
            return Err(("auth.hash_concurrency".to_owned(), "must be at least 1".to_owned()));
        }
        if auth.min_password_length < 8 {
            return Err(("auth.min_password_length".to_owned(), "must be at least 8".to_owned()));
        }
        if auth.login_max_failures == 0 {
            return Err(("auth.login_max_failures".to_owned(), "must be at least 1".to_owned()));
        }
        if auth.revocation_poll_interval.is_zero() {
            return Err(("auth.revocation_poll_interval".to_owned(), "must be greater than zero".to_owned()));
        }
        for (i, route) in self.policy.user_routes.iter().enumerate() {
            crate::policy::RoutePolicy::with_user_routes(std::slice::from_ref(route))
                .map_err(|e| (format!("policy.user_routes[{i}]"), e.to_string()))?;
        }
        if self.audit.max_file_size.as_u64() < 4096 {
            return Err(("audit.max_file_size".to_owned(), "must be at least 4 KiB".to_owned()));
        }
        if self.audit.retention.is_zero() {
            return Err(("audit.retention".to_owned(), "must be greater than zero".to_owned()));
        }
        if let Err(e) = self.webhooks.check() {
            return Err(("webhooks".to_owned(), e));
        }
        let userdata = &self.userdata;
        if userdata.max_bytes_per_user.as_u64() == 0 {
            return Err(("userdata.max_bytes_per_user".to_owned(), "must be greater than zero".to_owned()));
        }
        if userdata.max_file_bytes.as_u64() == 0 {
            return Err(("userdata.max_file_bytes".to_owned(), "must be greater than zero".to_owned()));
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), (String, String)> {
        let server = &self.server;
        if let Some(metrics) = self.metrics.listen {
            let same_port = metrics.port() != 0 && metrics.port() == server.listen.port();
            let overlapping = metrics.ip() == server.listen.ip()
                || metrics.ip().is_unspecified()
                || server.listen.ip().is_unspecified();
            if same_port && overlapping {
                return Err((
                    "metrics.listen".to_owned(),
                    format!("{metrics} is the main listener's address (server.listen): use another port"),
                ));
            }
        }
        let timeouts = [
            ("first_byte_timeout", server.first_byte_timeout),
            ("header_read_timeout", server.header_read_timeout),
            ("idle_timeout", server.idle_timeout),
            ("http2_keepalive_interval", server.http2_keepalive_interval),
            ("body_rate_period", server.body_rate_period),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
            return Err((format!("server.{key}"), "must be greater than zero".to_owned()));
        }
        if server.max_connections == 0 {
            return Err(("server.max_connections".to_owned(), "must be at least 1".to_owned()));
        }
        if server.max_connections_per_address == 0 {
            return Err(("server.max_connections_per_address".to_owned(), "must be at least 1".to_owned()));
        }
        if server.max_websocket_message.as_u64() < MIN_WEBSOCKET_MESSAGE {
            return Err((
                "server.max_websocket_message".to_owned(),
                format!("must be at least {MIN_WEBSOCKET_MESSAGE} bytes"),
            ));
        }
        Ok(())
    }
}

/// The settings every backend entry has, with or without `url`.
fn backend_settings(backend: &BackendConfig, at: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
    if backend.max_inflight == 0 {
        return Err((at("max_inflight"), "must be at least 1".to_owned()));
    }
    if backend.connect_timeout.is_zero() || backend.response_timeout.is_zero() {
        return Err((at("connect_timeout"), "timeouts must be greater than zero".to_owned()));
    }
    for pattern in &backend.models {
        globset::Glob::new(pattern).map_err(|e| {
            (at("models"), format!("model pattern `{pattern}`: {e}, e.g. models = [\"flux1-dev*.safetensors\"]"))
        })?;
    }
    if backend.exclusive && backend.models.is_empty() {
        return Err((at("exclusive"), "an exclusive backend needs `models`, e.g. models = [\"sd3.5*\"]".to_owned()));
    }
    Ok(())
}

/// Resolving more often than this is a typo, and a load on the DNS server.
const MIN_DISCOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// ComfyUI's own client messages (`feature_flags`) take a few hundred bytes.
const MIN_WEBSOCKET_MESSAGE: u64 = 1024;

/// More request threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// Parses `http(s)://host[:port][/]` into a URI without path or query.
pub(crate) fn parse_base_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("`{url}` must not have a path or query"));
    }
    Ok(uri)
}

/// Collects `COMFYGATE_*` variables as dotted keys with TOML values.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, (String, Value)>, ConfigError> {
    let mut out = BTreeMap::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        if RESERVED_ENV.contains(&var.as_str()) || rest.is_empty() {
            continue;
        }
        let key = rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
        let file_key = key.strip_suffix("_file").filter(|k| FILE_SECRETS.contains(k));
        let (key, value) = match file_key {
            Some(secret_key) => {
                let text = std::fs::read_to_string(&raw).map_err(|e| ConfigError::Invalid {
                    origin: format!("environment variable {var}"),
                    key: secret_key.to_owned(),
                    message: format!("cannot read {raw}: {e}"),
                })?;
                (secret_key.to_owned(), Value::String(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            None => (key, env_value(&raw)),
        };
        out.insert(key, (var, value));
    }
    Ok(out)
}

/// An environment value as TOML: arrays, tables, booleans and numbers are parsed, the rest is a string.
fn env_value(raw: &str) -> Value {
    let looks_structured = raw.starts_with('[')
        || raw.starts_with('{')
        || raw == "true"
        || raw == "false"
        || (!raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()));
    if looks_structured {
        if let Ok(table) = format!("v = {raw}").parse::<Table>() {
            if let Some(value) = table.get("v") {
                return value.clone();
            }
        }
    }
    Value::String(raw.to_owned())
}

fn insert(table: &mut Table, key: &str, value: Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().ok_or_else(|| "empty key".to_owned())?;
    let mut current = table;
    for part in parts {
        let entry = current.entry(part.to_owned()).or_insert_with(|| Value::Table(Table::new()));
        current = entry.as_table_mut().ok_or_else(|| format!("`{part}` is not a section"))?;
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

fn parse_toml(text: &str, path: &Path) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: ")
        });
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        ConfigError::Syntax { path: path.to_owned(), message: format!("{}{message}", at.unwrap_or_default()) }
    })
}

/// What to do about a configuration file that cannot be read.
fn read_hint(cause: &std::io::Error) -> &'static str {
    match cause.kind() {
        std::io::ErrorKind::NotFound => {
            " (pass --config with the path of the gateway's configuration, or start from comfygate.example.toml)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (run as the user the gateway runs as, or make the file readable to it)"
        }
        _ => "",
    }
}

/// serde's words for a wrong value, with an example of a right one.
fn with_hint(key: &str, message: String) -> String {
    let numbers = ["expected usize", "expected u64", "expected u32", "expected u16", "expected i64"];
    if let Some(found) = numbers.iter().find(|n| message.contains(*n)) {
        return message.replace(found, "expected a whole number, e.g. 4 (no quotes)");
    }
    if message.contains("invalid socket address syntax") {
        return format!(
            "{message}: use an IP address and a port, e.g. \"127.0.0.1:8080\" (\"0.0.0.0:8080\" for every interface); host \
             names such as localhost are not accepted"
        );
    }
    if key.starts_with("backends") && message.contains("expected a sequence") {
        return format!(
            "{message}: give a list of tables; in TOML `[[backends]]` sections, in COMFYGATE_BACKENDS TOML's inline \
             syntax (not JSON): [{{name = \"gpu0\", url = \"http://10.0.0.5:8188\"}}]"
        );
    }
    message
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn every_error_names_the_key_and_shows_a_valid_value() {
        let backend = |extra: &str| format!("[[backends]]\nname = \"a\"\nurl = \"http://x:1\"\n{extra}");
        let cases: [(String, &[&str]); 11] = [
            (backend("models = [\"flux[\"]"), &["backends[0].models", "flux[", "flux1-dev*.safetensors"]),
            (backend("exclusive = true"), &["backends[0].exclusive", "needs `models`"]),
            ("[scheduler.model_load_times]\n\"a{\" = \"5s\"\n".to_owned(), &["scheduler.model_load_times", "a{"]),
            ("[server\nlisten = 1\n".to_owned(), &["line 1, column 8"]),
            ("[server]\nlisten = \"localhost:8080\"\n".to_owned(), &["server.listen", "\"127.0.0.1:8080\""]),
            (backend("max_inflight = \"two\""), &["backends[0].max_inflight", "whole number, e.g. 4"]),
            (
                "[[backends]]\nname = \"a\"\nurl = \"https://x:1\"\n".to_owned(),
                &["backends[0].url", "plain http://", "http://10.0.0.5:8188"],
            ),
            (
                "[[backends]]\nname = \"a\"\nurl = \"ftp://x:1\"\n".to_owned(),
                &["must start with http://,", "http://127.0.0.1:8188"],
            ),
            (
                format!("{}{}", backend(""), "[[backends]]\nname = \"b\"\nurl = \"http://X:1/\"\n"),
                &["backends[1].url", "already the URL of backend `a`"],
            ),
            ("[server]\ncolour = 1\n".to_owned(), &["server.colour", "expected one of"]),
            ("backends = 3\n".to_owned(), &["backends", "[{name = \"gpu0\""]),
        ];
        for (text, expected) in cases {
            let err = Config::from_toml(&text).unwrap_err().to_string();
            for part in expected {
                assert!(err.contains(part), "{text:?}: {err}");
            }
            assert!(!err.contains("https://") || text.contains("https://"), "never says https:// is fine: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        let json = Config::load(None, env(&[("COMFYGATE_BACKENDS", r#"[{"name":"a","url":"http://x:1"}]"#)]));
        let err = json.unwrap_err().to_string();
        assert!(err.contains("COMFYGATE_BACKENDS") && err.contains("not JSON"), "{err}");
        let missing = Config::load(Some(Path::new("/nonexistent/comfygate.toml")), env(&[])).unwrap_err();
        assert!(std::error::Error::source(&missing).is_none(), "the OS error is said once");
        assert!(missing.to_string().contains("--config"), "{missing}");
    }

    #[test]
    fn a_backend_has_exactly_one_of_url_or_a_dns_discover_target() {
        let entry = |lines: &str| Config::from_toml(&format!("[[backends]]\nname = \"w\"\n{lines}\n"));
        let good: [(&str, &str, u16); 5] = [
            ("discover = \"dns://workers.default.svc.cluster.local:8188\"", "workers.default.svc.cluster.local", 8188),
            ("discover = \"dns://workers\"", "workers", 8188),
            ("discover = \"DNS://Workers.Test.:9000\"", "workers.test.", 9000),
            ("discover = \"dns://gpu_pool-1.internal:1\"", "gpu_pool-1.internal", 1),
            (
                "discover = \"dns://w.test:65535\"\nmax_inflight = 3\nmodels = [\"flux*\"]\nexclusive = true",
                "w.test",
                65535,
            ),
        ];
        for (lines, host, port) in good {
            let config = entry(lines).unwrap_or_else(|e| panic!("{lines}: {e}"));
            let target = config.backends[0].discover.clone().unwrap();
            assert_eq!(
                (target.host.as_str(), target.port, config.backends[0].url.as_str()),
                (host, port, ""),
                "{lines}"
            );
        }
        let bad: [(&str, &[&str]); 14] = [
            ("", &["backends[0].url", "missing", "discover = \"dns://"]),
            ("url = \"http://x:1\"\ndiscover = \"dns://w\"", &["backends[0].discover", "not both"]),
            ("discover = \"http://w:8188\"", &["backends[0].discover", "must start with dns://"]),
            ("discover = \"srv://w\"", &["must start with dns://"]),
            ("discover = \"w.test:8188\"", &["must start with dns://"]),
            ("discover = \"dns://\"", &["not a DNS name"]),
            ("discover = \"dns://:8188\"", &["not a DNS name"]),
            ("discover = \"dns://w:0\"", &["port must be a number from 1 to 65535"]),
            ("discover = \"dns://w:99999\"", &["port must be a number"]),
            ("discover = \"dns://w:\"", &["port must be a number"]),
            ("discover = \"dns://w/path\"", &["without user, path or query"]),
            ("discover = \"dns://w?x=1\"", &["without user, path or query"]),
            ("discover = \"dns://10.0.0.5:8188\"", &["names an address", "url = \"http://10.0.0.5:8188\""]),
            ("discover = \"dns://bad..name\"", &["not a DNS name"]),
        ];
        for (lines, expected) in bad {
            let err = entry(lines).unwrap_err().to_string();
            for part in expected {
                assert!(err.contains(part), "{lines:?}: {err}");
            }
        }
        let twice = "[[backends]]\nname = \"a\"\ndiscover = \"dns://w\"\n[[backends]]\nname = \"b\"\ndiscover = \"dns://W:8188\"\n";
        let err = Config::from_toml(twice).unwrap_err().to_string();
        assert!(err.contains("backends[1].discover") && err.contains("already discovered by backend `a`"), "{err}");
        let err = entry("discover = \"dns://w\"\nexclusive = true").unwrap_err().to_string();
        assert!(err.contains("backends[0].exclusive"), "the entry's settings are checked too: {err}");
    }

    #[test]
    fn discovery_defaults_and_limits() {
        let c = Config::from_toml("").unwrap();
        assert_eq!((c.discovery.interval.as_secs(), c.discovery.scale_target.as_secs()), (10, 60));
        assert!(c.discovery.nameservers.is_empty(), "the system resolver by default");
        let c = Config::from_toml("[discovery]\ninterval = \"200ms\"\nnameservers = [\"127.0.0.1:5353\"]\n").unwrap();
        assert_eq!(c.discovery.nameservers[0].port(), 5353);
        for (text, key) in [
            ("[discovery]\ninterval = \"10ms\"\n", "discovery.interval"),
            ("[discovery]\nscale_target = \"0s\"\n", "discovery.scale_target"),
            ("[discovery]\nnameservers = [\"dns.example\"]\n", "discovery.nameservers"),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn empty_config_has_one_local_backend() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.backends[0].url, "http://127.0.0.1:8188");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn metrics_listener_is_off_by_default_set_by_env_and_not_the_main_address() {
        assert!(Config::load(None, env(&[])).unwrap().metrics.listen.is_none());
        let c = Config::load(None, env(&[("COMFYGATE_METRICS__LISTEN", "127.0.0.1:9464")])).unwrap();
        assert_eq!(c.metrics.listen.map(|a| a.port()), Some(9464));
        let clash = "[server]\nlisten = \"127.0.0.1:8188\"\n[metrics]\nlisten = \"0.0.0.0:8188\"\n";
        let err = Config::from_toml(clash).unwrap_err().to_string();
        assert!(err.contains("metrics.listen"), "{err}");
        let err = Config::from_toml("[metrics]\nlisten = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("metrics"), "{err}");
        assert!(Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9464\"\n").is_ok());
    }

    #[test]
    fn env_overrides_nested_keys_with_typed_values() {
        let c = Config::load(
            None,
            env(&[
                ("COMFYGATE_SERVER__LISTEN", "0.0.0.0:9000"),
                ("COMFYGATE_AUTH__SESSION_IDLE_TIMEOUT", "1h"),
                ("COMFYGATE_AUTH__LOGIN_MAX_FAILURES", "3"),
                ("COMFYGATE_BACKENDS", r#"[{name = "gpu0", url = "http://10.0.0.5:8188"}]"#),
                ("COMFYGATE_LOG", "debug"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.auth.session_idle_timeout.as_secs(), 3600);
        assert_eq!(c.auth.login_max_failures, 3);
        assert_eq!(c.backends[0].name, "gpu0");
    }

    #[test]
    fn unknown_env_key_is_an_error_naming_the_variable() {
        let err = Config::load(None, env(&[("COMFYGATE_SERVER__LISEN", "x")])).unwrap_err().to_string();
        assert!(err.contains("COMFYGATE_SERVER__LISEN"), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_the_key() {
        let err = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\ncolour = 1\n").unwrap_err().to_string();
        assert!(err.contains("server.colour") || err.contains("colour"), "{err}");
        assert!(err.contains("config file"), "{err}");
    }

    #[test]
    fn token_max_lifetime_may_be_never_and_then_tokens_default_to_90_days() {
        let c = Config::from_toml("[auth]\ntoken_max_lifetime = \"never\"\n").unwrap();
        assert_eq!(c.auth.token_max_lifetime, None);
        assert_eq!(c.auth.default_token_lifetime(), super::super::DEFAULT_TOKEN_LIFETIME);
        let c = Config::from_toml("[auth]\ntoken_max_lifetime = \"30d\"\n").unwrap();
        assert_eq!(c.auth.default_token_lifetime().as_secs(), 30 * 86400);
        let err = Config::from_toml("[auth]\ntoken_max_lifetime = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("auth.token_max_lifetime"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = Config::from_toml("[auth]\nsession_idle_timeout = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("auth.session_idle_timeout"), "{err}");
        let err = Config::from_toml("[[backends]]\nname = \"a\"\nurl = \"ftp://x\"\n").unwrap_err().to_string();
        assert!(err.contains("backends[0].url"), "{err}");
        let err = Config::from_toml(
            "[[backends]]\nname = \"a\"\nurl = \"http://x\"\n[[backends]]\nname = \"a\"\nurl = \"http://y\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("used twice"), "{err}");
        let err = Config::from_toml("[server]\nworkers = 100000\n").unwrap_err().to_string();
        assert!(err.contains("server.workers") && err.contains("at most 1024"), "{err}");
        assert_eq!(Config::from_toml("[server]\nworkers = 1\n").unwrap().server.workers, 1);
    }

    #[test]
    fn connection_limits_are_validated() {
        let c = Config::from_toml("").unwrap();
        assert_eq!((c.server.max_connections, c.server.max_connections_per_address), (8192, 256));
        assert_eq!(c.server.idle_timeout.as_secs(), 75);
        let err = Config::from_toml("[server]\nfirst_byte_timeout = \"0s\"\n").unwrap_err().to_string();
        assert!(err.contains("server.first_byte_timeout"), "{err}");
        let err = Config::from_toml("[server]\nmax_connections_per_address = 0\n").unwrap_err().to_string();
        assert!(err.contains("server.max_connections_per_address"), "{err}");
        let err = Config::from_toml("[server]\nmax_websocket_message = \"10B\"\n").unwrap_err().to_string();
        assert!(err.contains("server.max_websocket_message"), "{err}");
        let c = Config::from_toml("[server]\nmin_body_rate = \"0B\"\nidle_timeout = \"5s\"\n").unwrap();
        assert_eq!((c.server.min_body_rate.as_u64(), c.server.idle_timeout.as_secs()), (0, 5));
    }

    #[test]
    fn user_data_limits_must_be_positive() {
        let err = Config::from_toml("[userdata]\nmax_bytes_per_user = \"0B\"\n").unwrap_err().to_string();
        assert!(err.contains("userdata.max_bytes_per_user"), "{err}");
        let err = Config::from_toml("[userdata]\nmax_file_bytes = 0\n").unwrap_err().to_string();
        assert!(err.contains("userdata.max_file_bytes"), "{err}");
        let c = Config::from_toml("[userdata]\nmax_bytes_per_user = \"10MiB\"\n").unwrap();
        assert_eq!(c.userdata.max_bytes_per_user.as_u64(), 10 * 1024 * 1024);
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://u:p@db/x\n").unwrap();
        let c = Config::load(None, env(&[("COMFYGATE_STORE__URL_FILE", file.to_str().unwrap())])).unwrap();
        assert_eq!(c.store.database_url(), "postgres://u:p@db/x");
        assert!(!format!("{c:?}").contains("u:p@"));
    }

    #[test]
    fn policy_user_routes_are_validated() {
        let c = Config::from_toml("[policy]\nuser_routes = [\"GET /api/jobs\", \"POST /my/custom/**\"]\n").unwrap();
        assert_eq!(c.policy.user_routes.len(), 2);
        let err = Config::from_toml("[policy]\nuser_routes = [\"GET /ok\", \"/api/jobs\"]\n").unwrap_err().to_string();
        assert!(err.contains("policy.user_routes[1]"), "{err}");
        let err = Config::from_toml("[policy]\nadmin_routes = []\n").unwrap_err().to_string();
        assert!(err.contains("admin_routes"), "{err}");
    }

    #[test]
    fn broken_toml_is_a_syntax_error() {
        let err = Config::from_toml("[server\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
    }
}
