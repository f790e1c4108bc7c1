//! Line breaks inside a wrapped value, as a decoder skips them: base64 of
//! the injected secret wrapped at 64 or 76 columns (MIME, PEM), indented in
//! YAML, escaped in a JSON string (`json.dumps`), or written in HTML
//! (found by attack passes). The text is lower case.

/// The most line breaks one wrapped form is read across (hex of a 40-byte
/// key wrapped at 16 columns has five).
pub const MAX_BREAKS: usize = 16;

/// Spellings of a line break other than one control byte.
const TOKENS: [&[u8]; 17] = [
    b"\\n", b"\\r", b"\\u000a", b"\\u000d", b"%0a", b"%0d", b"&#10;", b"&#13;", b"&#xa;", b"&#xd;",
    b"&#x0a;", b"&#x0d;", b"<br>", b"<br/>", b"<br />", b"&#010;", b"&#013;",
];

/// A byte a break token (`token`) may begin with.
fn begins_token(c: u8) -> bool {
    matches!(
        c,
        b'\n' | b'\r' | b'\x0b' | b'\x0c' | b'\\' | b'%' | b'&' | b'<'
    )
}

/// A byte a break token may end with.
fn ends_token(c: u8) -> bool {
    matches!(
        c,
        b'\n' | b'\r' | b'\x0b' | b'\x0c' | b'n' | b'r' | b'a' | b'd' | b';' | b'>'
    )
}

fn blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Whether `c` may be part of a break (its blanks, a token's first or last
/// byte); a byte that may not decides a break next to it at once.
pub fn may_touch(c: u8) -> bool {
    blank(c) || begins_token(c) || ends_token(c)
}

/// The line break written at `at`, its length (0: none): CR, LF, form
/// feed, vertical tab; escaped in JSON or C (`\n`, `\r`, `\u000a`), in a
/// URL (`%0a`), in HTML (`&#10;`, `&#xa;`, `<br>`).
fn token(text: &[u8], at: usize) -> usize {
    let rest = text.get(at..).unwrap_or_default();
    match rest.first() {
        Some(b'\n' | b'\r' | b'\x0b' | b'\x0c') => 1,
        Some(&c) if begins_token(c) => TOKENS
            .iter()
            .find(|t| rest.starts_with(t))
            .map_or(0, |t| t.len()),
        _ => 0,
    }
}

/// Where a line break that starts at `at` ends: tokens in any number, with
/// the spaces and tabs around them (a blank line, a PEM block indented in
/// YAML). `at` itself when there is none.
pub fn end(text: &[u8], at: usize) -> usize {
    let blanks = |i: usize| {
        i + text[i.min(text.len())..]
            .iter()
            .take_while(|&&b| blank(b))
            .count()
    };
    let (mut i, mut seen) = (at, false);
    loop {
        let j = blanks(i);
        let k = token(text, j);
        if k == 0 {
            return if seen { j } else { at };
        }
        seen = true;
        i = j + k;
    }
}

/// Where the line break around the token at `at` starts: the tokens,
/// spaces and tabs just before it are part of it.
pub fn start(text: &[u8], at: usize) -> usize {
    let mut i = at;
    loop {
        let j = i - text[..i].iter().rev().take_while(|&&b| blank(b)).count();
        // A token that ends at j (the longest is 7 bytes); most bytes end
        // none.
        let found = (j > 0 && ends_token(text[j - 1]))
            .then(|| (1..=7.min(j)).find(|&n| token(text, j - n) == n))
            .flatten();
        match found {
            Some(n) => i = j - n,
            None => return j,
        }
    }
}

/// Places a line break starts: CR, LF, or a JSON escape of one. One SIMD
/// pass; a break written only in HTML or a URL (`<br>`, `%0a`) is read as
/// part of one of these, not alone (a search for `%`, `&` and `<` too cost
/// a tenth of the masker's time on JSON).
pub fn candidates(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    memchr::memchr3_iter(b'\n', b'\r', b'\\', text).filter(|&p| token(text, p) > 0)
}

/// Where `rest` ends in `text` from `at`, reading across up to MAX_BREAKS
/// line breaks between its bytes.
pub fn rest_across(text: &[u8], mut at: usize, rest: &[u8]) -> Option<usize> {
    let mut breaks = 0;
    for (i, &c) in rest.iter().enumerate() {
        if i > 0 && breaks < MAX_BREAKS {
            let e = end(text, at);
            if e > at && text.get(e) == Some(&c) {
                at = e;
                breaks += 1;
            }
        }
        if text.get(at) != Some(&c) {
            return None;
        }
        at += 1;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_are_read_whole_either_way() {
        let text = b"abc \r\n  \\n&#10;  def";
        assert_eq!(start(text, 5), 3);
        assert_eq!(end(text, 3), 17);
        assert_eq!(end(text, 0), 0);
        assert_eq!(candidates(text).collect::<Vec<_>>(), [4, 5, 8]);
        // Every token's bytes are the ones may_touch names.
        for t in TOKENS {
            assert!(begins_token(t[0]) && ends_token(t[t.len() - 1]), "{t:?}");
        }
        assert_eq!(rest_across(b"ab\n  cd", 1, b"bcd"), Some(7));
        assert_eq!(rest_across(b"ab\n  xd", 1, b"bcd"), None);
    }
}
