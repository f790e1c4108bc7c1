//! The shapes an injected secret comes back in when an upstream echoes it:
//! a server may base64- or hex-encode what it was sent (in a debug field, a
//! token it derives, a redirect), percent- or JSON-escape it, or change its
//! case. Every such form is derived once, when the masker is built, and all
//! are found in one case-insensitive multi-pattern pass (aho-corasick).
//!
//! Out of reach, by nature: a reversed or otherwise transformed secret, one
//! split across responses (`Range` halves, one character per request), and
//! one read back through a route that does not inject it.
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Below this length only the literal and escaped forms are derived: the
/// base64 fragments of a short secret are short enough to occur by chance.
const MIN_ENCODED: usize = 8;

/// A secret at least this long is also scrubbed with up to FRAGMENT_SHORT
/// of its bytes missing at either end: an echo one byte short gives the
/// rest away to a guess of one character (found by an attack pass). Every
/// such fragment holds the secret's middle (`core`), which is what the
/// search looks for; the fragment is read out from it.
pub const MIN_FRAGMENTED: usize = 16;
pub const FRAGMENT_SHORT: usize = 4;

/// The part of `secret` every fragment of it holds, when it has fragments.
pub fn core(secret: &[u8]) -> Option<&[u8]> {
    (secret.len() >= MIN_FRAGMENTED).then(|| &secret[FRAGMENT_SHORT..secret.len() - FRAGMENT_SHORT])
}

/// Every form of `secret` to scrub (matched without regard to ASCII case).
pub fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![secret.to_vec()];
    // Percent- and JSON-escaped, every byte (a partial escape is the
    // literal plus these).
    out.push(
        secret
            .iter()
            .flat_map(|b| format!("%{b:02X}").into_bytes())
            .collect(),
    );
    if secret.is_ascii() {
        out.push(
            secret
                .iter()
                .flat_map(|b| format!("\\u{:04x}", b).into_bytes())
                .collect(),
        );
    }
    if secret.len() >= MIN_ENCODED {
        out.push(hex(secret).into_bytes());
        // Base64 of the secret inside a longer value, at each of the three
        // alignments: the characters that depend on the secret's bytes
        // alone (with or without padding, either alphabet).
        for k in 0..3usize {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(secret);
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let enc = engine.encode(&buf).into_bytes();
                let skip = (k * 8).div_ceil(6);
                let full = buf.len() * 8 / 6;
                if full > skip {
                    out.push(enc[skip..full].to_vec());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    /// True when some derived form occurs in `text` (case-insensitively).
    fn caught(secret: &str, text: &str) -> bool {
        let t = text.to_ascii_lowercase();
        forms(secret.as_bytes())
            .iter()
            .any(|f| t.contains(&String::from_utf8_lossy(f).to_ascii_lowercase()))
    }

    #[test]
    fn encodings_a_server_echoes_are_caught() {
        let s = "sk-LAB-5f2a9c81d7+/?";
        for prefix in ["", "a", "ab", "abc"] {
            let raw = format!("{prefix}{s}");
            assert!(
                caught(s, &STANDARD.encode(&raw)),
                "std base64 after {prefix:?}"
            );
            assert!(
                caught(s, &URL_SAFE.encode(&raw)),
                "url base64 after {prefix:?}"
            );
            assert!(
                caught(s, &STANDARD_NO_PAD.encode(format!("{raw}xyz"))),
                "followed"
            );
        }
        assert!(caught(s, &hex(s.as_bytes())));
        assert!(caught(s, &hex(s.as_bytes()).to_uppercase()));
        assert!(caught(s, &s.to_uppercase()));
        let json: String = s.chars().map(|c| format!("\\u{:04X}", c as u32)).collect();
        assert!(caught(s, &json));
        let pct: String = s.bytes().map(|b| format!("%{b:02x}")).collect();
        assert!(caught(s, &pct));
        // Unrelated text is not.
        assert!(!caught(s, "sk-LAB-0000 aGVsbG8gd29ybGQ= 68656c6c6f"));
        // Every fragment up to four bytes short at either end holds the
        // core; the secret's middle is all it is.
        let core = core(s.as_bytes()).unwrap();
        for (cut_front, cut_back) in [(1, 0), (0, 1), (2, 2), (4, 0), (0, 4), (4, 4)] {
            let fragment = &s.as_bytes()[cut_front..s.len() - cut_back];
            assert!(fragment.windows(core.len()).any(|w| w == core));
        }
        assert_eq!(core.len(), s.len() - 8);
        assert!(super::core(b"short-secret").is_none());
    }
}
