//! The checks made over the network: each backend as ComfyUI answers it, and the running
//! gateway as a client sees it. Every call has a deadline of [`TIMEOUT`]; error texts are
//! shown without URLs (a backend URL may carry credentials).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

use super::Check;
use crate::auth::diagnosis::TokenFacts;
use crate::backends::capabilities::Capabilities;
use crate::backends::discovery;
use crate::config::{BackendConfig, Config, DnsTarget};
use crate::store::Role;

/// How long any one network call may take.
pub const TIMEOUT: Duration = Duration::from_secs(4);

/// The HTTP client of every check: deadlines, no redirects, the gateway's own certificate
/// trusted when it serves TLS.
pub fn client(config: &Config) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("comfygate-doctor/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = &config.server.tls {
        if let Some(cert) = std::fs::read(&tls.cert_file).ok().and_then(|pem| reqwest::Certificate::from_pem(&pem).ok())
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().unwrap_or_default()
}

fn shown(e: reqwest::Error) -> String {
    let e = e.without_url();
    super::error_chain(&e)
}

async fn get_json(client: &reqwest::Client, url: &str, bearer: Option<&str>) -> Result<(u16, Value), String> {
    let mut request = client.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(shown)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(shown)?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A backend: reachable, its ComfyUI version, devices and free VRAM, and its node count; its
/// capabilities when it listed them.
pub async fn backend(
    client: &reqwest::Client,
    backend: &BackendConfig,
    checks: &mut Vec<Check>,
) -> Option<Capabilities> {
    let name = format!("backend {}", backend.name);
    let base = backend.url.trim_end_matches('/');
    let stats = match get_json(client, &format!("{base}/system_stats"), None).await {
        Ok((200, stats)) => stats,
        Ok((status, _)) => {
            let remedy = "is this URL a ComfyUI server? check the backend's `url`";
            checks.push(Check::fail(&name, format!("/system_stats answered HTTP {status}"), remedy));
            return None;
        }
        Err(e) => {
            let remedy = "start ComfyUI there, or fix the backend's `url` (and any firewall between)";
            checks.push(Check::fail(&name, format!("unreachable: {e}"), remedy));
            return None;
        }
    };
    let version = stats["system"]["comfyui_version"].as_str().unwrap_or("unknown version");
    let devices: Vec<String> = stats["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let label = d["name"].as_str().or(d["type"].as_str()).unwrap_or("device");
            match (d["vram_free"].as_u64(), d["vram_total"].as_u64()) {
                (Some(free), Some(total)) if total > 0 => format!("{label}: {} free of {}", gib(free), gib(total)),
                _ => label.to_owned(),
            }
        })
        .collect();
    let devices = if devices.is_empty() { "no devices listed".to_owned() } else { devices.join("; ") };
    checks.push(Check::pass(&name, format!("ComfyUI {version}; {devices}")));
    match get_json(client, &format!("{base}/object_info"), None).await {
        Ok((200, Value::Object(classes))) if !classes.is_empty() => {
            checks.push(Check::pass(format!("{name} nodes"), format!("{} node classes", classes.len())));
            Some(Capabilities::from_object_info(Value::Object(classes)))
        }
        Ok((status, _)) => {
            checks.push(Check::fail(
                format!("{name} nodes"),
                format!("/object_info answered HTTP {status} without node classes"),
                "look at ComfyUI's log: a custom node may fail to load",
            ));
            None
        }
        Err(e) => {
            checks.push(Check::fail(format!("{name} nodes"), e, "look at ComfyUI's log"));
            None
        }
    }
}

/// Workers of a `discover` entry checked one by one (the others are counted only).
pub const MAX_DISCOVERED_CHECKED: usize = 4;

