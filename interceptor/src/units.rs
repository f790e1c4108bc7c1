//! Sizes and durations as people write them, one reading everywhere (the
//! policy files, `approvals approve --window`): "64KiB", "10MB", "90s",
//! "2h", "30d", "1h 30m". Read by kept crates (bytesize, humantime), not by
//! hand.

/// A size: bytes, or a number and a unit (`KB` is 1000 bytes, `KiB` 1024).
pub fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if !t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "{t:?} is not a size like 1048576, \"64KB\" or \"10MiB\""
        ));
    }
    let b: bytesize::ByteSize = t.parse().map_err(|_| {
        format!("{t:?} is not a size like 1048576, \"64KB\" or \"10MiB\" (units B, KB, KiB, MB, MiB, GB, GiB)")
    })?;
    // The crate saturates on overflow: a size that large is a mistake.
    if b.as_u64() == u64::MAX {
        return Err(format!("{t:?} is too large"));
    }
    Ok(b.as_u64())
}

/// A duration other than zero: "90s", "5m", "2h", "1d", "1h 30m".
pub fn duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("{t:?} is not a duration like \"90s\", \"5m\", \"2h\" or \"1d\" ({e})")
    })?;
    if d.is_zero() {
        return Err("a duration of 0".into());
    }
    Ok(d)
}

/// Wall-clock time in unix milliseconds (0 before 1970), as records keep it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes_and_durations_as_written() {
        assert_eq!(size("10MiB"), Ok(10 << 20));
        assert_eq!(size("64KB"), Ok(64_000));
        assert_eq!(size("64 KiB"), Ok(64 << 10));
        assert_eq!(size("1048576"), Ok(1 << 20));
        assert!(size("MB").is_err());
        assert!(size("10 parsecs").is_err());
        assert!(size("99999999999999999999GiB").is_err());
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").unwrap_err().contains("not a duration"));
    }
}
