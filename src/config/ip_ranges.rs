//! A set of addresses and CIDR blocks, as written in configuration.
//!
//! Every address is compared in canonical form, so an IPv4 client that reaches a
//! dual-stack socket as `::ffff:52.60.234.183` matches the IPv4 entry
//! `52.60.234.183`, and an entry written in the mapped form matches the plain
//! IPv4 client.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Serialize, Serializer};

/// A list of CIDR blocks; a bare address is a block of one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRanges(Vec<IpNet>);

impl IpRanges {
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses one entry: `10.0.0.0/8`, `52.60.234.183`, `2001:db8::/32`, `::ffff:1.2.3.4`.
pub fn parse_range(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    let net = match entry.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => entry
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("`{entry}` is not an IP address or CIDR block"))?,
    };
    Ok(canonical(net))
}

/// An IPv4-mapped IPv6 block (`::ffff:a.b.c.d/96+n`) is the IPv4 block `a.b.c.d/n`.
fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Some(prefix) = v6.prefix_len().checked_sub(96)
        && let Ok(v4net) = Ipv4Net::new(v4, prefix)
    {
        return IpNet::V4(v4net.trunc());
    }
    net.trunc()
}

impl FromStr for IpRanges {
    type Err = String;

    /// A comma-separated list, as environment variables give it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(parse_range)
            .collect::<Result<_, _>>()
            .map(IpRanges)
    }
}

impl Serialize for IpRanges {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|net| net.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(s: &str) -> IpRanges {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bare_addresses_and_blocks_match_what_they_should() {
        let set = ranges("52.60.234.183, 10.0.0.0/8, 2001:db8::/32");
        for inside in [
            "52.60.234.183",
            "10.1.2.3",
            "2001:db8::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(set.contains(ip(inside)), "{inside} should be inside");
        }
        for outside in [
            "52.60.234.184",
            "11.0.0.1",
            "2001:db9::1",
            "::1",
            "::ffff:52.60.234.184",
        ] {
            assert!(!set.contains(ip(outside)), "{outside} should be outside");
        }
    }

    #[test]
    fn mapped_entries_match_plain_ipv4_clients() {
        let set = ranges("::ffff:52.60.234.183, ::ffff:192.168.0.0/112");
        assert!(set.contains(ip("52.60.234.183")));
        assert!(set.contains(ip("192.168.3.4")));
        assert!(!set.contains(ip("192.169.0.1")));
    }

    #[test]
    fn garbage_is_refused_with_the_entry_named() {
        for bad in ["52.60.234", "10.0.0.0/33", "example.com", "1.2.3.4/"] {
            let err = bad.parse::<IpRanges>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn an_empty_list_contains_nothing() {
        let set = ranges("");
        assert!(set.is_empty());
        assert!(!set.contains(ip("127.0.0.1")));
    }
}
