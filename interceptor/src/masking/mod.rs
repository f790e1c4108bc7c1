//! Inline masking of response bodies, streaming.
//!
//! A profile (`[mask.NAME]` in a policy file) names detectors, per-detector
//! replacements, custom regexes and JSON field paths. The stream masker
//! holds back only what could still grow into a secret (scan.rs says
//! where), at most `detectors::MAX_MATCH` bytes, so streams pass as they
//! arrive while a secret split across chunks is still caught whole. Secrets the proxy injected on the request are always
//! masked, whatever the profile.
pub mod body;
pub mod cpu_allowance;
pub mod detectors;
mod digit_map;
mod email;
mod escaped;
mod json;
pub mod json_array;
mod json_body;
mod line_breaks;
mod line_ends;
mod literals;
pub mod ndjson;
mod numeric;
mod scan;
mod secret_forms;
pub mod sniff;
pub mod sse;
pub mod sse_fields;
mod stream;

pub use json::JsonPath;
pub use stream::StreamMasker;

use detectors::Detector;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// `[REDACTED:card]`
    Redact,
    /// Letters and digits but the last four become `*`: `**** **** **** 1111`.
    KeepLast4,
    /// `[card:3f1a9c0e2b7d]`: a stable pseudonym (SHA-256 prefix), so equal
    /// values still correlate without being readable.
    Hash,
}

impl Replace {
    pub fn parse(s: &str) -> Result<Replace, String> {
        match s {
            "redact" => Ok(Replace::Redact),
            "last4" => Ok(Replace::KeepLast4),
            "hash" => Ok(Replace::Hash),
            other => Err(format!(
                "unknown replacement {other:?}; expected \"redact\", \"last4\" or \"hash\""
            )),
        }
    }

    pub fn apply(self, detector: &str, m: &[u8]) -> Vec<u8> {
        match self {
            Replace::Redact => format!("[REDACTED:{detector}]").into_bytes(),
            Replace::KeepLast4 => {
                let alnum = m.iter().filter(|c| c.is_ascii_alphanumeric()).count();
                let mut seen = 0;
                m.iter()
                    .map(|&c| {
                        if c.is_ascii_alphanumeric() {
                            seen += 1;
                            if seen + 4 > alnum { c } else { b'*' }
                        } else {
                            c
                        }
                    })
                    .collect()
            }
            Replace::Hash => {
                let d = ring::digest::digest(&ring::digest::SHA256, m);
                let hex: String = d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
                format!("[{detector}:{hex}]").into_bytes()
            }
        }
    }
}

/// What to do with a body the profile cannot inspect (unknown encoding,
/// JSON over the inspection limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uninspectable {
    Block,
    Pass,
}

/// A compiled masking profile.
pub struct Profile {
    pub name: String,
    pub detectors: Vec<Detector>,
    /// Where to look for each detector's matches.
    scanner: scan::Scanner,
    /// Per detector: its replacement, and `[REDACTED:name]` made once.
    replace_by_index: Vec<Replace>,
    redacted: Vec<Box<[u8]>>,
    pub json_paths: Vec<JsonPath>,
    /// Largest JSON body buffered for field paths.
    pub max_inspect: u64,
    pub on_uninspectable: Uninspectable,
    /// Server-sent event fields (JSON pointers, `*` for any key or index)
    /// that carry streamed text deltas, beyond the built-in LLM shapes.
    pub sse_text_paths: Vec<Vec<String>>,
    /// Media ranges a response may be (`type/subtype`, `type/*`,
    /// `type/*+suffix`); empty: any. Others are refused, not masked.
    pub content_types: Vec<(String, String)>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Profile {
    pub fn new(
        name: &str,
        detectors: Vec<Detector>,
        replace: BTreeMap<String, Replace>,
        json_paths: Vec<JsonPath>,
        max_inspect: u64,
        on_uninspectable: Uninspectable,
    ) -> Result<Profile, String> {
        let replace_by_index = detectors
            .iter()
            .map(|d| replace.get(&d.name).copied().unwrap_or(Replace::Redact))
            .collect();
        let redacted = detectors
            .iter()
            .map(|d| Replace::Redact.apply(&d.name, &[]).into_boxed_slice())
            .collect();
        Ok(Profile {
            name: name.into(),
            scanner: scan::Scanner::new(&detectors),
            replace_by_index,
            redacted,
            detectors,
            json_paths,
            max_inspect,
            on_uninspectable,
            sse_text_paths: Vec::new(),
            content_types: Vec::new(),
        })
    }

    /// Only the always-on part: secrets injected on the request.
    pub fn empty() -> Profile {
        Profile::new(
            "injected-only",
            Vec::new(),
            BTreeMap::new(),
            Vec::new(),
            0,
            Uninspectable::Block,
        )
        .expect("empty set")
    }

    /// Adds SSE text fields: each a JSON pointer ("/a/*/text").
    pub fn with_sse_text_paths(mut self, paths: &[String]) -> Result<Profile, String> {
        for p in paths {
            let Some(rest) = p.strip_prefix('/') else {
                return Err(format!(
                    "sse_text_paths: {p:?} must be a JSON pointer, starting with /"
                ));
            };
            let segs: Vec<String> = rest.split('/').map(str::to_string).collect();
            if segs.iter().any(String::is_empty) {
                return Err(format!("sse_text_paths: {p:?} has an empty segment"));
            }
            self.sse_text_paths.push(segs);
        }
        Ok(self)
    }

    /// Limits the media types of masked responses to these ranges.
    pub fn with_content_types(mut self, ranges: &[String]) -> Result<Profile, String> {
        for r in ranges {
            let lower = r.trim().to_ascii_lowercase();
            let range = lower
                .split_once('/')
                .filter(|(t, sub)| !t.is_empty() && !sub.is_empty() && (*t != "*" || *sub == "*"));
            let Some((t, sub)) = range else {
                return Err(format!(
                    "content_types: {r:?} is not a media range (type/subtype, type/*, type/*+json)"
                ));
            };
            self.content_types.push((t.to_string(), sub.to_string()));
        }
        Ok(self)
    }

    /// Whether a response of media type `t` (lower case) may be masked.
    pub fn allows_type(&self, t: &str) -> bool {
        if self.content_types.is_empty() {
            return true;
        }
        let (ty, sub) = t.split_once('/').unwrap_or((t, ""));
        self.content_types.iter().any(|(rt, rs)| {
            (rt == "*" || rt == ty)
                && (rs == "*"
                    || rs == sub
                    || rs
                        .strip_prefix('*')
                        .is_some_and(|suffix| suffix.starts_with('+') && sub.ends_with(suffix)))
        })
    }

    /// Appends what replaces `matched`, a match of detector number `i`.
    fn replace_into(&self, i: usize, matched: &[u8], out: &mut Vec<u8>) {
        match self.replace_by_index[i] {
            Replace::Redact => out.extend_from_slice(&self.redacted[i]),
            r => out.extend(r.apply(&self.detectors[i].name, matched)),
        }
    }
}

/// How many times each detector fired (never the values).
pub type Counts = BTreeMap<String, u64>;

/// Headers that carry framing, dates and validators: the profile's
/// detectors (phone numbers, say) would only corrupt them, and no secret
/// comes back in them. The injected secret is scrubbed from these too.
const STRUCTURAL: [http::HeaderName; 9] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
    http::header::TRANSFER_ENCODING,
    http::header::DATE,
    http::header::LAST_MODIFIED,
    http::header::EXPIRES,
    http::header::AGE,
    http::header::ETAG,
];