/// A `discover` entry: its DNS name resolved once (one check saying how many workers it has);
/// the first [`MAX_DISCOVERED_CHECKED`] workers, to be checked as backends.
pub async fn discovered(
    config: &Config,
    entry: &BackendConfig,
    target: &DnsTarget,
    checks: &mut Vec<Check>,
) -> Vec<BackendConfig> {
    let name = format!("backend {}", entry.name);
    let resolver = match discovery::Resolver::new(&config.discovery) {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::fail(&name, e.to_string(), "set [discovery] nameservers, or fix /etc/resolv.conf"));
            return Vec::new();
        }
    };
    let lookup = resolver.lookup(target).await;
    let workers: Vec<BackendConfig> =
        lookup.merged(&[]).into_iter().map(|ip| discovery::discovered(entry, target, ip)).collect();
    match (lookup.failure(), workers.len()) {
        (Some(why), 0) => {
            let remedy = "check the DNS name and [discovery] nameservers (the gateway keeps the workers it last found \
                          while lookups fail)";
            checks.push(Check::fail(&name, format!("discovered by DNS ({target}): lookup failed: {why}"), remedy));
        }
        (_, 0) => checks.push(Check::warn(
            &name,
            format!("discovered by DNS ({target}): no workers now"),
            "start ComfyUI workers behind that name (an autoscaler at zero is fine: jobs wait for one)",
        )),
        (failure, n) => {
            let shown: Vec<&str> = workers.iter().take(MAX_DISCOVERED_CHECKED).map(|w| w.url.as_str()).collect();
            let more = if n > shown.len() { format!(", and {} more", n - shown.len()) } else { String::new() };
            let partly = failure.map(|why| format!("; a lookup failed: {why}")).unwrap_or_default();
            checks.push(Check::pass(
                &name,
                format!("discovered by DNS ({target}): {n} worker(s): {}{more}{partly}", shown.join(", ")),
            ));
        }
    }
    workers.into_iter().take(MAX_DISCOVERED_CHECKED).collect()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Where a client on this machine reaches the gateway listening on `listen`.
pub fn gateway_url(config: &Config) -> String {
    let listen = config.server.listen;
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, listen.port()))
}

