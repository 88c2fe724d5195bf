//! Backends found in DNS: a `[[backends]]` entry with `discover = "dns://host[:port]"` stands
//! for every A and AAAA record of `host`, each a backend named `{entry}-{address with dashes}`
//! at `http://address:port` with the entry's other settings.
//!
//! [`maintain`] resolves every such entry at start and once per `[discovery] interval`, and
//! hands what it found to the pool ([`Pool::set_discovered`]), which adds new workers at once
//! and drains vanished ones (no new job; the running ones finish; then gone), as a reload does.
//! A lookup that fails (timeout, SERVFAIL, refused) keeps the addresses last found for that
//! record type; a name that does not exist (NXDOMAIN) or has no records of a type means no
//! workers of that type.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::{ResolveError, ResolveErrorKind, TokioResolver};
use tokio::sync::watch;

use super::Pool;
use super::watchers::Watchers;
use crate::config::{BackendConfig, DiscoveryConfig, DnsTarget};
use crate::metrics::Metrics;

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the system's DNS configuration (/etc/resolv.conf): {0}; set [discovery] nameservers")]
pub struct DiscoveryError(#[from] ResolveError);

/// The most workers one `discover` entry becomes (the lowest addresses, when a name has more):
/// each is a health check and a monitor socket, and a DNS answer is not a limit anyone chose.
pub const MAX_WORKERS: usize = 256;

/// `ips` (sorted) cut to [`MAX_WORKERS`], and how many were left out.
pub fn capped(mut ips: Vec<IpAddr>) -> (Vec<IpAddr>, usize) {
    let left_out = ips.len().saturating_sub(MAX_WORKERS);
    ips.truncate(MAX_WORKERS);
    (ips, left_out)
}

/// What one record type's lookup said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// These addresses (none: the name has no such records, or does not exist).
    Found(Vec<IpAddr>),
    /// No usable answer (timeout, SERVFAIL, refused): what was known stays.
    Failed(String),
}

/// A DNS name's answers, per record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The A records.
    pub v4: Answer,
    /// The AAAA records.
    pub v6: Answer,
}

impl Lookup {
    /// The workers now: each record type's answer, or for a failed one what `last` had of it;
    /// sorted, each once.
    pub fn merged(&self, last: &[IpAddr]) -> Vec<IpAddr> {
        let of = |answer: &Answer, v4: bool| -> Vec<IpAddr> {
            match answer {
                Answer::Found(found) => found.iter().filter(|ip| ip.is_ipv4() == v4).copied().collect(),
                Answer::Failed(_) => last.iter().filter(|ip| ip.is_ipv4() == v4).copied().collect(),
            }
        };
        let mut all = of(&self.v4, true);
        all.extend(of(&self.v6, false));
        all.sort();
        all.dedup();
        all
    }

    /// Why a lookup failed, if one did.
    pub fn failure(&self) -> Option<&str> {
        [&self.v4, &self.v6].into_iter().find_map(|a| match a {
            Answer::Failed(why) => Some(why.as_str()),
            Answer::Found(_) => None,
        })
    }
}

/// Asks DNS for the addresses of `discover` names, uncached (every lookup reaches a server, so a
/// change is seen at the next interval whatever the records' TTL).
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver asking `config.nameservers`, or the system's when there are none.
    pub fn new(config: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let mut group = NameServerConfigGroup::new();
            for server in &config.nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true));
            }
            TokioResolver::builder_with_config(ResolverConfig::from_parts(None, Vec::new(), group), provider)
        };
        let options = builder.options_mut();
        // A lookup must not outlast many intervals: a dead server costs a few seconds at most.
        options.timeout = config.interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
        options.attempts = 2;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        options.cache_size = 0;
        Ok(Self { inner: builder.build() })
    }

    /// The A and AAAA records of `target`'s name, asked separately (a name without a final `.`
    /// as the system would: the resolver's search domains tried too).
    pub async fn lookup(&self, target: &DnsTarget) -> Lookup {
        let name = target.host.as_str();
        let (v4, v6) = tokio::join!(self.inner.ipv4_lookup(name), self.inner.ipv6_lookup(name));
        Lookup {
            v4: answer(v4.map(|found| found.iter().map(|a| IpAddr::V4(a.0)).collect())),
            v6: answer(v6.map(|found| found.iter().map(|a| IpAddr::V6(a.0)).collect())),
        }
    }
}

/// A lookup's result as an [`Answer`]: NXDOMAIN and an empty NOERROR answer mean no records;
/// every other error (SERVFAIL, REFUSED, timeouts, I/O) is a failure.
fn answer(result: Result<Vec<IpAddr>, ResolveError>) -> Answer {
    match result {
        Ok(found) => Answer::Found(found),
        Err(e) => {
            let proto = match e.kind() {
                ResolveErrorKind::Proto(proto) => Some(proto.kind()),
                _ => None,
            };
            match proto {
                Some(ProtoErrorKind::NoRecordsFound {
                    response_code: ResponseCode::NXDomain | ResponseCode::NoError,
                    ..
                }) => Answer::Found(Vec::new()),
                _ => Answer::Failed(e.to_string()),
            }
        }
    }
}

