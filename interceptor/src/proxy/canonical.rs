//! The canonical request head: what the policy decides on is exactly what
//! the upstream receives. Servers normalise request targets differently
//! (nginx decodes every escape and resolves dot segments, werkzeug decodes
//! but treats `%2F` apart, Tomcat strips `;` parameters...), so a raw path
//! matched against a rule and forwarded unchanged can reach what the rule
//! denies. One form is decided on and forwarded; what has no single reading
//! across servers is refused.
//!
//! The form (RFC 3986 §6.2.2, plus merged slashes): percent-encoded
//! unreserved characters decoded, the other escapes with upper-case hex,
//! `//` merged, `.` and `..` segments removed (§5.2.4). Refused: `%2F`
//! (an encoded `/`), `%5C` and `\`, `%00` and other control characters,
//! `;` (path parameters), escapes that are not two hex digits, and bytes
//! outside ASCII. Hand-written: no kept crate applies these rules (the
//! `url` crate keeps `//` and parameters, and decodes nothing).
use std::fmt;

/// Why a request target has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCanonical {
    Method(String),
    NotOriginForm,
    EncodedSlash,
    Backslash,
    Control,
    Parameters,
    BadEscape,
    NonAscii,
}

impl fmt::Display for NotCanonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotCanonical::Method(m) => write!(
                f,
                "method {m:?} is not upper case: servers differ on whether it is the same method"
            ),
            NotCanonical::NotOriginForm => write!(f, "the path must start with '/'"),
            NotCanonical::EncodedSlash => write!(
                f,
                "%2F (an encoded '/') in the path: servers differ on whether it separates segments"
            ),
            NotCanonical::Backslash => {
                write!(f, "'\\' or %5C in the path: some servers read it as '/'")
            }
            NotCanonical::Control => {
                write!(f, "a control character (such as %00) in the path")
            }
            NotCanonical::Parameters => write!(
                f,
                "';' in the path: some servers strip path parameters, others do not"
            ),
            NotCanonical::BadEscape => {
                write!(f, "'%' not followed by two hex digits in the path")
            }
            NotCanonical::NonAscii => write!(f, "bytes outside ASCII in the path"),
        }
    }
}

/// A method as the policy sees it: a token in upper case. Lower- or
/// mixed-case spellings are refused (some servers fold them, some do not).
pub fn method(m: &str) -> Result<&str, NotCanonical> {
    if m.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(NotCanonical::Method(m.to_string()));
    }
    Ok(m)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The canonical form of an origin-form path (no query), or why it has none.
pub fn path(raw: &str) -> Result<String, NotCanonical> {
    if raw == "*" {
        return Ok(raw.to_string());
    }
    if !raw.starts_with('/') {
        return Err(NotCanonical::NotOriginForm);
    }
    // Pass 1: escapes, with the refusals; unreserved ones decoded.
    let b = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(NotCanonical::BadEscape);
                };
                let v = h * 16 + l;
                match v {
                    b'/' => return Err(NotCanonical::EncodedSlash),
                    b'\\' => return Err(NotCanonical::Backslash),
                    b';' => return Err(NotCanonical::Parameters),
                    0..=0x1f | 0x7f => return Err(NotCanonical::Control),
                    0x80..=0xff => return Err(NotCanonical::NonAscii),
                    v if is_unreserved(v) => decoded.push(v as char),
                    v => decoded.push_str(&format!("%{v:02X}")),
                }
                i += 3;
            }
            b'\\' => return Err(NotCanonical::Backslash),
            b';' => return Err(NotCanonical::Parameters),
            0..=0x1f | 0x7f => return Err(NotCanonical::Control),
            0x80..=0xff => return Err(NotCanonical::NonAscii),
            c => {
                decoded.push(c as char);
                i += 1;
            }
        }
    }
    // Pass 2: segments, with `//` merged and dot segments removed.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() || (trailing && !p.ends_with('/')) {
        p.push('/');
    }
    Ok(p)
}

