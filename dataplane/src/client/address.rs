//! The client address a public write key's request is limited by
//! (`client.address_rate_eps`): the TCP peer, or, when the peer is a proxy listed in
//! `client.trusted_proxies`, the right-most address of `X-Forwarded-For` that is not one
//! of them — the hop the last trusted proxy saw. Addresses further left were written by
//! whoever sent them, so they are never read past an untrusted hop.

use std::net::IpAddr;

use croupier_control::config::TrustedProxies;

/// The address to count `peer`'s request against, given its `X-Forwarded-For` (every
/// line sent, joined in order). A hop that cannot be read (`unknown`, a name, garbage) stops the walk at
/// the trusted proxy that wrote it: that proxy's address is counted, the strict side.
pub fn client_address(peer: Option<IpAddr>, forwarded: Option<&str>, trusted: &TrustedProxies) -> Option<IpAddr> {
    let mut addr = peer?.to_canonical();
    if trusted.is_empty() {
        return Some(addr);
    }
    let Some(hops) = forwarded else { return Some(addr) };
    // Empty elements (`a, , b`, a trailing comma) are no hop (RFC 9110, 5.6.1).
    for hop in hops.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
        if !trusted.contains(addr) {
            break;
        }
        match parse_hop(hop) {
            Some(ip) => addr = ip.to_canonical(),
            None => break,
        }
    }
    Some(addr)
}

/// One hop: an address, possibly with a port (`203.0.113.7:5123`, `[2001:db8::1]:443`)
/// or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        serde_json::from_value(serde_json::json!(list)).expect("valid")
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.1"]);
        let xff = Some("198.51.100.9, 203.0.113.7, 10.1.2.3");
        assert_eq!(client_address(ip("10.0.0.5"), xff, &t), ip("203.0.113.7"), "two trusted hops");
        assert_eq!(client_address(ip("192.0.2.1"), Some("203.0.113.7"), &t), ip("203.0.113.7"));
        assert_eq!(client_address(ip("203.0.113.50"), xff, &t), ip("203.0.113.50"), "an untrusted peer's header");
        assert_eq!(client_address(ip("10.0.0.5"), None, &t), ip("10.0.0.5"), "no header: the proxy");
        assert_eq!(client_address(ip("10.0.0.5"), Some("10.0.0.9, 10.0.0.8"), &t), ip("10.0.0.9"), "all trusted");
        assert_eq!(client_address(ip("10.0.0.5"), Some("203.0.113.7, unknown"), &t), ip("10.0.0.5"), "unreadable");
        assert_eq!(client_address(ip("10.0.0.5"), Some(""), &t), ip("10.0.0.5"));
        assert_eq!(client_address(ip("10.0.0.5"), Some("203.0.113.7, , "), &t), ip("203.0.113.7"), "empty elements");
        assert_eq!(client_address(None, xff, &t), None);
        let none = trusted(&[]);
        assert_eq!(client_address(ip("10.0.0.5"), xff, &none), ip("10.0.0.5"), "nothing trusted");
    }

    #[test]
    fn hops_with_ports_brackets_and_mapped_addresses() {
        let t = trusted(&["127.0.0.1", "fd00::/8"]);
        assert_eq!(client_address(ip("::ffff:127.0.0.1"), Some("203.0.113.7:5123"), &t), ip("203.0.113.7"));
        assert_eq!(client_address(ip("fd00::1"), Some("[2001:db8::1]:443"), &t), ip("2001:db8::1"));
        assert_eq!(client_address(ip("fd00::1"), Some("[2001:db8::2]"), &t), ip("2001:db8::2"));
        assert_eq!(client_address(ip("fd00::1"), Some("2001:db8::3"), &t), ip("2001:db8::3"));
        assert_eq!(client_address(ip("127.0.0.1"), Some("::ffff:198.51.100.1"), &t), ip("198.51.100.1"));
    }

    #[test]
    fn a_bad_entry_is_refused_when_read() {
        for bad in ["10.0.0.0/33", "proxy.internal", "", "10.0.0.1/8/8"] {
            assert!(serde_json::from_value::<TrustedProxies>(serde_json::json!([bad])).is_err(), "{bad}");
        }
        assert_eq!(trusted(&[" 10.0.0.1 "]), trusted(&["10.0.0.1/32"]), "trimmed, one address");
        assert_eq!(trusted(&["10.1.2.3/8"]), trusted(&["10.0.0.0/8"]), "a network by its prefix");
    }
}
