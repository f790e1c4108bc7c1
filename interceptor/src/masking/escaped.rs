//! The injected secret with some of its bytes escaped, each its own way.
//! Encoders escape only what their syntax needs: `quote()` and
//! `encodeURIComponent` turn `/ + &` into `%2F %2B %26` and leave the rest,
//! Go's JSON writes `&` as `\u0026`, PHP's writes `/` as `\/`, HTML writes
//! `&amp;`; and one encoder runs over another's output (`%5C%2F` is PHP's
//! JSON, then a URL; `%26amp%3B` is HTML, then a URL). The literal and
//! fully escaped forms (secret_forms.rs) miss all of these, so the secret
//! is also matched a byte at a time, each byte read as itself or as an
//! escape of it (percent, `%uXXXX`, `\uXXXX`, `\u{X}`, `\xXX`, octal, a
//! backslash before punctuation, CSS `\X `, HTML references), where every
//! character of an escape may itself be escaped, up to `DEPTH` layers.
//! Escapes are decoded as a reader would, rather than listed: an attack
//! pass found a new composition of listed spellings in every round.
//! Case-blind, as the other forms are (the text is given in lower case).
//!
//! A match with no escape in it is the literal, found by the literal pass;
//! so this one looks only around escape characters (`%`, `\`, `&`).
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use zeroize::Zeroizing;

/// How many encoders deep an escape is read (`%252525252F` is a percent
/// escape of `/` encoded four times more).
const DEPTH: u8 = 6;
/// Digits an escape may have, leading zeros included (`&#x000000002f;`).
const MAX_DIGITS: usize = 16;
/// The longest a byte of the secret is taken to be spelled: what a cut-off
/// start is looked for in.
const LONGEST_UNIT: usize = 24;
/// How many encoders deep an escape that starts with a backslash is read.
const BACKSLASH_DEPTH: u8 = 3;
/// Places and depths whose readings are kept before those behind the
/// current start are forgotten.
const MEMO_ENTRIES: usize = 4096;
/// Readings kept for one place and depth.
const MAX_READINGS: usize = 16;

pub struct Escaped {
    /// The secret, lower case.
    secret: Zeroizing<Vec<u8>>,
    /// The longest the escaped secret is looked for.
    longest: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    /// The secret ends there.
    Full(usize),
    /// The text ends inside what could still be it.
    Partial,
    No,
}

/// One way to read the text at a place: a character (its code) and
/// where it ends, or the text ends inside one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Read {
    Char(u32, usize),
    Partial,
}

impl Escaped {
    pub fn new(secret: &[u8]) -> Option<Escaped> {
        if secret.is_empty() {
            return None;
        }
        Some(Escaped {
            secret: Zeroizing::new(secret.to_ascii_lowercase()),
            longest: secret.len() * LONGEST_UNIT,
        })
    }

    /// Where the text ends with the start of the secret as it is: an
    /// escape that follows may make that start a match.
    pub fn literal_tail(&self, lower: &[u8]) -> usize {
        let len = lower.len();
        (len.saturating_sub(self.secret.len())..len)
            .find(|&p| self.secret.starts_with(&lower[p..]))
            .unwrap_or(len)
    }

    /// Whether a spelling of the secret's first byte can start with `b`.
    fn can_start(&self, b: u8) -> bool {
        b == self.secret[0] || is_introducer(b)
    }