/// The canonical request target: canonical path, then the query as sent.
pub fn path_and_query(path_raw: &str, query: Option<&str>) -> Result<String, NotCanonical> {
    let p = path(path_raw)?;
    Ok(match query {
        Some(q) => format!("{p}?{q}"),
        None => p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_of_the_attack_pass() {
        for (raw, want) in [
            ("/%61dmin/x", "/admin/x"),
            ("/adm%69n", "/admin"),
            ("//admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/public/../admin/x", "/admin/x"),
            ("/public/%2e%2e/admin/x", "/admin/x"),
            ("/public/%2E%2E/admin/", "/admin/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("/a%20b", "/a%20b"),
            ("/a%2a", "/a%2A"),
            ("/~user/%7Eb", "/~user/~b"),
        ] {
            assert_eq!(path(raw).as_deref(), Ok(want), "{raw}");
        }
        for (raw, why) in [
            ("/public/..%2fadmin/x", NotCanonical::EncodedSlash),
            ("/admin%2fx", NotCanonical::EncodedSlash),
            ("/admin;x", NotCanonical::Parameters),
            ("/admin%3bx", NotCanonical::Parameters),
            ("/a\\admin", NotCanonical::Backslash),
            ("/a%5cadmin", NotCanonical::Backslash),
            ("/a%00", NotCanonical::Control),
            ("/a%zz", NotCanonical::BadEscape),
            ("/a%4", NotCanonical::BadEscape),
            ("/caf%C3%A9", NotCanonical::NonAscii),
            ("admin", NotCanonical::NotOriginForm),
        ] {
            assert_eq!(path(raw), Err(why), "{raw}");
        }
        assert!(method("GET").is_ok() && method("M-SEARCH").is_ok());
        assert!(method("delete").is_err() && method("Delete").is_err());
    }

    /// How a server that decodes every escape, merges slashes, strips
    /// `;` parameters, reads `\` as `/` and resolves dot segments (the union
    /// of what nginx, werkzeug and Tomcat do) would route a raw path.
    fn lenient_server(raw: &str) -> String {
        let mut bytes = Vec::new();
        let b = raw.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                )
            {
                bytes.push(h * 16 + l);
                i += 3;
                continue;
            }
            bytes.push(b[i]);
            i += 1;
        }
        let s = String::from_utf8_lossy(&bytes).replace('\\', "/");
        let mut out: Vec<String> = Vec::new();
        for seg in s.split('/') {
            let seg = seg.split(';').next().unwrap_or("");
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s.to_string()),
            }
        }
        format!("/{}", out.join("/"))
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("admin".to_string()),
            Just("%61dmin".to_string()),
            Just("adm%69n".to_string()),
            Just("ADMIN".to_string()),
            Just("public".to_string()),
            Just("..".to_string()),
            Just("%2e%2e".to_string()),
            Just(".".to_string()),
            Just("".to_string()),
            Just("..%2f".to_string()),
            Just("%2f".to_string()),
            Just("a;b".to_string()),
            Just("%5c".to_string()),
            Just("\\".to_string()),
            Just("x".to_string()),
            "[a-z%0-9.]{1,6}",
        ]
    }

    proptest! {
        /// Whenever a lenient server would route a generated path under
        /// /admin, the canonical form is under /admin too (so the rule that
        /// denies /admin matches it) or the path is refused.
        #[test]
        fn no_path_reaches_admin_past_the_canonical_form(segs in prop::collection::vec(segment(), 1..6)) {
            let raw = format!("/{}", segs.join("/"));
            let routed = lenient_server(&raw);
            if routed == "/admin" || routed.starts_with("/admin/") {
                match path(&raw) {
                    Err(_) => {}
                    Ok(c) => prop_assert!(
                        c == "/admin" || c.starts_with("/admin/"),
                        "{raw} routes to {routed} but decides on {c}"
                    ),
                }
            }
            // And the canonical form is a fixed point.
            if let Ok(c) = path(&raw) {
                prop_assert_eq!(path(&c), Ok(c.clone()));
            }
        }
    }
}
