//! Who is calling: the TCP peer, or, behind trusted proxies, the address they saw.
//!
//! `X-Forwarded-For` is written by every hop, so only the entries appended by
//! proxies we trust are believable. We read it right to left, skipping trusted
//! proxies, and stop at the first address we do not trust: that hop is the
//! client. Everything to its left was written by the client itself and may be
//! forged. The `Forwarded` and `X-Real-IP` headers, and actix's connection-info
//! "real IP" (which believes them), are never consulted.

use std::net::{IpAddr, SocketAddr};

use crate::config::ip_ranges::IpRanges;

/// The client address of an HTTP request: its peer, or behind
/// `trusted_proxies` the address they saw (see [`resolve`]); `None` when the
/// connection has no IP peer.
pub fn of_request(req: &actix_web::HttpRequest, trusted_proxies: &IpRanges) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let forwarded_for = req
        .headers()
        .get_all("x-forwarded-for")
        // An unreadable value is garbage, which stops the walk (fails closed).
        .map(|value| value.to_str().unwrap_or(""));
    Some(resolve(peer, forwarded_for, trusted_proxies))
}

/// Resolves the client address of a request that reached us from `peer`.
///
/// `forwarded_for` yields the values of every `X-Forwarded-For` header in the
/// order received (several headers are one list, RFC 9110 §5.3). The result is
/// always `peer` or an address that appears in those values, in canonical form.
pub fn resolve<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted_proxies: &IpRanges,
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted_proxies.contains(client) {
        return client;
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|value| value.split(','))
        .collect();
    for entry in entries.into_iter().rev() {
        match parse_entry(entry) {
            // A hop we cannot read was not written by a trusted proxy, so the
            // nearest trusted hop is as far as we can see; it is rarely allowed.
            None => return client,
            Some(addr) => {
                client = addr;
                if !trusted_proxies.contains(addr) {
                    return addr;
                }
            }
        }
    }
    client
}

