//! Built-in detectors: a regex finds candidates, a validator (Luhn, IBAN
//! mod 97, SSN area rules) drops look-alikes. The stream masker holds back
//! at most MAX_MATCH bytes of a line, so a secret longer than that (no real
//! one is) is masked only in part when it is split across chunks. Patterns
//! use `+`/`*`, not large `{m,n}` bounds: those blow up the regex engine's
//! DFA and make it fall back to a slow path.
use regex::bytes::Regex;

/// The longest secret caught whole across chunk boundaries (a 4096-bit
/// PEM private key is about 3.3 KiB).
pub const MAX_MATCH: usize = 8192;

pub struct Detector {
    pub name: String,
    pub regex: Regex,
    validate: Option<fn(&[u8]) -> bool>,
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
        })
    }

    pub fn accepts(&self, m: &[u8]) -> bool {
        self.validate.is_none_or(|v| v(m))
    }
}

/// (name, pattern, validator). Order matters for overlapping matches of the
/// same length: the earlier, more specific one names the match.
type Validator = Option<fn(&[u8]) -> bool>;

const BUILTIN: &[(&str, &str, Validator)] = &[
    (
        "private_key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
        None,
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        None,
    ),
    (
        "aws_access_key",
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b",
        None,
    ),
    (
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
        None,
    ),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}", None),
    ("slack_token", r"\bxox[abprse]-[A-Za-z0-9-]{10,}", None),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}", None),
    (
        "openai_key",
        r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}",
        None,
    ),
    // [ \t], not \s: a token never continues on the next line.
    (
        "bearer_token",
        r"(?i)\bbearer[ \t]+[A-Za-z0-9._~+/=-]{16,}",
        None,
    ),
    ("card", r"\b\d(?:[ -]?\d){12,18}\b", Some(luhn)),
    (
        "iban",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        Some(iban),
    ),
    ("ssn", r"\b\d{3}-\d{2}-\d{4}\b", Some(ssn)),
    (
        "email",
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b",
        None,
    ),
    (
        "phone",
        r"(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",
        None,
    ),
];

pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _, _)| *n)
}

pub fn builtin(name: &str) -> Option<Detector> {
    let (n, p, v) = BUILTIN.iter().find(|(n, _, _)| *n == name)?;
    Some(Detector {
        name: n.to_string(),
        regex: Regex::new(p).expect("built-in pattern"),
        validate: *v,
    })
}

fn digits(m: &[u8]) -> Vec<u8> {
    m.iter()
        .filter(|c| c.is_ascii_digit())
        .map(|c| c - b'0')
        .collect()
}

/// Payment card numbers: 13-19 digits passing the Luhn check.
fn luhn(m: &[u8]) -> bool {
    let d = digits(m);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = x as u32;
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// US SSNs: area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
fn ssn(m: &[u8]) -> bool {
    let d = digits(m);
    let area = d[0] as u32 * 100 + d[1] as u32 * 10 + d[2] as u32;
    area != 0 && area != 666 && area < 900 && (d[3], d[4]) != (0, 0) && d[5..] != [0, 0, 0, 0]
}

/// IBAN mod-97 check (ISO 13616).
fn iban(m: &[u8]) -> bool {
    let s: Vec<u8> = m
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if s.len() < 15 || s.len() > 34 {
        return false;
    }
    let rotated = s[4..].iter().chain(&s[..4]);
    let mut rem: u32 = 0;
    for &c in rotated {
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
