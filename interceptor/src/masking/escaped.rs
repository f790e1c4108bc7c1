//! The injected secret with some of its bytes escaped, each its own way.
//! Encoders escape only what their syntax needs: `quote()` and
//! `encodeURIComponent` turn `/ + &` into `%2F %2B %26` and leave the rest,
//! Go's JSON writes `&` as `\u0026`, PHP's writes `/` as `\/`, HTML writes
//! `&amp;`. The literal and fully escaped forms (secret_forms.rs) miss all
//! of these, so the secret is also matched a byte at a time, each byte
//! as itself or as any escape of it: percent, `\u00XX`, `\xXX`, a
//! backslash before it, an HTML character reference. Case-blind, as the
//! other forms are (the text is given in lower case).
//!
//! A match with no escape in it is the literal, found by the literal pass;
//! so this one looks only around escape characters (`%`, `\`, `&`).
use zeroize::Zeroizing;

pub struct Escaped {
    /// For each byte of the secret, the spellings that stand for it, in
    /// lower case.
    units: Vec<Vec<Zeroizing<Vec<u8>>>>,
    /// Bytes a spelling of the first byte starts with.
    first: [bool; 256],
    /// The longest the escaped secret can be.
    longest: usize,
}

enum Outcome {
    /// The secret ends there.
    Full(usize),
    /// The text ends inside what could still be it.
    Partial,
    No,
}

impl Escaped {
    pub fn new(secret: &[u8]) -> Option<Escaped> {
        if secret.is_empty() {
            return None;
        }
        let units: Vec<Vec<Zeroizing<Vec<u8>>>> = secret.iter().map(|&b| spellings(b)).collect();
        let mut first = [false; 256];
        for s in &units[0] {
            first[s[0] as usize] = true;
        }
        let longest = units
            .iter()
            .map(|u| u.iter().map(|s| s.len()).max().unwrap_or(1))
            .sum();
        Some(Escaped {
            units,
            first,
            longest,
        })
    }

    /// Matches in `lower` from `from` on, leftmost first, not overlapping;
    /// only those with an escape in them, and starting before `before`.
    /// Returns how many starts it tried (the work it did).
    pub fn find(&self, lower: &[u8], from: usize, out: &mut Vec<(usize, usize)>) -> usize {
        let n = self.units.len();
        let mut tries = 0;
        let mut floor = from;
        let mut at = from;
        // Where a match can start does not depend on the escape that made
        // us look: each start is tried once (a run of escape characters
        // cost a secret's length of tries per byte, 4 µs a byte; found by
        // an attack pass).
        let mut tried = from;
        while let Some(i) = memchr::memchr3(b'%', b'\\', b'&', &lower[at..]) {
            let e = at + i;
            at = e + 1;
            if e < floor {
                continue;
            }
            // The match starts at most a secret's length of literal bytes
            // before its first escape.
            let starts = e.saturating_sub(n).max(floor).max(tried)..=e;
            tried = e + 1;
            for s in starts {
                if !self.first[lower[s] as usize] {
                    continue;
                }
                tries += 1;
                // (One that ends before the escape is the literal's.)
                if let Outcome::Full(end) = self.at(lower, s, 0)
                    && end > e
                {
                    out.push((s, end));
                    floor = end;
                    at = end;
                    break;
                }
            }
        }
        tries
    }

    /// The earliest place the text ends inside what could still be the
    /// escaped secret (`lower.len()` when nowhere).
    pub fn hold_from(&self, lower: &[u8]) -> usize {
        let len = lower.len();
        let from = len.saturating_sub(self.longest);
        // Without an escape character in it, a cut-off start is one of the
        // literal form, which the literal pass holds; with one, it starts
        // at most a secret's length before the first.
        let Some(e) = memchr::memchr3(b'%', b'\\', b'&', &lower[from..]) else {
            return len;
        };
        let from = (from + e).saturating_sub(self.units.len()).max(from);
        (from..len)
            .find(|&p| {
                self.first[lower[p] as usize] && matches!(self.at(lower, p, 0), Outcome::Partial)
            })
            .unwrap_or(len)
    }

