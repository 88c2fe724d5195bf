//! Configuration: defaults → TOML file → `COMFYGATE_*` environment, validated once at start-up.
//!
//! Unknown keys and invalid values are errors that name the key; secrets never appear in `Debug`.

mod load;
pub mod priority;
mod secret;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use ipnet::IpNet;
use serde::Deserialize;

pub use load::{ConfigError, RESERVED_ENV};
pub use secret::Secret;

/// The whole configuration of one gateway process.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The listening side: address, TLS, proxies in front of the gateway.
    pub server: ServerConfig,
    /// Where users, tokens and sessions live.
    pub store: StoreConfig,
    /// Accounts, sessions and login protection.
    pub auth: AuthConfig,
    /// The ComfyUI servers behind the gateway.
    pub backends: Vec<BackendConfig>,
    /// How `[[backends]] discover` entries are resolved, and what autoscalers are told.
    pub discovery: DiscoveryConfig,
    /// Health checks and job dispatch across backends.
    pub scheduler: SchedulerConfig,
    /// Which ComfyUI routes normal users may reach.
    pub policy: PolicyConfig,
    /// Saved workflows and settings, kept by the gateway per user.
    pub userdata: UserDataConfig,
    /// What one user may make the gateway hold (defaults; admins set per-user overrides).
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// The Prometheus endpoint's own listener.
    pub metrics: MetricsConfig,
    /// The audit log (a JSON line per security event, to a file and the store).
    pub audit: AuditConfig,
    /// Webhooks: where job events may be sent, and how hard the gateway tries.
    pub webhooks: WebhooksConfig,
}

/// `[webhooks]`: job events POSTed to the hosts admins allow (none by default: refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Destinations: `host`, `host:port` or `*.domain`. A private, loopback or backend address
    /// is reached only through an exact (non-wildcard) entry.
    pub allowed_hosts: Vec<String>,
    /// How long a delivery is retried from the event on.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long one attempt may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The first retry delay (doubling on each failure).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// The longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl WebhooksConfig {
    /// Whether the section is usable: every `allowed_hosts` entry is `host`, `host:port` or
    /// `*.domain`, and the durations make sense.
    pub fn check(&self) -> Result<(), String> {
        for entry in &self.allowed_hosts {
            let rest = entry.trim().strip_prefix("*.").unwrap_or(entry.trim());
            let usable = !rest.is_empty()
                && !rest.contains(['/', '@', '?', '#', '*'])
                && url::Url::parse(&format!("http://{rest}/")).is_ok_and(|u| u.host_str().is_some_and(|h| h != "."));
            if !usable {
                return Err(format!("allowed_hosts: {entry:?} is not host, host:port or *.domain"));
            }
        }
        if self.timeout.is_zero() || self.retry_base.is_zero() || self.max_age.is_zero() {
            return Err("timeout, retry_base and max_age must be greater than zero".to_owned());
        }
        if self.retry_max < self.retry_base {
            return Err("retry_max must be at least retry_base".to_owned());
        }
        Ok(())
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
        }
    }
}

/// `[metrics]`: `/metrics` is always served to admins on the main listener; `listen` adds a
/// listener that serves only `/metrics`, without authentication (bind it to loopback or a
/// monitoring network). Off by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where the unauthenticated metrics listener binds, e.g. `127.0.0.1:9464`.
    pub listen: Option<SocketAddr>,
}

/// The audit log: `<data_dir>/audit.jsonl` (or `file`), rotated by size, and the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The file audit lines are appended to; default `<store.data_dir>/audit.jsonl`.
    pub file: Option<PathBuf>,
    /// Size past which the file is rotated (`audit.jsonl` → `audit.jsonl.1` …).
    pub max_file_size: ByteSize,
    /// Rotated files kept (`audit.jsonl.1` … `audit.jsonl.<keep>`).
    pub keep: usize,
    /// How long audit events are kept in the store.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Identical refusals within this window are one line plus a count (`0s`: one line each).
    #[serde(with = "humantime_serde")]
    pub repeat_window: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            max_file_size: ByteSize::mib(64),
            keep: 10,
            retention: Duration::from_secs(90 * 24 * 3600),
            repeat_window: Duration::from_secs(10),
        }
    }
}

impl AuditConfig {
    /// The audit file, for a data folder.
    pub fn file_in(&self, data_dir: &std::path::Path) -> PathBuf {
        self.file.clone().unwrap_or_else(|| data_dir.join("audit.jsonl"))
    }
}

