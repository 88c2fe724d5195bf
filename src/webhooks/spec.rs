//! A webhook's `{url, events}` and the admin's list of allowed destinations: what is checked
//! at submission, before any network access.

use reqwest::Url;
use serde_json::Value;

use crate::config::WebhooksConfig;

/// Longest webhook URL accepted.
const MAX_URL_LEN: usize = 2048;

/// A job event a webhook may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The job's run started on a backend.
    Started,
    /// It ended with outputs.
    Completed,
    /// It ended with an error.
    Failed,
    /// It was cancelled or interrupted.
    Interrupted,
}

impl EventKind {
    /// Every event, in order.
    pub const ALL: [EventKind; 4] = [Self::Started, Self::Completed, Self::Failed, Self::Interrupted];

    /// Its name in payloads and specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "job.started",
            Self::Completed => "job.completed",
            Self::Failed => "job.failed",
            Self::Interrupted => "job.interrupted",
        }
    }

    /// The event named `name` (exact spelling only).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// A checked webhook: where, and which events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The destination.
    pub url: Url,
    /// The events it wants.
    pub events: Vec<EventKind>,
    /// Whether the allowed list names its host exactly (then private addresses are allowed).
    pub explicit: bool,
}

impl Spec {
    /// Whether it wants `event`.
    pub fn wants(&self, event: EventKind) -> bool {
        self.events.contains(&event)
    }
}

/// One entry of `allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// `host` or `host:port` (any port when none is given).
    Exact(String, Option<u16>),
    /// `*.domain`: any name below `domain` (not `domain` itself).
    Below(String, Option<u16>),
}

/// Parses and checks `extra_data.webhook` (or a token's default): the reason it is refused, for
/// the user.
pub fn parse(value: &Value, config: &WebhooksConfig) -> Result<Spec, String> {
    let Value::Object(fields) = value else {
        return Err("extra_data.webhook must be an object {\"url\": ..., \"events\": [...]}".to_owned());
    };
    if let Some(key) = fields.keys().find(|k| *k != "url" && *k != "events") {
        return Err(format!("extra_data.webhook has an unknown field {:?}", truncated(key)));
    }
    let Some(Value::String(url)) = fields.get("url") else {
        return Err("extra_data.webhook.url must be a string".to_owned());
    };
    let events = match fields.get("events") {
        None | Some(Value::Null) => EventKind::ALL.to_vec(),
        Some(Value::Array(names)) if !names.is_empty() => {
            let mut events = Vec::new();
            for name in names {
                let event = name.as_str().and_then(EventKind::parse).ok_or_else(|| {
                    format!(
                        "unknown webhook event {}; known: job.started, job.completed, job.failed, job.interrupted",
                        truncated(&name.to_string())
                    )
                })?;
                if !events.contains(&event) {
                    events.push(event);
                }
            }
            events
        }
        Some(_) => return Err("extra_data.webhook.events must be a non-empty list of event names".to_owned()),
    };
    let (url, explicit) = destination(url, config)?;
    Ok(Spec { url, events, explicit })
}

/// Checks a webhook URL against the allowed list: the parsed URL and whether its host is named
/// exactly.
pub fn destination(text: &str, config: &WebhooksConfig) -> Result<(Url, bool), String> {
    if config.allowed_hosts.is_empty() {
        return Err("webhooks are not enabled on this gateway".to_owned());
    }
    if text.len() > MAX_URL_LEN {
        return Err(format!("the webhook URL is longer than {MAX_URL_LEN} bytes"));
    }
    let url = Url::parse(text).map_err(|_| "the webhook URL is not a valid URL".to_owned())?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("the webhook URL must be http or https".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the webhook URL must not carry a user name or password".to_owned());
    }
    let (host, port) = host_port(&url).ok_or_else(|| "the webhook URL has no host".to_owned())?;
    let matched = config.allowed_hosts.iter().filter_map(|e| allowed_entry(e)).find_map(|entry| match entry {
        Allowed::Exact(h, p) if h == host && p.is_none_or(|p| p == port) => Some(true),
        Allowed::Below(d, p)
            if host.len() > d.len() + 1 && host.ends_with(&format!(".{d}")) && p.is_none_or(|p| p == port) =>
        {
            Some(false)
        }
        _ => None,
    });
    match matched {
        Some(explicit) => Ok((url, explicit)),
        None => Err(format!("webhooks to {host}:{port} are not allowed on this gateway")),
    }
}