    /// Whether the secret from its `i`th byte on is spelled at `at`.
    /// The spellings of byte `i` that `rest` can start with or be the
    /// start of: those that share its first two bytes (a range of the
    /// sorted list: a few, of the hundreds there are), and the byte
    /// itself.
    fn candidates<'a>(&'a self, i: usize, rest: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let units = &self.units[i];
        let key = &rest[..rest.len().min(2)];
        let lo = units.partition_point(|s| s.as_slice() < key);
        let hi = lo + units[lo..].partition_point(|s| s.starts_with(key));
        let plain = units[..lo]
            .binary_search_by(|s| s.as_slice().cmp(&rest[..1]))
            .ok()
            .map(|k| &units[k]);
        plain
            .into_iter()
            .chain(&units[lo..hi])
            .map(|s| s.as_slice())
    }

    fn at(&self, text: &[u8], at: usize, i: usize) -> Outcome {
        if i == self.units.len() {
            return Outcome::Full(at);
        }
        if at == text.len() {
            return Outcome::Partial;
        }
        let rest = &text[at..];
        let mut partial = false;
        for s in self.candidates(i, rest) {
            if rest.starts_with(s) {
                match self.at(text, at + s.len(), i + 1) {
                    Outcome::Full(end) => return Outcome::Full(end),
                    Outcome::Partial => partial = true,
                    Outcome::No => {}
                }
            } else if s.len() > rest.len() && s.starts_with(rest) {
                partial = true;
            }
        }
        if partial {
            Outcome::Partial
        } else {
            Outcome::No
        }
    }
}

/// Every spelling of byte `b`, lower case: itself, and the escapes of it
/// and of its other case, as the encoders of URLs, JSON, string literals
/// (C, Python, JavaScript, shells) and HTML write them.
fn spellings(b: u8) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out: Vec<String> = vec![];
    let mut cases = vec![b, b.to_ascii_lowercase(), b.to_ascii_uppercase()];
    cases.dedup();
    for c in cases {
        out.extend([
            format!("%{c:02x}"),
            format!("%25{c:02x}"),
            format!("%2525{c:02x}"),
            format!("%u{c:04x}"),
            format!("\\u{c:04x}"),
            format!("\\u{c:08x}"),
            format!("\\x{c:02x}"),
            format!("\\{c:03o}"),
            // CSS: a backslash, 1 to 6 hex digits, an optional space.
            format!("\\{c:x} "),
            format!("\\{c:x}"),
            format!("\\{c:06x}"),
        ]);
        // `\u{..}` (JavaScript, Rust, Swift) with 1 to 6 digits.
        for width in 1..=6 {
            out.push(format!("\\u{{{c:0width$x}}}"));
        }
        // HTML character references: decimal or hex, leading zeros, with
        // or without the semicolon.
        for zeros in 0..8 {
            let z = "0".repeat(zeros);
            for semi in ["", ";"] {
                out.push(format!("&#{z}{c}{semi}"));
                out.push(format!("&#x{z}{c:x}{semi}"));
            }
        }
    }
    if b.is_ascii_punctuation() {
        out.push(format!("\\{}", b as char));
    }
    out.extend(
        named_references(b)
            .iter()
            .flat_map(|n| [format!("&{n};"), format!("&{n}")]),
    );
    // An escape whose introducer is escaped once more (`&amp;#47;`,
    // `&#37;2F`, `%5cu002f`): an encoder applied over another's output.
    let nested: Vec<String> = out
        .iter()
        .flat_map(|s| {
            let (first, rest) = s.split_at(1);
            let again: &[&str] = match first {
                "%" => &["&#37;", "&#x25;", "&percnt;"],
                "&" => &["&amp;", "%26", "&#38;"],
                "\\" => &["&#92;", "&bsol;", "%5c", "\\\\"],
                _ => &[],
            };
            again.iter().map(move |a| format!("{a}{rest}"))
        })
        .collect();
    out.extend(nested);
    let mut out: Vec<Vec<u8>> = out.into_iter().map(String::into_bytes).collect();
    out.push(vec![b.to_ascii_lowercase()]);
    out.sort();
    out.dedup();
    out.into_iter().map(Zeroizing::new).collect()
}