/// Reads one `X-Forwarded-For` entry: an address, optionally with a port.
pub fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .ok_or(())
                .and_then(|e| e.parse::<IpAddr>().map_err(|_| ()))
        })
        .ok()
        .map(|addr| addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENDER: &str = "52.60.234.183";

    fn resolve_str(peer: &str, xff: &[&str], trusted: &str) -> String {
        let trusted: IpRanges = trusted.parse().unwrap();
        resolve(peer.parse().unwrap(), xff.iter().copied(), &trusted).to_string()
    }

    #[test]
    fn client_ip_resolution() {
        // (what it shows, peer, X-Forwarded-For headers, trusted proxies, client)
        let cases: &[(&str, &str, &[&str], &str, &str)] = &[
            ("a direct peer is the client", SENDER, &[], "", SENDER),
            (
                "an untrusted peer cannot forge XFF",
                "203.0.113.9",
                &[SENDER],
                "",
                "203.0.113.9",
            ),
            (
                "an untrusted peer is not a proxy even in the trusted list's neighbourhood",
                "10.0.0.5",
                &[SENDER],
                "10.0.1.0/24",
                "10.0.0.5",
            ),
            (
                "a trusted proxy's rightmost entry is the client",
                "10.0.0.1",
                &[SENDER],
                "10.0.0.0/8",
                SENDER,
            ),
            (
                "the forged leftmost entry is ignored",
                "10.0.0.1",
                &["52.60.240.87, 198.51.100.7"],
                "10.0.0.0/8",
                "198.51.100.7",
            ),
            (
                "a chain of trusted proxies is skipped right to left",
                "10.0.0.1",
                &["198.51.100.7, 52.60.234.183, 10.0.0.3, 10.0.0.2"],
                "10.0.0.0/8",
                SENDER,
            ),
            (
                "several XFF headers are one list",
                "10.0.0.1",
                &["52.60.240.87", "198.51.100.7, 10.0.0.2"],
                "10.0.0.0/8",
                "198.51.100.7",
            ),
            (
                "without XFF a trusted proxy is itself the client",
                "10.0.0.1",
                &[],
                "10.0.0.0/8",
                "10.0.0.1",
            ),
            (
                "an all-trusted chain ends at its leftmost hop",
                "10.0.0.1",
                &["10.0.0.3, 10.0.0.2"],
                "10.0.0.0/8",
                "10.0.0.3",
            ),
            (
                "garbage stops the walk at the nearest trusted hop",
                "10.0.0.1",
                &["52.60.234.183, not-an-ip"],
                "10.0.0.0/8",
                "10.0.0.1",
            ),
            (
                "garbage behind a trusted hop leaves that hop",
                "10.0.0.1",
                &["52.60.234.183, unknown, 10.0.0.2"],
                "10.0.0.0/8",
                "10.0.0.2",
            ),
            (
                "an empty entry is garbage",
                "10.0.0.1",
                &["52.60.234.183, "],
                "10.0.0.0/8",
                "10.0.0.1",
            ),
            (
                "ports are dropped",
                "10.0.0.1",
                &["52.60.234.183:4711"],
                "10.0.0.0/8",
                SENDER,
            ),
            (
                "IPv6 entries",
                "fd00::1",
                &["2001:db8::7, fd00::2"],
                "fd00::/8",
                "2001:db8::7",
            ),
            (
                "bracketed IPv6 with a port",
                "fd00::1",
                &["[2001:db8::7]:443"],
                "fd00::/8",
                "2001:db8::7",
            ),
            (
                "bracketed IPv6 without a port",
                "fd00::1",
                &["[2001:db8::7]"],
                "fd00::/8",
                "2001:db8::7",
            ),
            (
                "a mapped peer is IPv4",
                "::ffff:52.60.234.183",
                &[],
                "",
                SENDER,
            ),
            (
                "a mapped trusted peer matches an IPv4 proxy list",
                "::ffff:10.0.0.1",
                &[SENDER],
                "10.0.0.0/8",
                SENDER,
            ),
            (
                "mapped XFF entries are IPv4",
                "10.0.0.1",
                &["::ffff:52.60.234.183"],
                "10.0.0.0/8",
                SENDER,
            ),
        ];
        for (what, peer, xff, trusted, expected) in cases {
            assert_eq!(&resolve_str(peer, xff, trusted), expected, "{what}");
        }
    }

    mod properties {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

        use proptest::prelude::*;

        use super::super::*;

        /// Addresses drawn so that trusted proxies, the sender and strangers
        /// all turn up, in both families and IPv4-mapped form.
        fn address() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                (0u8..4).prop_map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))),
                (0u16..4).prop_map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))),
                Just(IpAddr::V4(Ipv4Addr::new(52, 60, 234, 183))),
                Just("::ffff:10.0.0.1".parse().unwrap()),
                any::<IpAddr>(),
            ]
        }

        /// One X-Forwarded-For entry: an address as proxies write it, or garbage.
        fn entry() -> impl Strategy<Value = (String, Option<IpAddr>)> {
            prop_oneof![
                address().prop_map(|a| (a.to_string(), Some(a))),
                (address(), any::<u16>())
                    .prop_map(|(a, port)| { (SocketAddr::new(a, port).to_string(), Some(a)) }),
                address().prop_map(|a| (format!(" [{a}] "), Some(a))),
                "[^,]{0,12}".prop_map(|garbage| (garbage, None)),
            ]
        }

        proptest! {
            #[test]
            fn the_client_is_the_peer_or_an_address_from_the_header(
                peer in address(),
                headers in proptest::collection::vec(proptest::collection::vec(entry(), 0..4), 0..3),
                trusted in proptest::collection::vec(proptest::sample::select(vec!["10.0.0.0/8", "fd00::/8", "52.60.234.183/32"]), 0..3),
            ) {
                let trusted: IpRanges = trusted.join(",").parse().unwrap();
                let values: Vec<String> = headers
                    .iter()
                    .map(|entries| entries.iter().map(|(text, _)| text.as_str()).collect::<Vec<_>>().join(","))
                    .collect();
                let written: Vec<IpAddr> = headers
                    .iter()
                    .flatten()
                    .filter_map(|(_, addr)| addr.map(|a| a.to_canonical()))
                    .collect();

                let client = resolve(peer, values.iter().map(String::as_str), &trusted);

                prop_assert!(
                    client == peer.to_canonical() || written.contains(&client),
                    "{client} is neither the peer {peer} nor in {values:?}"
                );
                if !trusted.contains(peer.to_canonical()) {
                    prop_assert_eq!(client, peer.to_canonical(), "an untrusted peer is the client");
                }
            }
        }
    }
}