/// Masks header (or trailer) values in place: the injected secret in every
/// one, the profile's detectors in all but the structural ones. A value
/// that no longer makes a header value is replaced whole.
pub fn mask_headers(h: &mut http::HeaderMap, masker: &mut StreamMasker) {
    let names: Vec<http::HeaderName> = h.keys().cloned().collect();
    for name in names {
        // A name is no place for a value: one that holds a secret or a
        // detector's match is dropped whole.
        if masker.mask_value(name.as_str().as_bytes()) != name.as_str().as_bytes() {
            h.remove(&name);
            continue;
        }
        let structural = STRUCTURAL.contains(&name);
        let values: Vec<http::HeaderValue> = h.get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let masked: Vec<http::HeaderValue> = values
            .iter()
            .map(|v| {
                let out = if structural {
                    masker.scrub_injected(v.as_bytes())
                } else {
                    masker.mask_value(v.as_bytes())
                };
                if out == v.as_bytes() {
                    return v.clone();
                }
                changed = true;
                http::HeaderValue::from_bytes(&out)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("[REDACTED]"))
            })
            .collect();
        if changed {
            h.remove(&name);
            for v in masked {
                h.append(name.clone(), v);
            }
        }
    }
}

/// A profile for the tests: these built-in detectors (`"all"` for every
/// one), nothing else, blocking what it cannot inspect.
#[cfg(test)]
pub(crate) fn test_profile(names: &[&str]) -> Profile {
    let d = names
        .iter()
        .flat_map(|&n| match n {
            "all" => detectors::builtin_names().collect::<Vec<_>>(),
            n => vec![n],
        })
        .map(|n| detectors::builtin(n).unwrap())
        .collect();
    Profile::new(
        "t",
        d,
        Default::default(),
        vec![],
        1 << 20,
        Uninspectable::Block,
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_media_ranges() {
        let p = Profile::empty()
            .with_content_types(&[
                "application/json".into(),
                "text/*".into(),
                "application/*+json".into(),
            ])
            .unwrap();
        for t in [
            "application/json",
            "text/plain",
            "text/event-stream",
            "application/problem+json",
        ] {
            assert!(p.allows_type(t), "{t}");
        }
        for t in [
            "application/pdf",
            "application/jsonp",
            "image/png",
            "application/json5",
        ] {
            assert!(!p.allows_type(t), "{t}");
        }
        assert!(Profile::empty().allows_type("application/pdf"));
        for bad in ["json", "*/json", "/x", "text/"] {
            assert!(
                Profile::empty().with_content_types(&[bad.into()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn replacements() {
        assert_eq!(Replace::Redact.apply("card", b"4111"), b"[REDACTED:card]");
        assert_eq!(
            Replace::KeepLast4.apply("card", b"4111 1111 1111 1234"),
            b"**** **** **** 1234"
        );
        let h = String::from_utf8(Replace::Hash.apply("email", b"a@b.co")).unwrap();
        assert!(
            h.starts_with("[email:") && h.len() == "[email:]".len() + 12,
            "{h}"
        );
        assert_eq!(
            Replace::Hash.apply("email", b"a@b.co"),
            Replace::Hash.apply("email", b"a@b.co")
        );
    }
}
