//! The e-mail detector, `(?-u)\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b`,
//! read directly around an `@` that is alone in its run of e-mail bytes.
//! Its DFA, anchored at the run, was the largest single cost left in the
//! masker on text with an address a line; this reads the bytes after the
//! `@` once, for the match and for the end of the run. An exact reading of
//! the regex's leftmost-first match, held to the regex crate by the
//! differential tests in scan.rs.
use super::scan::{EMAIL, boundary_after, boundary_before, is_word};

/// What follows an `@`.
pub struct AtRun {
    /// The end of the run of e-mail bytes (`[A-Za-z0-9._%+@-]`) that holds
    /// the `@`.
    pub end: usize,
    /// No other `@` in the run (else the match is left to the DFA).
    pub alone: bool,
    /// The match, when `alone`.
    pub found: Option<(usize, usize)>,
}

/// The run and match around the `@` at `q`, in a run of e-mail bytes that
/// starts at `start` (matches start there or later; what is before it is
/// only context).
pub fn around_at(text: &[u8], start: usize, q: usize) -> AtRun {
    // The domain: labels joined by single dots. The star takes every
    // further label and gives them back one at a time until the label
    // after it starts a top-level domain: 2-24 letters and a word boundary
    // (fewer letters leave a letter after them: no boundary). So the last
    // dot before such a label, which one pass forward finds.
    let mut end = label_end(text, q + 1);
    let mut tld_end = None;
    if end > q + 1 {
        while text.get(end) == Some(&b'.') && text.get(end + 1).is_some_and(|&c| is_label(c)) {
            let tld = end + 1;
            end = label_end(text, tld);
            let letters = text[tld..end]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
            if (2..=24).contains(&letters) && boundary_after(text, tld + letters) {
                tld_end = Some(tld + letters);
            }
        }
    }
    // The rest of the run: labels and dots hold no `@`.
    let mut alone = true;
    while let Some(&c) = text.get(end).filter(|&&c| EMAIL[c as usize]) {
        alone &= c != b'@';
        end += 1;
    }
    // The regex tries starts from the left, and any local part up to the
    // `@` will do: the first start with a word boundary.
    let found = tld_end.and_then(|e| {
        let s = if !boundary_before(text, start) {
            // After a word byte (only the byte before a masker's buffer,
            // kept as context): the first change from word to not.
            (start..q).find(|&i| !is_word(text[i]))
        } else {
            (start..q).find(|&i| is_word(text[i]))
        };
        Some((s?, e))
    });
    AtRun {
        end,
        alone,
        found: found.filter(|_| alone),
    }
}

fn label_end(text: &[u8], from: usize) -> usize {
    from + text[from..].iter().take_while(|&&c| is_label(c)).count()
}

fn is_label(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}