/// Per-user limits: the defaults for every user (`comfygate user limits` overrides them for
/// one). A count of 0 means no limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Jobs one user may have waiting in the gateway's queue.
    pub max_waiting: u64,
    /// Jobs one user may have on backends (dispatched or running) at once.
    pub max_running: u64,
    /// Submissions one user may make in any hour.
    pub jobs_per_hour: u64,
    /// Largest workflow (the `POST /prompt` body as forwarded).
    pub max_workflow: ByteSize,
    /// Largest upload; 0: `server.max_request_body`.
    pub max_upload: ByteSize,
    /// Highest priority class a user may ask for (`extra_data.priority`; ComfyUI's
    /// `front: true` asks for it).
    pub max_priority: crate::config::priority::Priority,
    /// Class of jobs that ask for none.
    pub default_priority: crate::config::priority::Priority,
    /// GPU seconds (the usage ledger's run time) one user's jobs may use per UTC day.
    pub gpu_seconds_per_day: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_waiting: 1000,
            max_running: 0,
            jobs_per_hour: 0,
            max_workflow: ByteSize::mib(4),
            max_upload: ByteSize::b(0),
            max_priority: crate::config::priority::Priority::Normal,
            default_priority: crate::config::priority::Priority::Normal,
            gpu_seconds_per_day: 0,
        }
    }
}

/// Which ComfyUI routes normal users may reach beyond the built-in allow-list.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// More routes for users, as `"METHOD /path"` (`{name}` is one segment, `**` any rest;
    /// `/x` and `/api/x` are the same route).
    pub user_routes: Vec<String>,
}

/// Saved workflows and settings (`/userdata`, `/settings`), kept by the gateway per user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserDataConfig {
    /// Disk space one user's files may take, all together.
    pub max_bytes_per_user: ByteSize,
    /// Largest single file accepted (also bounded by `server.max_request_body`).
    pub max_file_bytes: ByteSize,
}

impl Default for UserDataConfig {
    fn default() -> Self {
        Self { max_bytes_per_user: ByteSize::gib(1), max_file_bytes: ByteSize::mib(64) }
    }
}

/// Health checks and job dispatch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How often each backend's `/system_stats` is checked.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Time allowed for a health check.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Failed checks in a row before a backend is taken out.
    pub unhealthy_after: u32,
    /// How often node classes and model files are re-read from `/object_info`.
    #[serde(with = "humantime_serde")]
    pub capabilities_refresh: Duration,
    /// Different backends a job is offered to when each answers its dispatch with a server
    /// error (5xx) before the job fails with that error. A 5xx to one job says nothing about
    /// the backend's health.
    pub dispatch_attempts: u32,
    /// Dispatches of one job in all (a backend that dies holding it, refusals, lost
    /// connections) before it fails: no job goes round without bound.
    pub max_dispatches: u32,
    /// How long ended jobs (their records and history entries) are kept.
    #[serde(with = "humantime_serde")]
    pub job_retention: Duration,
    /// Half-life of the GPU time that fair share remembers: a user who used the GPUs an hour
    /// ago (at the default) counts half as busy as one who used them just now.
    #[serde(with = "humantime_serde")]
    pub fair_share_half_life: Duration,
    /// The longest the first job in fair order may be passed over by backends that keep other
    /// models loaded (jobs needing no model swap going first): after that it, and any job that
    /// came ahead of it in fair order since, takes the next backend that can run it. Zero:
    /// strict fair order.
    #[serde(with = "humantime_serde")]
    pub max_extra_wait: Duration,
    /// What loading a model is taken to cost before the gateway has measured it.
    #[serde(with = "humantime_serde")]
    pub model_load_time: Duration,
    /// Per-model defaults (glob on the model file name, e.g. `"flux1-dev*" = "60s"`), before
    /// measurements take over; the first matching pattern wins.
    #[serde(default, with = "load_times")]
    pub model_load_times: Vec<(String, Duration)>,
    /// How long a workflow whose run time is not measured yet is taken to run.
    #[serde(with = "humantime_serde")]
    pub default_run_time: Duration,
}

/// `{"glob" = "30s", ...}`, kept in file order (the first matching pattern wins).
mod load_times {
    use std::time::Duration;

    use serde::Deserializer;
    use serde::de::{MapAccess, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Duration)>, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(String, Duration)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table of model file patterns and durations, e.g. \"flux1-dev*\" = \"60s\"")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((pattern, text)) = map.next_entry::<String, String>()? {
                    let time = humantime::parse_duration(&text)
                        .map_err(|e| serde::de::Error::custom(format!("model_load_times.{pattern}: {e}")))?;
                    out.push((pattern, time));
                }
                Ok(out)
            }
        }
        d.deserialize_map(Pairs)
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            capabilities_refresh: Duration::from_secs(60),
            dispatch_attempts: 2,
            max_dispatches: 10,
            job_retention: Duration::from_secs(7 * 24 * 3600),
            fair_share_half_life: Duration::from_secs(3600),
            max_extra_wait: Duration::from_secs(120),
            model_load_time: Duration::from_secs(30),
            model_load_times: Vec::new(),
            default_run_time: Duration::from_secs(15),
        }
    }
}

