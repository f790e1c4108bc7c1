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
use crate::policy::PathForms;
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
    /// A segment a Windows server reads as another name.
    WindowsName,
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
            NotCanonical::WindowsName => write!(
                f,
                "a path segment ending in '.' or ' ', or naming an NTFS stream (::$DATA): \
                 Windows servers read it as another name"
            ),
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

impl NotCanonical {
    /// The forms a rule may opt into (`non_canonical = [...]`).
    pub fn tolerable(&self) -> bool {
        matches!(
            self,
            NotCanonical::EncodedSlash | NotCanonical::Parameters | NotCanonical::NonAscii
        )
    }
}

/// The canonical form of an origin-form path (no query), or why it has none.
pub fn path(raw: &str) -> Result<String, NotCanonical> {
    path_with(raw, PathForms::default()).map(|(p, _)| p)
}

/// A path canonical except for forms a rule may opt into: what is
/// forwarded, how the most decoding server reads it, and which forms it has.
#[derive(Debug, PartialEq, Eq)]
pub struct Tolerated {
    pub forwarded: String,
    /// `%2F` decoded to `/`, `;` parameters stripped: the policy decides this
    /// reading too, and both must come to the same rule.
    pub read_as: String,
    pub forms: PathForms,
}

/// The path with `%2F`, `;` parameters and escaped UTF-8 kept (as `%XX`),
/// provided no reading of it has a dot segment or an empty segment: a
/// server that decodes `%2F` or strips `;x` must not see `..` where the
/// policy saw a name (`/..%2Fadmin`, `/..;/admin`).
pub fn tolerated(raw: &str) -> Result<Tolerated, NotCanonical> {
    let (forwarded, forms) = path_with(raw, PathForms::all())?;
    let refused = || {
        if forms.encoded_slash {
            NotCanonical::EncodedSlash
        } else {
            NotCanonical::Parameters
        }
    };
    // The path as sent, read by the most decoding server (every escape
    // decoded, `;x` stripped), must have no dot or empty segment at all:
    // a `..` the canonical form removed could otherwise undo an encoded
    // `/` that a server decodes first (`/public/..%2f/../admin`).
    let decoded = unescape(raw);
    let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        let name = seg.split(|&b| b == b';').next().unwrap_or(&[]);
        if name == b"." || name == b".." || (name.is_empty() && i != last) {
            return Err(refused());
        }
    }
    let mut read_as = String::with_capacity(forwarded.len());
    let decoded = forwarded.replace("%2F", "/").replace("%3B", ";");
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        let name = seg.split(';').next().unwrap_or("");
        if matches!(name, "." | "..") || (name.is_empty() && i != last) {
            return Err(refused());
        }
        read_as.push('/');
        read_as.push_str(name);
    }
    Ok(Tolerated {
        forwarded,
        read_as,
        forms,
    })
}

/// The canonical path, with the forms `accept` allows kept; which of them
/// the path has.
fn path_with(raw: &str, accept: PathForms) -> Result<(String, PathForms), NotCanonical> {
    let mut used = PathForms::default();
    if raw == "*" {
        return Ok((raw.to_string(), used));
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
                    b'/' if accept.encoded_slash => {
                        used.encoded_slash = true;
                        decoded.push_str("%2F");
                    }
                    b';' if accept.parameters => {
                        used.parameters = true;
                        decoded.push_str("%3B");
                    }
                    0x80..=0xff if accept.non_ascii => {
                        used.non_ascii = true;
                        decoded.push_str(&format!("%{v:02X}"));
                    }
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
            b';' if accept.parameters => {
                used.parameters = true;
                decoded.push(';');
                i += 1;
            }
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
    // IIS and http.sys strip a segment's trailing dots and spaces, and
    // `::$DATA` names a file's default stream: `/admin./x`, `/admin%20/x`
    // and `/admin::$DATA/x` are `/admin/x` to them (found by an attack
    // pass: a deny on `/admin/**` did not see them).
    for s in &out {
        let name = unescape(s);
        let lower = name.to_ascii_lowercase();
        if name.ends_with(b".")
            || name.ends_with(b" ")
            || memchr::memmem::find(&lower, b":$").is_some()
        {
            return Err(NotCanonical::WindowsName);
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
    // Escaped bytes outside ASCII must be UTF-8, and shortest-form (an
    // overlong `%C0%AE` is a '.' to a lax decoder).
    if used.non_ascii && std::str::from_utf8(&unescape(&p)).is_err() {
        return Err(NotCanonical::NonAscii);
    }
    Ok((p, used))
}

fn unescape(p: &str) -> Vec<u8> {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn opted_in_forms_are_kept_when_every_reading_agrees() {
        let t = tolerated("/files/a%2fb;v=1/c%c3%a9").unwrap();
        assert_eq!(t.forwarded, "/files/a%2Fb;v=1/c%C3%A9");
        assert_eq!(t.read_as, "/files/a/b/c%C3%A9");
        assert!(t.forms.encoded_slash && t.forms.parameters && t.forms.non_ascii);
        for raw in [
            "/public/..%2fadmin",
            "/public/%2e%2e%2fadmin",
            "/..;/admin",
            "/a/.;x/b",
            "/a%2F%2Fb",
            "/public/..%2f/../admin",
            "/a/./b%2Fc",
        ] {
            assert!(tolerated(raw).is_err(), "{raw}");
        }
        // Overlong UTF-8 ('.' as %C0%AE) and invalid sequences.
        assert_eq!(tolerated("/a/%C0%AE%C0%AE/x"), Err(NotCanonical::NonAscii));
        assert_eq!(tolerated("/a/%FF"), Err(NotCanonical::NonAscii));
        // Still refused, whatever a rule says.
        assert!(tolerated("/a%5Cb").is_err() && tolerated("/a%00").is_err());
    }

    /// Names a Windows server reads as others are refused (found by an
    /// attack pass).
    #[test]
    fn windows_names_are_refused() {
        for raw in [
            "/admin./x",
            "/admin%2e/x",
            "/admin%20/x",
            "/admin.%20/x",
            "/Admin./x",
            "/admin::$DATA/x",
            "/admin:$data",
            "/a/b.",
        ] {
            assert_eq!(path(raw), Err(NotCanonical::WindowsName), "{raw}");
        }
        for raw in [
            "/v1/models/gemini:streamGenerateContent",
            "/a.b/c",
            "/x/.well-known/y",
        ] {
            assert!(path(raw).is_ok(), "{raw}");
        }
    }

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

        /// With every opt-out on (`non_canonical = [...]`), a path a lenient
        /// server routes under /admin still has a reading under /admin (so
        /// the rule denying /admin decides), or is refused.
        #[test]
        fn opted_in_forms_do_not_reach_admin_either(segs in prop::collection::vec(segment(), 1..6)) {
            let raw = format!("/{}", segs.join("/"));
            let routed = lenient_server(&raw).to_ascii_lowercase();
            let under = |p: &str| {
                let p = p.to_ascii_lowercase();
                p == "/admin" || p.starts_with("/admin/")
            };
            if under(&routed) {
                let t = match path(&raw) {
                    Ok(c) => Tolerated { forwarded: c.clone(), read_as: c, forms: PathForms::default() },
                    Err(_) => match tolerated(&raw) {
                        Ok(t) => t,
                        Err(_) => return Ok(()),
                    },
                };
                prop_assert!(
                    under(&t.forwarded) || under(&t.read_as),
                    "{raw} routes to {routed} but decides on {} / {}", t.forwarded, t.read_as
                );
            }
        }
    }
}