    /// Matches in `lower` from `from` on, leftmost first, not overlapping;
    /// only those with an escape in them, and starting before `before`.
    /// Returns how many starts it tried (the work it did).
    pub fn find(&self, lower: &[u8], from: usize, out: &mut Vec<(usize, usize)>) -> usize {
        let n = self.secret.len();
        let reader = Reader::new(lower);
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
                if !self.can_start(lower[s]) {
                    continue;
                }
                reader.forget_before(s);
                tries += 1;
                // (One that ends before the escape is the literal's.)
                if let Outcome::Full(end) = self.at(&reader, s, 0)
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
    /// escaped secret (`lower.len()` when nowhere), looking from `hint` on
    /// (0 for all): a start before the last such place, read to the end of
    /// the text then, did not fit, and more text does not change that.
    pub fn hold_from(&self, lower: &[u8], hint: usize) -> usize {
        let len = lower.len();
        let from = len.saturating_sub(self.longest);
        // Without an escape character in it, a cut-off start is one of the
        // literal form, which the literal pass holds; with one, it starts
        // at most a secret's length before the first.
        let Some(e) = memchr::memchr3(b'%', b'\\', b'&', &lower[from..]) else {
            return len;
        };
        let from = (from + e)
            .saturating_sub(self.secret.len())
            .max(from)
            .max(hint);
        let reader = Reader::new(lower);
        (from..len)
            .find(|&p| self.can_start(lower[p]) && self.at(&reader, p, 0) == Outcome::Partial)
            .unwrap_or(len)
    }

    /// Whether the secret from its `i`th byte on is spelled at `at`.
    fn at(&self, r: &Reader, mut at: usize, mut i: usize) -> Outcome {
        // Literal bytes first, without building readings.
        loop {
            if i == self.secret.len() {
                return Outcome::Full(at);
            }
            match r.t.get(at) {
                None => return Outcome::Partial,
                Some(&b) if !is_introducer(b) => {
                    if b != self.secret[i] {
                        return Outcome::No;
                    }
                    at += 1;
                    i += 1;
                }
                Some(_) => break,
            }
        }
        let want = self.secret[i] as u32;
        let mut outcome = Outcome::No;
        for read in r.read(at, DEPTH).iter() {
            match *read {
                Read::Partial => outcome = Outcome::Partial,
                Read::Char(c, end) if lower(c) == want => match self.at(r, end, i + 1) {
                    Outcome::Full(end) => return Outcome::Full(end),
                    Outcome::Partial => outcome = Outcome::Partial,
                    Outcome::No => {}
                },
                Read::Char(..) => {}
            }
        }
        outcome
    }
}

/// Whether what follows an escape character can make it an escape: a
/// quick look that spares most of a run of `%` the reading at each depth.
fn may_escape(t: &[u8], at: usize) -> bool {
    let Some(&next) = t.get(at + 1) else {
        return true;
    };
    match t[at] {
        b'%' => next.is_ascii_hexdigit() || next == b'u',
        b'\\' => next.is_ascii_alphanumeric() || next.is_ascii_punctuation(),
        _ => next == b'#' || next.is_ascii_lowercase() || is_introducer(next),
    }
}

fn is_introducer(b: u8) -> bool {
    matches!(b, b'%' | b'\\' | b'&')
}

fn lower(c: u32) -> u32 {
    if (b'A' as u32..=b'Z' as u32).contains(&c) {
        c + 32
    } else {
        c
    }
}

/// What a place reads as: most places read one way, kept inline (a
/// run of bytes that are not escapes costs no allocation); the rest are
/// shared by the memo and its users.
#[derive(Clone)]
enum Readings {
    One(Read),
    Many(Rc<[Read]>),
}

impl Readings {
    fn iter(&self) -> std::slice::Iter<'_, Read> {
        match self {
            Readings::One(r) => std::slice::from_ref(r).iter(),
            Readings::Many(rs) => rs.iter(),
        }
    }
}

/// Reads a text's characters, escaped or not; what it read at a place and
/// depth is kept (a run of backslashes reads many ways at every depth,
/// and without the memo the ways multiplied).
struct Reader<'a> {
    t: &'a [u8],
    memo: RefCell<HashMap<(usize, u8), Readings, foldhash::fast::FixedState>>,
}

impl<'a> Reader<'a> {
    fn new(t: &'a [u8]) -> Self {
        Reader {
            t,
            memo: RefCell::new(HashMap::default()),
        }
    }

    /// Starts are tried left to right and read only forward: what was read
    /// before `at` is not needed again. Kept, a body of backslashes held
    /// its readings of every place at once (found by an attack pass: 1.8
    /// GB for 64 KB).
    fn forget_before(&self, at: usize) {
        let mut memo = self.memo.borrow_mut();
        if memo.len() > MEMO_ENTRIES {
            memo.retain(|&(p, _), _| p >= at);
        }
    }

