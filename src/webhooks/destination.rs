//! Where a delivery may connect, decided at delivery time: the host's addresses are resolved
//! once, checked, and the connection goes to the checked address (no second lookup, so no DNS
//! rebinding). Loopback, private, link-local and the backends' own addresses are refused unless
//! the allowed list names the host exactly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Whether `ip` is an ordinary address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, ::/96
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

/// Picks the address to connect to among `resolved`: the first public one that is no backend's,
/// or (host named exactly) the first one at all.
pub fn choose(resolved: &[SocketAddr], backends: &[SocketAddr], explicit: bool) -> Result<SocketAddr, String> {
    if explicit {
        return resolved.first().copied().ok_or_else(|| "the webhook host has no address".to_owned());
    }
    resolved
        .iter()
        .copied()
        .find(|a| is_public(a.ip()) && !backends.iter().any(|b| b.ip() == a.ip()))
        .ok_or_else(|| "the webhook host resolves only to private, loopback or backend addresses".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "64:ff9b::808:808"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_an_exactly_named_host_reaches_private_or_backend_addresses() {
        let private: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let public: SocketAddr = "93.184.216.34:80".parse().unwrap();
        assert!(choose(&[private], &[], false).is_err());
        assert_eq!(choose(&[private], &[], true), Ok(private));
        assert_eq!(choose(&[private, public], &[], false), Ok(public));
        assert!(choose(&[public], &[public], false).is_err());
        assert!(choose(&[], &[], true).is_err());
    }
}
