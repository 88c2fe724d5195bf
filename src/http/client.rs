//! The one place that works out who the client is on the network: its address, the scheme it
//! used and the host it asked for, believing `X-Forwarded-*` only from trusted proxies.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

use crate::state::AppState;

/// The address a connection comes from, with its `X-Forwarded-For` form made once per
/// connection rather than once per request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The address.
    pub ip: IpAddr,
    header: HeaderValue,
}

impl Peer {
    /// The peer at `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let header = HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { ip, header }
    }
}

/// The client as seen by the gateway.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The real client address (the first untrusted hop).
    pub address: IpAddr,
    /// `X-Forwarded-For` to send on: the trusted chain plus the peer.
    pub forwarded_chain: HeaderValue,
    /// Whether the client used HTTPS (directly or at a trusted proxy).
    pub https: bool,
    /// The host the client asked for.
    pub host: Option<HeaderValue>,
}

impl ClientInfo {
    /// The forwarding headers to send to a backend for this client.
    pub fn forwarded(&self) -> crate::proxy::ForwardedFor<'_> {
        crate::proxy::ForwardedFor {
            chain: &self.forwarded_chain,
            proto: if self.https { "https" } else { "http" },
            host: self.host.as_ref(),
        }
    }

    /// Reads the client from a request's connection and headers.
    pub fn from_parts(parts: &Parts, trusted: &[IpNet], tls: bool) -> Self {
        Self::new(&Peer::new(peer(&parts.extensions)), parts, trusted, tls)
    }

    /// The client connected from `peer` that sent the request of `parts`.
    pub fn new(from: &Peer, parts: &Parts, trusted: &[IpNet], tls: bool) -> Self {
        let peer = from.ip;
        let headers = &parts.headers;
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
        let own_host = own_host(headers, &parts.uri);
        if !is_trusted(&peer) {
            return Self { address: peer, forwarded_chain: from.header.clone(), https: tls, host: own_host };
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        // Every line of the header, in order: a proxy may append its own line rather than
        // extend the client's.
        let lines: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let chain = lines.join(", ");
        let address = client_address(&chain, peer, is_trusted);
        let forwarded_chain = match chain.is_empty() {
            false => HeaderValue::try_from(format!("{chain}, {peer}")).unwrap_or_else(|_| from.header.clone()),
            true => from.header.clone(),
        };
        let https = match header("x-forwarded-proto").and_then(|v| v.split(',').next()) {
            Some(proto) => proto.trim().eq_ignore_ascii_case("https"),
            None => tls,
        };
        let host = headers.get("x-forwarded-host").cloned().or(own_host);
        Self { address, forwarded_chain, https, host }
    }
}

