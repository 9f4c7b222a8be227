use std::net::IpAddr;

use libp2p::Multiaddr;

use crate::Error;

/// Parses the address forms a user may give: `tcp://host:port`, `host:port`, or a multiaddr
/// (`/ip4/…/tcp/…`, `/ip6/…/tcp/…`, `/dns/…/tcp/…`, optionally ending in `/p2p/<peer id>`).
pub fn parse_address(address: &str) -> Result<Multiaddr, Error> {
    let bad = |reason: &str| Error::BadAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let s = address.trim();
    if s.starts_with('/') {
        let m: Multiaddr = s
            .parse()
            .map_err(|e: libp2p::multiaddr::Error| bad(&e.to_string()))?;
        if !m
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
        {
            return Err(bad("a multiaddr needs a /tcp/PORT part"));
        }
        return Ok(m);
    }
    let rest = match s.split_once("://") {
        Some(("tcp", rest)) => rest,
        Some((scheme, _)) => return Err(bad(&format!("unsupported scheme `{scheme}`"))),
        None => s,
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let text = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => format!("/ip4/{ip}/tcp/{port}"),
        Ok(IpAddr::V6(ip)) => format!("/ip6/{ip}/tcp/{port}"),
        Err(_) => {
            if !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
            {
                return Err(bad("the host is neither an IP address nor a DNS name"));
            }
            format!("/dns/{host}/tcp/{port}")
        }
    };
    text.parse()
        .map_err(|e: libp2p::multiaddr::Error| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        parse_address(s).unwrap().to_string()
    }

    #[test]
    fn every_address_form_a_user_may_give_is_understood() {
        assert_eq!(p("tcp://127.0.0.1:4001"), "/ip4/127.0.0.1/tcp/4001");
        assert_eq!(p("127.0.0.1:4001"), "/ip4/127.0.0.1/tcp/4001");
        assert_eq!(p("localhost:4001"), "/dns/localhost/tcp/4001");
        assert_eq!(p("tcp://seed.example:4001"), "/dns/seed.example/tcp/4001");
        assert_eq!(p("[::1]:4001"), "/ip6/::1/tcp/4001");
        assert_eq!(p("/ip4/10.0.0.1/tcp/4001"), "/ip4/10.0.0.1/tcp/4001");
        assert_eq!(p(" /dns/seed/tcp/4001 "), "/dns/seed/tcp/4001");
    }

    #[test]
    fn malformed_addresses_are_clear_errors() {
        for bad in [
            "",
            "tcp://",
            "host",
            "host:99999",
            "http://x:1",
            "/ip4/1.2.3.4",
            "/nonsense",
            "a b:1",
        ] {
            let e = parse_address(bad).unwrap_err();
            assert!(matches!(e, Error::BadAddress { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("expected tcp://host:port"), "{e}");
        }
    }
}