/// The listening side of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The address users type, e.g. `https://comfy.example.com`; used for origin checks.
    pub public_url: Option<String>,
    /// Proxies whose `X-Forwarded-For`/`-Proto`/`-Host` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Serve HTTPS directly with these PEM files.
    pub tls: Option<TlsConfig>,
    /// Largest request body forwarded to a backend (uploads), checked while streaming.
    pub max_request_body: ByteSize,
    /// Time allowed for a new connection's first byte (a silent socket is closed then).
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Time allowed for a request's headers; for a connection's first request it counts from
    /// its first byte and covers the TLS handshake and the HTTP/1-or-2 detection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed (HTTP/1 keep-alive
    /// and HTTP/2 alike).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often an HTTP/2 client is pinged; one that does not answer within as long again is
    /// disconnected.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// Slowest request body accepted, in bytes per second, measured over each
    /// `body_rate_period` the gateway waits for it (0: no minimum).
    pub min_body_rate: ByteSize,
    /// The window `min_body_rate` is measured over; also the grace a body has to start.
    #[serde(with = "humantime_serde")]
    pub body_rate_period: Duration,
    /// Client connections open at once; more are answered 503 (also lowered to fit the open
    /// file limit).
    pub max_connections: usize,
    /// Client connections open at once from one address (the TCP peer's); more are answered 429.
    pub max_connections_per_address: usize,
    /// Largest message (and frame) a client may send on a WebSocket the gateway answers (`/ws`).
    pub max_websocket_message: ByteSize,
    /// Threads serving requests; 0: one per CPU available to the process (or
    /// `TOKIO_WORKER_THREADS`). With one, the single-threaded scheduler is used.
    pub workers: usize,
    /// At SIGTERM/SIGINT, time open requests get to finish (an upload under way, a download)
    /// before the gateway exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            trusted_proxies: Vec::new(),
            tls: None,
            max_request_body: ByteSize::gib(2),
            first_byte_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            http2_keepalive_interval: Duration::from_secs(20),
            min_body_rate: ByteSize::kib(1),
            body_rate_period: Duration::from_secs(20),
            max_connections: 8192,
            max_connections_per_address: 256,
            max_websocket_message: ByteSize::mib(1),
            workers: 0,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// PEM certificate chain and private key for HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Where the gateway keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Folder for the embedded SQLite database (created if missing).
    pub data_dir: PathBuf,
    /// `sqlite://path` or `postgres://...`; defaults to `sqlite://<data_dir>/comfygate.db`.
    pub url: Option<Secret>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("comfygate-data"), url: None }
    }
}

impl StoreConfig {
    /// The database URL to open.
    pub fn database_url(&self) -> String {
        match &self.url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("comfygate.db").display()),
        }
    }
}

/// Accounts, sessions and login protection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A session unused this long ends.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// A session ends this long after login, used or not.
    #[serde(with = "humantime_serde")]
    pub session_absolute_timeout: Duration,
    /// Name of the session cookie.
    pub cookie_name: String,
    /// Failed logins for one account from one client address before a lockout starts (an
    /// address gets four times as many over all accounts, an account four times as many from
    /// addresses it has not logged in from).
    pub login_max_failures: u32,
    /// First lockout; each further failure doubles it up to `login_lockout_max`.
    #[serde(with = "humantime_serde")]
    pub login_lockout: Duration,
    /// Longest lockout.
    #[serde(with = "humantime_serde")]
    pub login_lockout_max: Duration,
    /// Shortest password accepted for new passwords.
    pub min_password_length: usize,
    /// Password hashes computed at once (each takes ~19 MiB and a core for ~30 ms).
    pub hash_concurrency: usize,
    /// How often a gateway looks for revocations made by other processes (CLI, replicas).
    #[serde(with = "humantime_serde")]
    pub revocation_poll_interval: Duration,
    /// A session younger than this may create API tokens without re-entering the password.
    #[serde(with = "humantime_serde")]
    pub token_reauth_window: Duration,
    /// Longest lifetime of a token a non-admin creates, and the default lifetime of every new
    /// token; `"never"` lets tokens live forever (and then the default is 90 days).
    #[serde(deserialize_with = "duration_or_never")]
    pub token_max_lifetime: Option<Duration>,
}

/// The cookie holding the login form's CSRF token (set before login, on `/login` only).
pub const LOGIN_CSRF_COOKIE: &str = "comfygate_login_csrf";

/// The default token lifetime when `token_max_lifetime` is `never`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

impl AuthConfig {
    /// Every cookie the gateway sets: a backend may never set or clear these.
    pub fn gateway_cookies(&self) -> [&str; 2] {
        [&self.cookie_name, LOGIN_CSRF_COOKIE]
    }