/// The client behind a trusted `peer`, from its `X-Forwarded-For` chain: the right-most entry
/// that is not a trusted proxy (everything left of it was written by the client itself). An
/// unreadable entry there stops the walk at the trusted hop to its right; a chain of trusted
/// proxies only names its left-most entry.
fn client_address(chain: &str, peer: IpAddr, is_trusted: impl Fn(&IpAddr) -> bool) -> IpAddr {
    let hops: Vec<Option<IpAddr>> =
        chain.split(',').map(str::trim).filter(|h| !h.is_empty()).map(hop_address).collect();
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => nearest = *ip,
            Some(ip) => return *ip,
            None => return nearest,
        }
    }
    nearest
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`
/// or `[2001:db8::1]:4711`.
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(hop).parse())
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The host the request asked for: its `Host` header, or under HTTP/2 (which has none) the
/// URI's `:authority`.
fn own_host(headers: &HeaderMap, uri: &http::Uri) -> Option<HeaderValue> {
    headers
        .get(http::header::HOST)
        .cloned()
        .or_else(|| uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()))
}

/// The peer address the listener recorded on the request (unspecified if none).
pub fn peer(extensions: &http::Extensions) -> IpAddr {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ClientInfo::from_parts(parts, &app.config.server.trusted_proxies, app.tls))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/").header("host", "gw:8080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut p = b.body(()).unwrap().into_parts().0;
        p.extensions.insert(ConnectInfo(format!("{peer}:5000").parse::<SocketAddr>().unwrap()));
        p
    }

    #[test]
    fn untrusted_peers_cannot_spoof_forwarding_headers() {
        let p = parts("198.51.100.7", &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")]);
        let c = ClientInfo::from_parts(&p, &[], false);
        assert_eq!(c.address.to_string(), "198.51.100.7");
        assert_eq!(c.forwarded_chain, "198.51.100.7");
        assert!(!c.https);
    }

    #[test]
    fn without_a_host_header_the_uri_authority_is_the_host_as_under_http2() {
        let mut p = http::Request::builder().uri("https://gw.example:8443/prompt").body(()).unwrap().into_parts().0;
        p.extensions.insert(ConnectInfo("198.51.100.7:5000".parse::<SocketAddr>().unwrap()));
        let c = ClientInfo::from_parts(&p, &[], true);
        assert_eq!(c.host.unwrap(), "gw.example:8443");
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_entry_of_every_forwarded_line() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let cases: &[(&[&str], &str)] = &[
            (&["203.0.113.5"], "203.0.113.5"),
            (&["198.51.100.1, 203.0.113.5"], "203.0.113.5"),
            // A proxy appending its own line: the client's forged first line is not the answer.
            (&["198.51.100.1", "203.0.113.5"], "203.0.113.5"),
            (&["198.51.100.1", "203.0.113.5, 10.0.0.9", "10.0.0.3"], "203.0.113.5"),
            (&["  203.0.113.5  ,10.0.0.9 ,, "], "203.0.113.5"),
            (&["2001:db8::7"], "2001:db8::7"),
            (&["[2001:db8::7]:4711, 10.0.0.9"], "2001:db8::7"),
            (&["[2001:db8::7]"], "2001:db8::7"),
            (&["203.0.113.5:4711"], "203.0.113.5"),
            (&["::ffff:203.0.113.5"], "203.0.113.5"),
            (&["fd00::1, 10.0.0.9"], "fd00::1"),
            // Garbage left of the client is the client's own business; garbage right of it
            // stops the walk at the trusted hop that received it.
            (&["not-an-ip, 203.0.113.5"], "203.0.113.5"),
            (&["198.51.100.1, unknown, 10.0.0.9"], "10.0.0.9"),
            (&["198.51.100.1, unknown"], "10.0.0.2"),
            // Only trusted proxies: the left-most is as far as anyone knows.
            (&["10.0.0.7, 10.0.0.9"], "10.0.0.7"),
            (&[""], "10.0.0.2"),
            (&[], "10.0.0.2"),
        ];
        for (lines, expected) in cases {
            let mut b = http::Request::builder().uri("/").header("host", "gw:8080");
            for line in *lines {
                b = b.header("x-forwarded-for", *line);
            }
            let mut p = b.body(()).unwrap().into_parts().0;
            p.extensions.insert(ConnectInfo("10.0.0.2:5000".parse::<SocketAddr>().unwrap()));
            let c = ClientInfo::from_parts(&p, &trusted, false);
            assert_eq!(c.address.to_string(), *expected, "{lines:?}");
        }
    }

    #[test]
    fn every_forwarded_line_is_passed_on() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let p = parts("10.0.0.2", &[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.5")]);
        let c = ClientInfo::from_parts(&p, &trusted, false);
        assert_eq!(c.forwarded_chain, "198.51.100.1, 203.0.113.5, 10.0.0.2");
    }

    #[test]
    fn trusted_proxies_are_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let p = parts(
            "10.0.0.2",
            &[
                ("x-forwarded-for", "203.0.113.5, 10.0.0.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "comfy.example"),
            ],
        );
        let c = ClientInfo::from_parts(&p, &trusted, false);
        assert_eq!(c.address.to_string(), "203.0.113.5");
        assert_eq!(c.forwarded_chain, "203.0.113.5, 10.0.0.9, 10.0.0.2");
        assert!(c.https);
        assert_eq!(c.host.unwrap(), "comfy.example");
    }
}