/// The running gateway: alive, refusing anonymous API use, ready; accepting the token; holding
/// its WebSocket to each backend (with an admin's token). Whether it runs.
pub async fn gateway(
    client: &reqwest::Client,
    config: &Config,
    token: Option<&str>,
    identity: Option<&TokenFacts>,
    checks: &mut Vec<Check>,
) -> bool {
    let base = gateway_url(config);
    match get_json(client, &format!("{base}/healthz"), None).await {
        Ok((200, _)) => checks.push(Check::pass("gateway", format!("running at {base}"))),
        Ok((status, _)) => {
            let remedy = "is another program listening on [server] listen?";
            checks.push(Check::fail("gateway", format!("{base}/healthz answered HTTP {status}"), remedy));
            return false;
        }
        Err(e) => {
            checks.push(Check::warn(
                "gateway",
                format!("not running at {base} ({e}); checks of the running gateway skipped"),
                "start it with `comfygate serve` and run doctor again",
            ));
            return false;
        }
    }
    match get_json(client, &format!("{base}/api/queue"), None).await {
        Ok((401, _)) => checks.push(Check::pass("gateway authentication", "an anonymous API request is refused (401)")),
        Ok((status, _)) => checks.push(Check::fail(
            "gateway authentication",
            format!("an anonymous GET /api/queue answered HTTP {status}, not 401"),
            "something else answers on this address, or a proxy in front adds credentials: find it",
        )),
        Err(e) => checks.push(Check::fail("gateway authentication", e, "look at the gateway's log")),
    }
    match get_json(client, &format!("{base}/readyz"), None).await {
        Ok((200, _)) => checks.push(Check::pass("gateway readiness", "/readyz ok")),
        Ok((status, body)) => {
            let failing: Vec<String> = body["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["ok"] == false)
                .map(|c| format!("{}: {}", c["name"].as_str().unwrap_or("?"), c["reason"].as_str().unwrap_or("?")))
                .collect();
            checks.push(Check::fail(
                "gateway readiness",
                format!("/readyz answered HTTP {status}: {}", failing.join("; ")),
                "fix the failing checks above (store, backends)",
            ));
        }
        Err(e) => checks.push(Check::fail("gateway readiness", e, "look at the gateway's log")),
    }
    let Some(token) = token else {
        let remedy =
            "give an admin's token (--token, COMFYUI_TOKEN or --env-file) to see the gateway's backend sockets";
        checks.push(Check::warn("gateway backend sockets", "skipped: no token given", remedy));
        return true;
    };
    match get_json(client, &format!("{base}/comfygate/api/whoami"), Some(token)).await {
        Ok((200, who)) => checks.push(Check::pass(
            "token at the gateway",
            format!("accepted by the running gateway as {}", who["username"].as_str().unwrap_or("?")),
        )),
        Ok((status, body)) => checks.push(Check::fail(
            "token at the gateway",
            format!("refused with HTTP {status} ({})", body["code"].as_str().unwrap_or("no code")),
            "see the token line above for why",
        )),
        Err(e) => checks.push(Check::fail("token at the gateway", e, "look at the gateway's log")),
    }
    if identity.is_none_or(|t| t.role != Role::Admin) {
        checks.push(Check::warn(
            "gateway backend sockets",
            "skipped: the token is not a valid admin's",
            "give an admin's token to see the gateway's WebSocket to each backend",
        ));
        return true;
    }
    match get_json(client, &format!("{base}/comfygate/api/backends"), Some(token)).await {
        Ok((200, state)) => {
            for b in state["backends"].as_array().into_iter().flatten() {
                let name = format!("gateway → backend {}", b["name"].as_str().unwrap_or("?"));
                if b["monitored"] == true {
                    checks.push(Check::pass(name, "the gateway has its WebSocket open"));
                } else {
                    checks.push(Check::fail(
                        name,
                        format!(
                            "the gateway has no WebSocket to it (healthy: {}): no job is sent there",
                            b["healthy"] == true
                        ),
                        "make the backend reachable from the gateway; the gateway reconnects by itself",
                    ));
                }
            }
        }
        Ok((status, _)) => checks.push(Check::fail(
            "gateway backend sockets",
            format!("/comfygate/api/backends answered HTTP {status}"),
            "give an admin's token",
        )),
        Err(e) => checks.push(Check::fail("gateway backend sockets", e, "look at the gateway's log")),
    }
    true
}

/// How long the test job may take end to end (it waits behind the queue like any job).
pub const TEST_JOB_DEADLINE: Duration = Duration::from_secs(60);

/// `--run-test-job`: a job that needs no model (`EmptyImage` → `PreviewImage`, core nodes)
/// submitted through the running gateway with `token`, followed in `/history` until it ends.
pub async fn test_job(client: &reqwest::Client, config: &Config, token: Option<&str>, checks: &mut Vec<Check>) {
    let name = "test job";
    let Some(token) = token else {
        checks.push(Check::warn(name, "skipped: no token given", "give a token (--token) to run the test job"));
        return;
    };
    let base = gateway_url(config);
    let body = serde_json::json!({"prompt": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    }});
    let started = std::time::Instant::now();
    let submitted = client.post(format!("{base}/prompt")).bearer_auth(token).json(&body).send().await;
    let response = match submitted {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::fail(name, format!("cannot submit: {}", shown(e)), "is the gateway running?"));
            return;
        }
    };
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let Some(id) = answer["prompt_id"].as_str().filter(|_| status == 200).map(str::to_owned) else {
        let why = answer["error"]["message"].as_str().or(answer["error"].as_str()).unwrap_or("no prompt_id");
        let remedy =
            "see the lines above (token, backends); the backend must have the core nodes EmptyImage and PreviewImage";
        checks.push(Check::fail(name, format!("POST /prompt answered HTTP {status}: {why}"), remedy));
        return;
    };
    loop {
        if started.elapsed() > TEST_JOB_DEADLINE {
            checks.push(Check::fail(
                name,
                format!("job {id} did not finish within {}s", TEST_JOB_DEADLINE.as_secs()),
                "look at the queue (`/queue`) and the backends: a long queue or a stuck backend",
            ));
            return;
        }
        if let Ok((200, history)) = get_json(client, &format!("{base}/history/{id}"), Some(token)).await {
            let outcome = &history[&id]["status"];
            match outcome["status_str"].as_str() {
                Some("success") => {
                    let took = started.elapsed().as_secs_f64();
                    checks.push(Check::pass(name, format!("EmptyImage → PreviewImage ran end to end in {took:.1}s")));
                    return;
                }
                Some(other) if outcome["completed"] == false || other == "error" => {
                    let remedy = "look at the job's history and the backend's log";
                    checks.push(Check::fail(name, format!("job {id} ended with `{other}`"), remedy));
                    return;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