/// HTML's named references for ASCII punctuation (lower case).
fn named_references(b: u8) -> &'static [&'static str] {
    match b {
        b'&' => &["amp"],
        b'<' => &["lt"],
        b'>' => &["gt"],
        b'"' => &["quot"],
        b'\'' => &["apos"],
        b'/' => &["sol"],
        b'+' => &["plus"],
        b'=' => &["equals"],
        b'?' => &["quest"],
        b'#' => &["num"],
        b'%' => &["percnt"],
        b'!' => &["excl"],
        b'@' => &["commat"],
        b'_' => &["lowbar"],
        b':' => &["colon"],
        b';' => &["semi"],
        b',' => &["comma"],
        b'.' => &["period"],
        b'(' => &["lpar"],
        b')' => &["rpar"],
        b'[' => &["lsqb", "lbrack"],
        b']' => &["rsqb", "rbrack"],
        b'{' => &["lcub", "lbrace"],
        b'}' => &["rcub", "rbrace"],
        b'*' => &["ast", "midast"],
        b'$' => &["dollar"],
        b'^' => &["hat"],
        b'`' => &["grave"],
        b'|' => &["verbar", "vert"],
        b'\\' => &["bsol"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(secret: &str, text: &str) -> Vec<(usize, usize)> {
        let e = Escaped::new(secret.as_bytes()).unwrap();
        let mut out = Vec::new();
        e.find(text.to_ascii_lowercase().as_bytes(), 0, &mut out);
        out
    }

    /// What encoders of the field write (found leaking by an attack pass).
    #[test]
    fn partial_escapes_are_found() {
        let s = "wJalrXUtnFEMI/K7MDENG+bPxRfi&CYEXAMPLEKEY";
        for spelled in [
            "wJalrXUtnFEMI%2FK7MDENG%2BbPxRfi%26CYEXAMPLEKEY",
            "wJalrXUtnFEMI\\/K7MDENG+bPxRfi&CYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfi\\u0026CYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfi&amp;CYEXAMPLEKEY",
            "\\u0077JalrXUtnFEMI/K7MDENG+bPxRfi&#38;CYEXAMPLEKE%59",
            "WJALRXUTNFEMI%2fK7MDENG%2BBPXRFI%26CYEXAMPLEKEY",
            // What a second attack pass found missed.
            "wJalrXUtnFEMI/K7MDENG+bPxRfi&#038;CYEXAMPLEKEY",
            "wJalrXUtnFEMI%252FK7MDENG%252BbPxRfi%2526CYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG\\+bPxRfi\\&CYEXAMPLEKEY",
            "wJalrXUtnFEMI&#047;K7MDENG+bPxRfi&#x0026;CYEXAMPLEKEY",
            "wJalrXUtnFEMI&sol;K7MDENG&plus;bPxRfi&ampCYEXAMPLEKEY",
            "wJalrXUtnFEMI\\057K7MDENG\\u{2b}bPxRfi\\U00000026CYEXAMPLEKEY",
            "wJalrXUtnFEMI%u002FK7MDENG+bPxRfi&#38CYEXAMPLEKEY",
            // What a third attack pass found missed.
            "wJalrXUtnFEMI%25252FK7MDENG+bPxRfi&CYEXAMPLEKEY",
            "wJalrXUtnFEMI&amp;#47;K7MDENG+bPxRfi&CYEXAMPLEKEY",
            "wJalrXUtnFEMI&#37;2FK7MDENG+bPxRfi&CYEXAMPLEKEY",
            "wJalrXUtnFEMI&#0000047;K7MDENG+bPxRfi&CYEXAMPLEKEY",
            "wJalrXUtnFEMI\\u{00002F}K7MDENG+bPxRfi&CYEXAMPLEKEY",
            "wJalrXUtnFEMI\\2f K7MDENG\\2b bPxRfi\\26 CYEXAMPLEKEY",
        ] {
            let text = format!("token={spelled}&x=1");
            assert_eq!(found(s, &text), vec![(6, 6 + spelled.len())], "{spelled}");
        }
        // The literal is the literal pass's; other text is nothing.
        assert!(found("sk-live-Zq8X", "a sk-live-Zq8X b %20").is_empty());
        assert!(found(s, "100% \\n &amp; nothing").is_empty());
    }

    /// A run of escape characters costs a try per byte, not a secret's
    /// length of tries per byte (found by an attack pass: 1 MB of `%`
    /// took 4 s to mask).
    #[test]
    fn each_start_is_tried_once() {
        let e = Escaped::new(b"wJalrXUtnFEMI/K7MDENG+bPxRfi&CYEXAMPLEKEY").unwrap();
        for c in ["%", "\\", "&", "%2"] {
            let text = c.repeat(20_000);
            let mut out = Vec::new();
            let tries = e.find(text.as_bytes(), 0, &mut out);
            assert!(out.is_empty());
            assert!(
                tries <= text.len(),
                "{c}: {tries} tries over {} bytes",
                text.len()
            );
        }
    }

    #[test]
    fn a_cut_off_spelling_is_held() {
        let s = "sk-live-Zq8X";
        let e = Escaped::new(s.as_bytes()).unwrap();
        for text in ["x \\u0073k-li", "x %73", "x %7", "x \\", "x sk-live-zq8%5"] {
            assert_eq!(e.hold_from(text.as_bytes()), 2, "{text}");
        }
        // Without an escape it is the literal form's, held by that pass.
        assert_eq!(e.hold_from(b"x sk-live-zq8"), 13);
        assert_eq!(e.hold_from(b"x sk-live-zq8x"), 14);
        assert_eq!(e.hold_from(b"x %41"), 5);
    }
}
