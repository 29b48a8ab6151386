//! `client_ip::resolve` on any peer, any `X-Forwarded-For` values and any
//! trusted-proxy list: the client is the peer, or an address written in the
//! header, and an untrusted peer is always the client itself.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use hookrelay::config::ip_ranges::IpRanges;
use hookrelay::ingress::client_ip::{parse_entry, resolve};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    peer: IpAddr,
    forwarded_for: Vec<String>,
    /// Proxies as (address, prefix length), so most lists parse.
    trusted: Vec<(IpAddr, u8)>,
}

fuzz_target!(|input: Input| {
    let list: Vec<String> = input
        .trusted
        .iter()
        .map(|(addr, prefix)| format!("{addr}/{}", prefix % if addr.is_ipv4() { 33 } else { 129 }))
        .collect();
    let Ok(trusted) = list.join(",").parse::<IpRanges>() else {
        return;
    };
    let values = input.forwarded_for.iter().map(String::as_str);

    let client = resolve(input.peer, values, &trusted);

    let peer = input.peer.to_canonical();
    let written = || {
        input
            .forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .filter_map(parse_entry)
            .any(|addr| addr == client)
    };
    assert!(client == peer || written(), "{client} came from nowhere");
    if !trusted.contains(peer) {
        assert_eq!(client, peer, "an untrusted peer must be the client");
    }
});
