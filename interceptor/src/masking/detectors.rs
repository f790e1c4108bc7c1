//! Built-in detectors: a pattern defines what matches, a validator (Luhn,
//! IBAN mod 97, SSN area rules) drops look-alikes. For speed each built-in
//! also says where its matches can be (an `Anchor`), so the scanner
//! (scan.rs) searches only there, with a DFA compiled once per process;
//! custom detectors are searched with the regex crate over the whole text.
//!
//! The stream masker holds back at most MAX_MATCH bytes of a line, so a
//! secret longer than that (no real one is) is masked only in part when it
//! is split across chunks. Patterns use `+`/`*`, not large `{m,n}` bounds:
//! those blow up the DFA. They are ASCII-only (`(?-u)`): a non-ASCII letter
//! next to a card number does not hide it behind a word boundary.
use regex::bytes::Regex;
use regex_automata::dfa::{StartKind, dense, regex::Regex as DfaRegex};
use std::sync::{Arc, OnceLock};

/// The longest secret caught whole across chunk boundaries (a 4096-bit
/// PEM private key is about 3.3 KiB).
pub const MAX_MATCH: usize = 8192;

pub struct Detector {
    pub name: String,
    /// The definition; custom detectors are searched with it directly.
    pub regex: Regex,
    validate: Option<fn(&[u8]) -> bool>,
    /// Built-ins: where matches can start or lie, and the pattern as a DFA.
    pub(super) fast: Option<Fast>,
}

pub(super) struct Fast {
    pub anchor: Anchor,
    pub dfa: Arc<DfaRegex>,
}

/// Detectors read directly, instead of with their DFA: on a numeric
/// run's groups of digits (numeric.rs), around an `@` (email.rs).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Exact {
    Card,
    Ssn,
    Phone,
    Email,
}

/// Where every match of a built-in detector is, by construction of its
/// pattern (the differential test in scan.rs holds the two together).
#[derive(Clone, Copy)]
pub(super) enum Anchor {
    /// Starts with one of these literals (lower case: they are looked for
    /// in a lower-cased copy; the DFA then checks the case).
    Literals(&'static [&'static str]),
    /// Lies in a run of `[0-9 .()+-]` holding at least `digits` digits,
    /// and, if `groups` is not empty, consecutive groups of digits of
    /// exactly these lengths (an SSN: 3, 2, 4).
    Numeric {
        digits: usize,
        groups: &'static [usize],
        exact: Option<Exact>,
    },
    /// Starts at two upper-case letters right before a digit and lies in
    /// a run of `[A-Z0-9 ]` (IBAN).
    LettersDigits,
    /// Lies in a run of `[A-Za-z0-9._%+@-]` holding an `@` (e-mail).
    At { exact: Option<Exact> },
}

impl Detector {
    pub fn custom(name: &str, pattern: &str) -> Result<Detector, String> {
        let regex = regex::bytes::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("custom detector {name}: {e}"))?;
        Ok(Detector {
            name: name.to_string(),
            regex,
            validate: None,
            fast: None,
        })
    }

    pub fn accepts(&self, m: &[u8]) -> bool {
        self.validate.is_none_or(|v| v(m))
    }
}

type Validator = Option<fn(&[u8]) -> bool>;

/// (name, pattern, anchor, validator). Order matters for overlapping
/// matches of the same length: the earlier, more specific one names it.
const BUILTIN: &[(&str, &str, Anchor, Validator)] = &[
    (
        "private_key",
        r"(?-u)-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
        Anchor::Literals(&["-----begin "]),
        None,
    ),
    (
        "jwt",
        r"(?-u)\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        Anchor::Literals(&["eyj"]),
        None,
    ),
    (
        "aws_access_key",
        r"(?-u)\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b",
        Anchor::Literals(&["akia", "asia", "agpa", "aida", "aroa"]),
        None,
    ),
    (
        "github_token",
        r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
        Anchor::Literals(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]),
        None,
    ),
    (
        "gitlab_token",
        r"(?-u)\bglpat-[A-Za-z0-9_-]{20,}",
        Anchor::Literals(&["glpat-"]),
        None,
    ),
    (
        "slack_token",
        r"(?-u)\bxox[abprse]-[A-Za-z0-9-]{10,}",
        Anchor::Literals(&["xox"]),
        None,
    ),
    (
        "anthropic_key",
        r"(?-u)\bsk-ant-[A-Za-z0-9_-]{20,}",
        Anchor::Literals(&["sk-ant-"]),
        None,
    ),
    (
        "openai_key",
        r"(?-u)\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}",
        Anchor::Literals(&["sk-"]),
        None,
    ),
    // [ \t], not \s: a token never continues on the next line.
    (
        "bearer_token",
        r"(?i-u)\bbearer[ \t]+[A-Za-z0-9._~+/=-]{16,}",
        Anchor::Literals(&["bearer"]),
        None,
    ),
    (
        "card",
        r"(?-u)\b\d(?:[ -]?\d){12,18}\b",
        Anchor::Numeric {
            digits: 13,
            groups: &[],
            exact: Some(Exact::Card),
        },
        Some(luhn),
    ),
    (
        "iban",
        r"(?-u)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        Anchor::LettersDigits,
        Some(iban),
    ),
    (
        "ssn",
        r"(?-u)\b\d{3}-\d{2}-\d{4}\b",
        Anchor::Numeric {
            digits: 9,
            groups: &[3, 2, 4],
            exact: Some(Exact::Ssn),
        },
        Some(ssn),
    ),
    (
        "email",
        r"(?-u)\b[A-Za-z0-9._%+-]+(?:@|%(?:25)*40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b",
        Anchor::At {
            exact: Some(Exact::Email),
        },
        None,
    ),
    (
        "phone",
        r"(?-u)(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",
        Anchor::Numeric {
            digits: 10,
            groups: &[3, 3, 4],
            exact: Some(Exact::Phone),
        },
        None,
    ),
];

pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, ..)| *n)
}

pub fn builtin(name: &str) -> Option<Detector> {
    let i = BUILTIN.iter().position(|(n, ..)| *n == name)?;
    let (n, p, anchor, v) = BUILTIN[i];
    Some(Detector {
        name: n.to_string(),
        regex: Regex::new(p).expect("built-in pattern"),
        validate: v,
        fast: Some(Fast {
            anchor,
            dfa: builtin_dfa(i),
        }),
    })
}

/// Each built-in's DFA, determinised once per process (milliseconds each)
/// and shared by every profile that names it.
fn builtin_dfa(i: usize) -> Arc<DfaRegex> {
    static DFAS: [OnceLock<Arc<DfaRegex>>; BUILTIN.len()] =
        [const { OnceLock::new() }; BUILTIN.len()];
    DFAS[i]
        .get_or_init(|| {
            let dfa = DfaRegex::builder()
                .dense(dense::Config::new().start_kind(StartKind::Both))
                .build(BUILTIN[i].1)
                .expect("built-in pattern as a DFA");
            Arc::new(dfa)
        })
        .clone()
}

fn digits(m: &[u8]) -> impl DoubleEndedIterator<Item = u32> + '_ {
    m.iter()
        .filter(|c| c.is_ascii_digit())
        .map(|c| (c - b'0') as u32)
}

/// Payment card numbers: 13-19 digits passing the Luhn check. One pass
/// from the right (it runs on every card-shaped number the masker sees).
pub(super) fn luhn(m: &[u8]) -> bool {
    // The digit sum of twice each digit.
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let (mut n, mut sum) = (0usize, 0u32);
    for &c in m.iter().rev() {
        if c.is_ascii_digit() {
            let x = (c - b'0') as usize;
            sum += if n % 2 == 1 { DOUBLED[x] } else { x as u32 };
            n += 1;
        }
    }
    (13..=19).contains(&n) && sum.is_multiple_of(10)
}

/// US SSNs: area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
fn ssn(m: &[u8]) -> bool {
    let mut d = [0u32; 9];
    for (slot, x) in d.iter_mut().zip(digits(m)) {
        *slot = x;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    area != 0 && area != 666 && area < 900 && (d[3], d[4]) != (0, 0) && d[5..] != [0, 0, 0, 0]
}

/// IBAN mod-97 check (ISO 13616).
fn iban(m: &[u8]) -> bool {
    let s = || m.iter().copied().filter(|c| !c.is_ascii_whitespace());
    let len = s().count();
    if !(15..=34).contains(&len) {
        return false;
    }
    let rotated = s().skip(4).chain(s().take(4));
    let mut rem: u32 = 0;
    for c in rotated {
        let v = match c {
            b'0'..=b'9' => (c - b'0') as u32,
            b'A'..=b'Z' => (c - b'A') as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(name: &str, text: &str) -> Vec<String> {
        let d = builtin(name).unwrap();
        d.regex
            .find_iter(text.as_bytes())
            .filter(|m| d.accepts(m.as_bytes()))
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn validators_drop_look_alikes() {
        assert_eq!(
            hits("card", "pay 4111 1111 1111 1111 now"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(hits("card", "4111-1111-1111-1111"), ["4111-1111-1111-1111"]);
        assert!(hits("card", "order 4111 1111 1111 1112").is_empty());
        assert_eq!(hits("ssn", "ssn 123-45-6789."), ["123-45-6789"]);
        assert!(hits("ssn", "000-12-3456 666-12-3456 912-12-3456").is_empty());
        assert_eq!(
            hits("iban", "IBAN DE89 3704 0044 0532 0130 00 ok"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert!(hits("iban", "DE00 3704 0044 0532 0130 00").is_empty());
    }

    #[test]
    fn secrets() {
        assert_eq!(
            hits("aws_access_key", "key=AKIAIOSFODNN7EXAMPLE;"),
            ["AKIAIOSFODNN7EXAMPLE"]
        );
        assert_eq!(
            hits("github_token", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
            ["ghp_0123456789abcdefghijABCDEFGHIJ012345"]
        );
        assert_eq!(
            hits("anthropic_key", "x sk-ant-api03-abcdefghijklmnopqrstuv y").len(),
            1
        );
        assert_eq!(
            hits("email", "mail alice.smith+x@example.co.uk!"),
            ["alice.smith+x@example.co.uk"]
        );
        assert_eq!(
            hits("email", "?to=john.doe%40example.com&x=1"),
            ["john.doe%40example.com"]
        );
        assert_eq!(
            hits("email", "?r=%2Fcb%3Fto%3Djohn.doe%252540example.com"),
            ["2Fcb%3Fto%3Djohn.doe%252540example.com"]
        );
        assert_eq!(
            hits("phone", "call +1 415-555-0132 today"),
            ["+1 415-555-0132"]
        );
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK=\n-----END RSA PRIVATE KEY-----";
        assert_eq!(hits("private_key", &format!("x{pem}y")), [pem]);
        assert_eq!(hits("jwt", "t=eyJhbGciOi.eyJzdWIiOi.c2ln&").len(), 1);
        assert_eq!(
            hits("bearer_token", "Authorization: Bearer abcdefghijklmnop1234").len(),
            1
        );
    }
}
