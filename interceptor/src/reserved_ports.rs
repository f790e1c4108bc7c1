//! `net.ipv4.ip_local_reserved_ports` (it covers IPv6 too): the proxy and
//! admin ports are taken out of the ephemeral range, so no workload socket
//! can be given one by the kernel. `listen()` without `bind()` and
//! `connect()` pick a port without any bind hook running; only this keeps
//! them off the proxy's ports (a port outside `ip_local_port_range` needs
//! nothing).
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The sysctl's format: comma-separated ports and `a-b` ranges.
pub fn parse(list: &str) -> Result<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for part in list
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u16 = a
            .trim()
            .parse()
            .with_context(|| format!("bad port {part:?}"))?;
        let b: u16 = b
            .trim()
            .parse()
            .with_context(|| format!("bad port {part:?}"))?;
        if a > b {
            bail!("bad range {part:?}");
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// Back to the sysctl's format, with runs folded into ranges.
pub fn format(ports: &BTreeSet<u16>) -> String {
    let mut parts = Vec::new();
    let mut it = ports.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end.wrapping_add(1))) && end != u16::MAX {
            end = it.next().unwrap();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The ephemeral range (`ip_local_port_range`).
pub fn ephemeral_range() -> Result<(u16, u16)> {
    let text = std::fs::read_to_string(RANGE).with_context(|| format!("reading {RANGE}"))?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => bail!("{RANGE}: unexpected {text:?}"),
    }
}

/// Ports the kernel could still hand out as ephemeral ports.
pub fn unprotected(ports: &[u16]) -> Result<Vec<u16>> {
    let (lo, hi) = ephemeral_range()?;
    let reserved =
        parse(&std::fs::read_to_string(RESERVED).with_context(|| format!("reading {RESERVED}"))?)?;
    Ok(ports
        .iter()
        .copied()
        .filter(|p| (lo..=hi).contains(p) && !reserved.contains(p))
        .collect())
}

/// Adds `ports` to the reserved list where they lie in the ephemeral range.
/// Fails with what to do when the sysctl cannot be written.
pub fn reserve(ports: &[u16]) -> Result<()> {
    let missing = unprotected(ports)?;
    if missing.is_empty() {
        return Ok(());
    }
    let mut reserved = parse(&std::fs::read_to_string(RESERVED)?)?;
    reserved.extend(&missing);
    std::fs::write(RESERVED, format(&reserved)).with_context(|| {
        format!(
            "port(s) {missing:?} lie in the ephemeral range and could be autobound by a workload; \
             reserving them in {RESERVED} failed: run `sysctl -w net.ipv4.ip_local_reserved_ports=...` \
             with them added, or choose ports outside `ip_local_port_range`"
        )
    })?;
    tracing::info!(ports = ?missing, "reserved in net.ipv4.ip_local_reserved_ports");
    Ok(())
}

/// Removes `ports` from the reserved list (`interceptor detach`).
pub fn release(ports: &[u16]) -> Result<()> {
    let mut reserved = parse(&std::fs::read_to_string(RESERVED)?)?;
    let before = reserved.len();
    for p in ports {
        reserved.remove(p);
    }
    if reserved.len() != before {
        std::fs::write(RESERVED, format(&reserved))
            .with_context(|| format!("writing {RESERVED}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_sysctl_format() {
        let s = parse("15000-15001, 8080,9000-9000\n").unwrap();
        assert_eq!(
            s.iter().copied().collect::<Vec<_>>(),
            vec![8080, 9000, 15000, 15001]
        );
        assert_eq!(format(&s), "8080,9000,15000-15001");
        assert!(parse("").unwrap().is_empty());
        assert!(parse("5-3").is_err());
        assert!(parse("x").is_err());
        assert_eq!(format(&parse("65534-65535").unwrap()), "65534-65535");
    }
}