    /// Every reading of the text at `at`: the byte itself, and, `depth`
    /// layers deep, an escape whose punctuation is read a layer less
    /// deep (`%5c%2f` is `\` then `/`, which is `/`).
    fn read(&self, at: usize, depth: u8) -> Readings {
        let Some(&b) = self.t.get(at) else {
            return Readings::One(Read::Partial);
        };
        // A backslash escaped again reads as a backslash in many places
        // (`\\\\` is one, two or four of them): three layers of it are
        // read (JSON in a string in JSON), not six (an attack pass made a
        // body of backslash runs cost 4 µs a byte).
        let depth = if b == b'\\' {
            depth.min(BACKSLASH_DEPTH)
        } else {
            depth
        };
        if depth == 0 || !is_introducer(b) || !may_escape(self.t, at) {
            return Readings::One(Read::Char(b as u32, at + 1));
        }
        if let Some(r) = self.memo.borrow().get(&(at, depth)) {
            return r.clone();
        }
        let d = depth - 1;
        let mut out = vec![Read::Char(b as u32, at + 1)];
        for intro in self.read(at, d).iter() {
            match *intro {
                Read::Partial => out.push(Read::Partial),
                Read::Char(0x25, p) => self.percent(p, &mut out),
                Read::Char(0x5c, p) => self.backslash(p, d, &mut out),
                Read::Char(0x26, p) => self.reference(p, d, &mut out),
                Read::Char(..) => {}
            }
        }
        out.sort_unstable();
        out.dedup();
        // A run of backslashes reads as many backslashes, ending in as
        // many places, at every depth: the shortest readings are kept (an
        // attack pass made a body of them cost 10 µs a byte).
        if out.len() > MAX_READINGS {
            out.sort_by_key(|r| match r {
                Read::Partial => 0,
                Read::Char(_, end) => *end,
            });
            out.truncate(MAX_READINGS);
            out.sort_unstable();
        }
        let out = match out[..] {
            [one] => Readings::One(one),
            _ => Readings::Many(out.into()),
        };
        self.memo.borrow_mut().insert((at, depth), out.clone());
        out
    }

    /// `c` at `p`, read `d` deep: where each reading of it ends.
    fn expect(&self, p: usize, d: u8, c: u8, out: &mut Vec<Read>) -> Vec<usize> {
        let mut ends = Vec::new();
        for r in self.read(p, d).iter() {
            match *r {
                Read::Char(x, e) if lower(x) == c as u32 => ends.push(e),
                Read::Partial => out.push(Read::Partial),
                Read::Char(..) => {}
            }
        }
        ends
    }

    /// A letter (part of an escape's syntax) at `p`, as it is.
    fn letter(&self, p: usize, c: u8, out: &mut Vec<Read>) -> Option<usize> {
        match self.t.get(p) {
            None => {
                out.push(Read::Partial);
                None
            }
            Some(&b) => (b == c).then_some(p + 1),
        }
    }

    /// After `%`: two hex digits, or `u` and four (`%u002f`).
    fn percent(&self, p: usize, out: &mut Vec<Read>) {
        self.digits(p, 16, 2, 2, out);
        if let Some(q) = self.letter(p, b'u', out) {
            self.digits(q, 16, 4, 4, out);
        }
    }

    /// After `\`: `u` and four or eight hex digits or `{1-6}`, `x` and
    /// one or two, one to three octal digits, one to six hex digits and
    /// an optional space (CSS), or punctuation standing for itself.
    fn backslash(&self, p: usize, d: u8, out: &mut Vec<Read>) {
        if let Some(q) = self.letter(p, b'u', out) {
            self.digits(q, 16, 4, 4, out);
            self.digits(q, 16, 8, 8, out);
            for r in self.expect(q, d, b'{', out) {
                let mut inner = Vec::new();
                self.digits(r, 16, 1, 8, &mut inner);
                for x in inner {
                    match x {
                        Read::Char(v, e) => {
                            for f in self.expect(e, d, b'}', out) {
                                out.push(Read::Char(v, f));
                            }
                        }
                        partial => out.push(partial),
                    }
                }
            }
        }
        if let Some(q) = self.letter(p, b'x', out) {
            self.digits(q, 16, 1, 2, out);
            // Perl's `\x{2f}`.
            if let Some(r) = self.letter(q, b'{', out) {
                let mut inner = Vec::new();
                self.digits(r, 16, 1, 8, &mut inner);
                for x in inner {
                    match x {
                        Read::Char(v, e) => {
                            if let Some(f) = self.letter(e, b'}', out) {
                                out.push(Read::Char(v, f));
                            }
                        }
                        partial => out.push(partial),
                    }
                }
            }
        }
        self.digits(p, 8, 1, 3, out);
        // CSS: one white space character after the digits is part of
        // the escape (space, tab, newline, CR, form feed; CRLF is one).
        let mut css = Vec::new();
        self.digits(p, 16, 1, 6, &mut css);
        for x in css {
            out.push(x);
            if let Read::Char(v, e) = x {
                for w in [b' ', b'\t', b'\n', b'\r', 0x0c] {
                    for f in self.expect(e, d, w, out) {
                        out.push(Read::Char(v, f));
                        if w == b'\r' && self.t.get(f) == Some(&b'\n') {
                            out.push(Read::Char(v, f + 1));
                        }
                    }
                }
            }
        }
        for r in self.read(p, d).iter() {
            match *r {
                Read::Char(c, _) if c < 128 && (c as u8).is_ascii_punctuation() => out.push(*r),
                Read::Partial => out.push(Read::Partial),
                Read::Char(..) => {}
            }
        }
    }

