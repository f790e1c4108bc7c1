//! What the client speaks, from its first bytes (peeked, not consumed).
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS handshake record.
    Tls,
    /// HTTP/1.x request line or the HTTP/2 prior-knowledge preface.
    Http,
    /// Anything else, or a client that waits for the server to speak.
    Opaque,
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

pub fn classify(b: &[u8]) -> Option<Protocol> {
    if b.is_empty() {
        return None;
    }
    // TLS record: handshake (22), version 3.x.
    if b[0] == 0x16 {
        return if b.len() < 2 {
            None
        } else {
            Some(if b[1] == 3 {
                Protocol::Tls
            } else {
                Protocol::Opaque
            })
        };
    }
    if let Some(p) = request_line(b) {
        return p;
    }
    for m in METHODS.iter().copied().chain([H2_PREFACE]) {
        let n = m.len().min(b.len());
        if b[..n] == m[..n] {
            return if n == m.len() {
                Some(Protocol::Http)
            } else {
                None
            };
        }
    }
    Some(Protocol::Opaque)
}

/// Any method token (letters, any case) then an origin-, asterisk- or
/// absolute-form target is HTTP: an unusual spelling (`delete /x`) is then
/// parsed, and refused as non-canonical, instead of passing as opaque bytes.
/// `Some(None)`: too few bytes yet to tell.
fn request_line(b: &[u8]) -> Option<Option<Protocol>> {
    let token = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    if token == 0 || token > 16 {
        return None;
    }
    match b.get(token) {
        None => Some(None),
        Some(b' ') => match b.get(token + 1) {
            None => Some(None),
            Some(b'/' | b'*' | b'h' | b'H') => Some(Some(Protocol::Http)),
            Some(_) => None,
        },
        Some(_) => None,
    }
}

/// Peeks until the bytes say what they are, or `timeout` passes.
pub async fn protocol(conn: &TcpStream, timeout: Duration) -> Protocol {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, conn.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Protocol::Opaque,
        };
        if n == 0 {
            return Protocol::Opaque;
        }
        if let Some(p) = classify(&buf[..n]) {
            return p;
        }
        if tokio::time::Instant::now() >= deadline {
            return Protocol::Opaque;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes() {
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM"), Some(Protocol::Http));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"delete /items/1 HTTP/1.1"), Some(Protocol::Http));
        assert_eq!(classify(b"get http://a/ HTTP/1.1"), Some(Protocol::Http));
        assert_eq!(classify(b"get key\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"delete"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
        assert_eq!(
            classify(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            Some(Protocol::Opaque)
        );
    }
}