/// The name of the backend `entry` finds at `ip`: `gpu-10-0-0-5`, `gpu-fd00--1`.
pub fn backend_name(entry: &str, ip: IpAddr) -> String {
    format!("{entry}-{}", ip.to_string().replace(['.', ':'], "-"))
}

/// The backend `entry` (a `discover` entry) finds at `ip`: its settings, its own name and URL.
pub fn discovered(entry: &BackendConfig, target: &DnsTarget, ip: IpAddr) -> BackendConfig {
    let address = SocketAddr::new(ip, target.port);
    BackendConfig {
        name: backend_name(&entry.name, ip),
        url: format!("http://{address}"),
        discover: None,
        ..entry.clone()
    }
}

/// The backends of `entries` in order: each static entry as it is, each `discover` entry's
/// found workers in address order. A found worker whose name or URL a static entry already has
/// is left out (the static entry is that server), with a warning.
pub fn expand(entries: &[BackendConfig], found: &BTreeMap<String, Vec<IpAddr>>) -> Vec<BackendConfig> {
    let statics: Vec<&BackendConfig> = entries.iter().filter(|e| e.discover.is_none()).collect();
    let taken = |b: &BackendConfig| {
        let url = b.url.trim_end_matches('/').to_ascii_lowercase();
        statics.iter().find(|s| s.name == b.name || s.url.trim_end_matches('/').to_ascii_lowercase() == url)
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in entries {
        let Some(target) = &entry.discover else {
            out.push(entry.clone());
            continue;
        };
        for ip in found.get(&entry.name).into_iter().flatten() {
            let backend = discovered(entry, target, *ip);
            if let Some(other) = taken(&backend) {
                tracing::warn!(
                    entry = entry.name,
                    backend = backend.name,
                    configured = other.name,
                    "a discovered worker is already configured: left out"
                );
                continue;
            }
            if seen.insert(backend.name.clone()) {
                out.push(backend);
            }
        }
    }
    out
}

/// Resolves every `discover` entry of the pool at start and once per `config.interval`, and
/// puts what it found in force (new workers watched and used at once, vanished ones drained),
/// until `shutdown`.
pub async fn maintain(
    pool: Arc<Pool>,
    watchers: Watchers,
    config: DiscoveryConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut resolver = None;
    let mut failing: HashMap<String, bool> = HashMap::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let entries = pool.discover_entries();
        if entries.is_empty() {
            continue;
        }
        if resolver.is_none() {
            match Resolver::new(&config) {
                Ok(r) => resolver = Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "backend discovery cannot start; trying again next interval");
                    continue;
                }
            }
        }
        let Some(resolver) = &resolver else { continue };
        let lookups = entries.iter().filter_map(|entry| {
            let target = entry.discover.as_ref()?;
            Some(async move { (entry, resolver.lookup(target).await) })
        });
        for (entry, lookup) in futures_util::future::join_all(lookups).await {
            let name = entry.name.as_str();
            let was_failing = failing.insert(name.to_owned(), lookup.failure().is_some()).unwrap_or(false);
            if let Some(why) = lookup.failure() {
                metrics.discovery_failed(name);
                if !was_failing {
                    tracing::warn!(
                        entry = name,
                        error = why,
                        "backend discovery: lookup failed; the workers last found stay"
                    );
                }
            } else if was_failing {
                tracing::info!(entry = name, "backend discovery: lookups answer again");
            }
            let last = pool.discovered(name).unwrap_or_default();
            let (now, left_out) = capped(lookup.merged(&last));
            if left_out > 0 {
                tracing::warn!(
                    entry = name,
                    left_out,
                    max = MAX_WORKERS,
                    "backend discovery: the name has more workers than one entry takes; the lowest addresses are used"
                );
            }
            match pool.set_discovered(name, now) {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => {
                    for backend in &changes.added {
                        tracing::info!(
                            entry = name,
                            backend = backend.name(),
                            url = backend.config.url,
                            "discovered backend added"
                        );
                        watchers.start(backend);
                    }
                    for gone in &changes.removed {
                        tracing::info!(entry = name, backend = gone, "discovered backend vanished: draining");
                    }
                    for back in &changes.kept {
                        tracing::info!(entry = name, backend = back, "discovered backend back in service");
                    }
                    pool.announce(super::BackendEvent::Changed);
                }
                Err(e) => tracing::error!(entry = name, error = %e, "backend discovery: cannot use what was found"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn entry(name: &str, discover: &str) -> BackendConfig {
        BackendConfig {
            name: name.to_owned(),
            url: String::new(),
            discover: Some(discover.parse().unwrap()),
            max_inflight: 3,
            models: vec!["flux*".to_owned()],
            ..BackendConfig::local()
        }
    }

    #[test]
    fn each_address_is_a_backend_named_after_the_entry_with_its_settings() {
        let gpu = entry("gpu", "dns://workers.test:9000");
        let found = BTreeMap::from([("gpu".to_owned(), vec![ip("10.0.0.5"), ip("fd00::1")])]);
        let all = expand(&[BackendConfig::local(), gpu], &found);
        let shown: Vec<(&str, &str)> = all.iter().map(|b| (b.name.as_str(), b.url.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("local", "http://127.0.0.1:8188"),
                ("gpu-10-0-0-5", "http://10.0.0.5:9000"),
                ("gpu-fd00--1", "http://[fd00::1]:9000")
            ]
        );
        assert!(all[1..].iter().all(|b| b.max_inflight == 3 && b.models == ["flux*"] && b.discover.is_none()));
    }

    #[test]
    fn a_worker_already_configured_statically_is_left_out() {
        let stat = BackendConfig {
            name: "fixed".to_owned(),
            url: "http://10.0.0.5:8188/".to_owned(),
            ..BackendConfig::local()
        };
        let clash = BackendConfig {
            name: "gpu-10-0-0-6".to_owned(),
            url: "http://10.9.9.9:8188".to_owned(),
            ..BackendConfig::local()
        };
        let found = BTreeMap::from([("gpu".to_owned(), vec![ip("10.0.0.5"), ip("10.0.0.6"), ip("10.0.0.7")])]);
        let all = expand(&[stat, clash, entry("gpu", "dns://w")], &found);
        let names: Vec<&str> = all.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["fixed", "gpu-10-0-0-6", "gpu-10-0-0-7"]);
    }

    #[test]
    fn a_failed_lookup_keeps_what_its_type_had_and_an_empty_answer_clears_it() {
        let last = [ip("10.0.0.1"), ip("fd00::1")];
        let failed = |why: &str| Answer::Failed(why.to_owned());
        let found = |ips: &[&str]| Answer::Found(ips.iter().map(|t| ip(t)).collect());
        let cases = [
            (Lookup { v4: found(&["10.0.0.2", "10.0.0.1"]), v6: found(&[]) }, vec!["10.0.0.1", "10.0.0.2"]),
            (Lookup { v4: failed("timeout"), v6: found(&["fd00::2"]) }, vec!["10.0.0.1", "fd00::2"]),
            (Lookup { v4: found(&[]), v6: failed("SERVFAIL") }, vec!["fd00::1"]),
            (Lookup { v4: failed("x"), v6: failed("y") }, vec!["10.0.0.1", "fd00::1"]),
            (Lookup { v4: found(&[]), v6: found(&[]) }, vec![]),
        ];
        for (lookup, expected) in cases {
            let expected: Vec<IpAddr> = expected.iter().map(|t| ip(t)).collect();
            assert_eq!(lookup.merged(&last), expected, "{lookup:?}");
            assert_eq!(
                lookup.failure().is_some(),
                matches!((&lookup.v4, &lookup.v6), (Answer::Failed(_), _) | (_, Answer::Failed(_)))
            );
        }
    }

    #[test]
    fn nxdomain_and_empty_answers_are_no_workers_and_servfail_is_a_failure() {
        let no_records = |code: ResponseCode| -> ResolveError {
            let query = hickory_resolver::proto::op::Query::default();
            hickory_resolver::proto::ProtoError::nx_error(Box::new(query), None, None, None, code, false, None).into()
        };
        assert_eq!(answer(Err(no_records(ResponseCode::NXDomain))), Answer::Found(Vec::new()));
        assert_eq!(answer(Err(no_records(ResponseCode::NoError))), Answer::Found(Vec::new()));
        assert!(matches!(answer(Err(no_records(ResponseCode::ServFail))), Answer::Failed(_)));
        assert!(matches!(answer(Err(ResolveError::from("timed out"))), Answer::Failed(_)));
        assert_eq!(answer(Ok(vec![ip("10.0.0.1")])), Answer::Found(vec![ip("10.0.0.1")]));
    }

    #[test]
    fn one_entry_takes_at_most_max_workers_the_lowest_addresses() {
        let many: Vec<IpAddr> = (0..300u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
        let (kept, left_out) = capped(many.clone());
        assert_eq!((kept.len(), left_out), (MAX_WORKERS, 300 - MAX_WORKERS));
        assert_eq!(kept, many[..MAX_WORKERS]);
        let few = many[..3].to_vec();
        assert_eq!(capped(few.clone()), (few, 0));
    }

    #[test]
    fn names_keep_to_letters_digits_and_dashes() {
        assert_eq!(backend_name("w", ip("192.168.1.20")), "w-192-168-1-20");
        assert_eq!(backend_name("w", ip("2001:db8::8a2e:370:7334")), "w-2001-db8--8a2e-370-7334");
    }
}