    /// After `&`: `#` and decimal digits, `#x` and hex digits, or a name;
    /// then an optional `;`.
    fn reference(&self, p: usize, d: u8, out: &mut Vec<Read>) {
        let mut numbers = Vec::new();
        for q in self.expect(p, d, b'#', out) {
            self.digits(q, 10, 1, MAX_DIGITS, &mut numbers);
            if let Some(r) = self.letter(q, b'x', out) {
                self.digits(r, 16, 1, MAX_DIGITS, &mut numbers);
            }
        }
        self.name(p, &mut numbers);
        for x in numbers {
            out.push(x);
            if let Read::Char(v, e) = x {
                for f in self.expect(e, d, b';', out) {
                    out.push(Read::Char(v, f));
                }
            }
        }
    }

    /// A reference's name: each that stands for a character is a reading.
    fn name(&self, p: usize, out: &mut Vec<Read>) {
        let t = self.t;
        let mut end = p;
        while end < t.len() && end - p < 8 && t[end].is_ascii_lowercase() {
            end += 1;
            if let Some(b) = named(&t[p..end]) {
                out.push(Read::Char(b as u32, end));
            }
        }
        if end == t.len() && end - p < 8 {
            out.push(Read::Partial);
        }
    }

    /// `min` to `max` digits in `radix` from `p`; the value after each
    /// count from `min` on. Values past a byte's stop the run. Digits
    /// (and an escape's letters) are read as they are: encoders escape
    /// punctuation, and reading every digit as a possible escape too
    /// multiplied the work by the depth's power.
    fn digits(&self, p: usize, radix: u32, min: usize, max: usize, out: &mut Vec<Read>) {
        let mut value = 0u32;
        for count in 0..=max {
            if count >= min {
                out.push(Read::Char(value, p + count));
            }
            if count == max {
                return;
            }
            let Some(&c) = self.t.get(p + count) else {
                return out.push(Read::Partial);
            };
            let Some(v) = (c as char).to_digit(radix) else {
                return;
            };
            value = value * radix + v;
            if value > 255 {
                return;
            }
        }
    }
}

/// The character an HTML reference's name stands for.
fn named(name: &[u8]) -> Option<u8> {
    (32u8..127).find(|&b| named_references(b).iter().any(|n| n.as_bytes() == name))
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
            // What a fourth found: one encoder over another's output.
            "wJalrXUtnFEMI%5C%2FK7MDENG%2BbPxRfi%26CYEXAMPLEKEY",
            "wJalrXUtnFEMI%2FK7MDENG%2BbPxRfi%26amp%3BCYEXAMPLEKEY",
            "wJalrXUtnFEMI%26%2347%3BK7MDENG%26%2343%3BbPxRfi%26%2338%3BCYEXAMPLEKEY",
            "wJalrXUtnFEMI\\57K7MDENG\\53bPxRfi\\46CYEXAMPLEKEY",
            "wJalrXUtnFEMI%252525252FK7MDENG%252525252BbPxRfi%2525252526CYEXAMPLEKEY",
            "wJalrXUtnFEMI\\u00252FK7MDENG\\u00252BbPxRfi\\u002526CYEXAMPLEKEY",
            "wJalrXUtnFEMI&#x000000002f;K7MDENG&#x000000002b;bPxRfi&#x0000000026;CYEXAMPLEKEY",
            // What a fifth found.
            "wJalrXUtnFEMI\\2f\tK7MDENG\\2b\nbPxRfi\\26\r\nCYEXAMPLEKEY",
            "wJalrXUtnFEMI\\u{0000002f}K7MDENG\\x{2b}bPxRfi&CYEXAMPLEKEY",
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
            assert_eq!(e.hold_from(text.as_bytes(), 0), 2, "{text}");
        }
        // Without an escape it is the literal form's, held by that pass.
        assert_eq!(e.hold_from(b"x sk-live-zq8", 0), 13);
        assert_eq!(e.hold_from(b"x sk-live-zq8x", 0), 14);
        assert_eq!(e.hold_from(b"x %41", 0), 5);
    }
}