    /// The lifetime a token gets when its creator names none.
    pub fn default_token_lifetime(&self) -> Duration {
        self.token_max_lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME)
    }
}

/// A humantime duration, or `"never"` (or `"0s"`) for none.
fn duration_or_never<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let duration = humantime::parse_duration(text.trim()).map_err(serde::de::Error::custom)?;
    Ok((!duration.is_zero()).then_some(duration))
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_idle_timeout: Duration::from_secs(24 * 3600),
            session_absolute_timeout: Duration::from_secs(7 * 24 * 3600),
            cookie_name: "comfygate_session".to_owned(),
            login_max_failures: 5,
            login_lockout: Duration::from_secs(30),
            login_lockout_max: Duration::from_secs(15 * 60),
            min_password_length: 10,
            hash_concurrency: 2,
            revocation_poll_interval: Duration::from_millis(100),
            token_reauth_window: Duration::from_secs(5 * 60),
            token_max_lifetime: Some(DEFAULT_TOKEN_LIFETIME),
        }
    }
}

/// `[discovery]`: how `[[backends]] discover` entries are resolved (read at start only), and
/// the wait `comfygate_desired_backends` aims for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// How often each `discover` name is resolved again.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// DNS servers to ask (`"ip:port"`); none: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// How long the queued and running work should take to drain: `comfygate_desired_backends`
    /// is that work divided by this.
    #[serde(with = "humantime_serde")]
    pub scale_target: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(10), nameservers: Vec::new(), scale_target: Duration::from_secs(60) }
    }
}

/// The port a `discover` name's workers listen on when it names none (ComfyUI's).
pub const DEFAULT_DISCOVER_PORT: u16 = 8188;

/// A `discover = "dns://host[:port]"` target: every A and AAAA record of `host` is a backend
/// listening on `port`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct DnsTarget {
    /// The DNS name resolved, lowercase: as the system resolves names (its search domains
    /// tried for a short one), unless it ends with `.` (fully qualified).
    pub host: String,
    /// The port of every worker.
    pub port: u16,
}

impl std::fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dns://{}:{}", self.host, self.port)
    }
}

impl TryFrom<String> for DnsTarget {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::str::FromStr for DnsTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let example = "e.g. discover = \"dns://comfyui-workers.default.svc.cluster.local:8188\"";
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("dns") => rest,
            _ => return Err(format!("`{text}` must start with dns://, {example}")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!("`{text}` must be dns://host[:port], without user, path or query, {example}"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("`{text}`: the port must be a number from 1 to 65535 (default {DEFAULT_DISCOVER_PORT})")
                })?;
                (host, port)
            }
            None => (rest, DEFAULT_DISCOVER_PORT),
        };
        let bare = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
            return Err(format!("`{text}`: `{host}` is not a DNS name, {example}"));
        }
        if bare.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!("`{text}` names an address, not a DNS name: use url = \"http://{bare}:{port}\""));
        }
        Ok(Self { host: host.to_ascii_lowercase(), port })
    }
}

/// One ComfyUI server, or (with `discover`) every server a DNS name resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A short name used in logs and errors (a discovered backend's is
    /// `{name}-{address with dashes}`).
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8188`; empty for a `discover` entry.
    #[serde(default)]
    pub url: String,
    /// Instead of `url`: `dns://host[:port]`, each A/AAAA record of `host` a backend with this
    /// entry's other settings (see docs/discovery.md).
    #[serde(default)]
    pub discover: Option<DnsTarget>,
    /// Time allowed to open a TCP connection.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time allowed for response headers once the request body is sent.
    #[serde(with = "humantime_serde", default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// Jobs handed to this backend at once (running plus waiting in its own queue).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Free-form labels (shown in `/system_stats` and logs).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Model files this backend is meant for (globs on the file name, e.g.
    /// `"flux1-dev*.safetensors"`): jobs using them prefer it, and it prefers them.
    #[serde(default)]
    pub models: Vec<String>,
    /// Takes only jobs whose every model file matches `models`.
    #[serde(default)]
    pub exclusive: bool,
}

fn default_max_inflight() -> usize {
    2
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(120)
}

impl BackendConfig {
    /// Where it is, as shown to operators: its URL, or `dns://host:port` for a `discover` entry.
    pub fn shown_target(&self) -> String {
        match &self.discover {
            Some(target) => target.to_string(),
            None => self.url.clone(),
        }
    }

    /// The default backend: a ComfyUI on this machine's standard port.
    pub fn local() -> Self {
        Self {
            name: "local".to_owned(),
            url: "http://127.0.0.1:8188".to_owned(),
            discover: None,
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            max_inflight: default_max_inflight(),
            labels: Vec::new(),
            models: Vec::new(),
            exclusive: false,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `comfygate=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".to_owned(), format: LogFormat::Text }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