/// The URL's host as compared with the list (lower case, IP literals canonical, no trailing dot)
/// and its port.
pub fn host_port(url: &Url) -> Option<(String, u16)> {
    let host = match url.host()? {
        url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => format!("[{ip}]"),
    };
    if host.is_empty() {
        return None;
    }
    Some((host, url.port_or_known_default()?))
}

/// One `allowed_hosts` entry, parsed (`None`: unusable; [`WebhooksConfig::check`] refuses those).
fn allowed_entry(entry: &str) -> Option<Allowed> {
    let entry = entry.trim();
    let (below, rest) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    if rest.is_empty() || rest.contains(['/', '@', '?', '#', '*']) {
        return None;
    }
    let url = Url::parse(&format!("http://{rest}/")).ok()?;
    let (host, _) = host_port(&url)?;
    let port = url.port();
    Some(if below { Allowed::Below(host, port) } else { Allowed::Exact(host, port) })
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(hosts: &[&str]) -> WebhooksConfig {
        WebhooksConfig { allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(), ..Default::default() }
    }

    #[test]
    fn spellings_of_one_host_are_judged_alike_and_others_refused() {
        let c = config(&["hooks.example.com", "*.example.org", "127.0.0.1:8080", "[::1]:9000"]);
        let cases: &[(&str, Option<bool>)] = &[
            ("https://hooks.example.com/h", Some(true)),
            ("https://HOOKS.Example.COM/h", Some(true)),
            ("https://hooks.example.com./h", Some(true)),
            ("http://hooks.example.com:8443/h", Some(true)),
            ("https://a.example.org/h", Some(false)),
            ("https://a.b.example.org/h", Some(false)),
            ("https://example.org/h", None),
            ("https://evilexample.org/h", None),
            ("https://hooks.example.com.evil.net/h", None),
            ("http://127.0.0.1:8080/h", Some(true)),
            ("http://0x7f.1:8080/h", Some(true)),
            ("http://2130706433:8080/h", Some(true)),
            ("http://127.1:8080/h", Some(true)),
            ("http://127.0.0.1/h", None),
            ("http://127.0.0.1:8081/h", None),
            ("http://localhost:8080/h", None),
            ("http://[::1]:9000/h", Some(true)),
            ("http://[0:0:0:0:0:0:0:1]:9000/h", Some(true)),
            ("http://[::1]/h", None),
            ("http://user@hooks.example.com/h", None),
            ("http://user:pw@hooks.example.com/h", None),
            ("ftp://hooks.example.com/h", None),
            ("file:///etc/passwd", None),
            ("hooks.example.com/h", None),
            ("http://hooks.example.com@127.0.0.1:8080/h", None),
        ];
        for (url, want) in cases {
            let got = destination(url, &c).ok().map(|(_, explicit)| explicit);
            assert_eq!(got, *want, "{url}");
        }
    }

    #[test]
    fn no_allowed_hosts_refuses_every_webhook() {
        assert!(destination("https://hooks.example.com/h", &config(&[])).is_err());
    }

    #[test]
    fn specs_default_to_every_event_and_refuse_unknown_ones() {
        let c = config(&["hooks.example.com"]);
        let all = parse(&json!({"url": "https://hooks.example.com/"}), &c).unwrap();
        assert_eq!(all.events, EventKind::ALL.to_vec());
        let some = parse(&json!({"url": "https://hooks.example.com/", "events": ["job.failed"]}), &c).unwrap();
        assert!(some.wants(EventKind::Failed) && !some.wants(EventKind::Completed));
        for bad in [
            json!({"url": "https://hooks.example.com/", "events": ["job.done"]}),
            json!({"url": "https://hooks.example.com/", "events": ["JOB.FAILED"]}),
            json!({"url": "https://hooks.example.com/", "events": []}),
            json!({"url": "https://hooks.example.com/", "events": "job.failed"}),
            json!({"url": "https://hooks.example.com/", "secret": "x"}),
            json!({"url": 5}),
            json!("https://hooks.example.com/"),
        ] {
            assert!(parse(&bad, &c).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_host_entries_are_checked() {
        assert!(config(&["hooks.example.com", "*.example.org", "10.0.0.1:80"]).check().is_ok());
        for bad in ["", "*.", "http://x/", "a@b", "*.*.x"] {
            assert!(config(&[bad]).check().is_err(), "{bad}");
        }
    }
}
