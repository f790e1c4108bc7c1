//! Destination matchers: `*`, `IP`, `CIDR`, `IP:PORT`, `CIDR:PORTS`,
//! `[IPv6]:PORT`, `[IPv6/len]:PORTS`, `*:PORTS`, where PORTS is `N`, `N-M` or `*`.
//!
//! Hand-written on purpose: it is a small policy syntax of our own (no
//! standard format covers "CIDR plus port range"); IPs and CIDRs themselves
//! are parsed by std and ipnet.
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `None`: any address.
    net: Option<IpNet>,
    /// Inclusive range; `None`: any port.
    ports: Option<(u16, u16)>,
}

impl Destination {
    pub fn matches(&self, dst: SocketAddr) -> bool {
        self.net.is_none_or(|n| n.contains(&dst.ip()))
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&dst.port()))
    }

    /// Whether it names addresses (not `*`, not a /0): only such a
    /// destination pins where a credential or a tunnel may go.
    pub fn pins_address(&self) -> bool {
        self.net.is_some_and(|n| n.prefix_len() > 0)
    }

    pub fn parse(s: &str) -> Result<Destination, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty destination".into());
        }
        let (host, ports) = split_host_port(s)?;
        let net = match host {
            "*" => None,
            h => Some(parse_net(h)?),
        };
        let ports = match ports {
            None | Some("*") => None,
            Some(p) => Some(parse_ports(p)?),
        };
        Ok(Destination { net, ports })
    }
}

fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']' after the IPv6 address"))?;
        return match after {
            "" => Ok((host, None)),
            a => match a.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!("{s:?}: expected ':PORT' after ']'")),
            },
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (h, p) = s.split_once(':').unwrap();
            Ok((h, Some(p)))
        }
        // Bare IPv6 (possibly with /len), no port.
        _ => Ok((s, None)),
    }
}

fn parse_net(h: &str) -> Result<IpNet, String> {
    if let Ok(n) = h.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    if h.chars().any(|c| c.is_ascii_alphabetic()) && !h.contains('/') {
        return Err(format!(
            "{h:?} is a host name; `destination` matches the connection's address \
             (IP or CIDR): name hosts with `host = [...]`, which matches the TLS \
             name or the HTTP Host of each request"
        ));
    }
    Err(format!("{h:?} is not an IP address or CIDR"))
}

fn parse_ports(p: &str) -> Result<(u16, u16), String> {
    let num = |x: &str| {
        x.parse::<u16>()
            .map_err(|_| format!("{x:?} is not a port number (1-65535)"))
    };
    let (lo, hi) = match p.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(p)?;
            (n, n)
        }
    };
    if lo == 0 || lo > hi {
        return Err(format!("{p:?} is not a valid port range"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pat: &str, addr: &str) -> bool {
        Destination::parse(pat)
            .unwrap()
            .matches(addr.parse().unwrap())
    }

    #[test]
    fn forms() {
        assert!(m("*", "1.2.3.4:5"));
        assert!(m("*:443", "[2001:db8::1]:443"));
        assert!(!m("*:443", "1.2.3.4:80"));
        assert!(m("10.0.0.0/8", "10.9.9.9:22"));
        assert!(!m("10.0.0.0/8", "11.0.0.1:22"));
        assert!(m("10.0.0.0/8:8000-8999", "10.0.0.1:8500"));
        assert!(!m("10.0.0.0/8:8000-8999", "10.0.0.1:9000"));
        assert!(m("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(m("::1", "[::1]:1"));
        assert!(m("[::1]:80", "[::1]:80"));
        assert!(m("[fd00::/8]:*", "[fd12::1]:80"));
        assert!(m("2001:db8::/32", "[2001:db8::5]:80"));
    }

    #[test]
    fn errors_are_specific() {
        assert!(
            Destination::parse("api.github.com:443")
                .unwrap_err()
                .contains("host name")
        );
        assert!(Destination::parse("1.2.3.4:0").is_err());
        assert!(Destination::parse("1.2.3.4:9-8").is_err());
        assert!(Destination::parse("[::1").unwrap_err().contains("]"));
        assert!(
            Destination::parse("300.1.1.1")
                .unwrap_err()
                .contains("not an IP")
        );
    }
}
