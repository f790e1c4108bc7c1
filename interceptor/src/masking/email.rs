//! The e-mail detector, `(?-u)\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b`,
//! read directly around an `@` that is alone in its run of e-mail bytes.
//! Its DFA, anchored at the run, was the largest single cost left in the
//! masker on text with an address a line; this reads each byte of the
//! address once. An exact reading of the regex's leftmost-first match,
//! held to the regex crate by the differential tests in scan.rs.

/// The match around the `@` at `q`, in a run of e-mail bytes
/// (`[A-Za-z0-9._%+@-]`) that starts at `start`, follows a byte that is not
/// one (or the start of `text`) and holds no other `@`.
pub fn around_at(text: &[u8], start: usize, q: usize) -> Option<(usize, usize)> {
    // The regex tries starts from the left, and any local part up to the
    // `@` will do: the first start with a word boundary. What precedes the
    // run is no word byte, so that is the run's first word byte.
    let s = (start..q).find(|&i| is_word(text[i]))?;
    // The domain: labels joined by single dots.
    let first_end = label_end(text, q + 1);
    if first_end == q + 1 {
        return None;
    }
    let mut end = first_end;
    while text.get(end) == Some(&b'.') && text.get(end + 1).is_some_and(|&c| is_label(c)) {
        end = label_end(text, end + 1);
    }
    // The star takes every further label and gives them back one at a time
    // until the label after it starts a top-level domain: 2-24 letters and
    // a word boundary (fewer letters leave a letter after them: no
    // boundary). So the last dot, going left, before such a label.
    // A few bytes: a plain loop (memchr's call costs more here).
    for dot in (first_end..end).rev().filter(|&i| text[i] == b'.') {
        let tld = dot + 1;
        let letters = text[tld..]
            .iter()
            .take(25)
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        if (2..=24).contains(&letters) && !text.get(tld + letters).is_some_and(|&c| is_word(c)) {
            return Some((s, tld + letters));
        }
    }
    None
}

fn label_end(text: &[u8], from: usize) -> usize {
    from + text[from..].iter().take_while(|&&c| is_label(c)).count()
}

fn is_label(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}
