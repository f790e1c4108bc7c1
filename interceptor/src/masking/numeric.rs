//! Runs of digits and separators (`[0-9 .()+-]`), the bytes every card
//! number, SSN and phone number is made of, read once into their groups of
//! digits. Cards and SSNs are then matched on the groups directly: their
//! patterns are fixed shapes of groups, and a DFA pass per candidate cost
//! more than the rest of the masker together. Phone numbers are read
//! byte by byte from each place one can start. Each matcher is an exact
//! reading of its pattern in detectors.rs, held to the regex crate by the
//! differential tests in scan.rs.

use super::digit_map::DigitMap;
use super::scan::{boundary_after, boundary_before};

/// More groups than this and a run is left to the DFAs (no card, SSN or
/// phone number of the usual shapes has more).
const MAX_GROUPS: usize = 8;

/// A group of digits, `[start, end)` in the text (u32: a run is read per
/// run, many times a line; small groups keep that cheap).
#[derive(Clone, Copy, Default)]
struct Group {
    start: u32,
    end: u32,
}

impl Group {
    fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    fn start(&self) -> usize {
        self.start as usize
    }
    fn end(&self) -> usize {
        self.end as usize
    }
}

pub struct NumericRun {
    pub end: usize,
    pub digits: usize,
    groups: [Group; MAX_GROUPS],
    n_groups: usize,
}

impl NumericRun {
    /// The run from `first_digit` on (what precedes it in the run holds
    /// no digit), read from the map of the text: groups of digits joined
    /// by runs of separators, up to the first byte of no number.
    pub fn read(digits: &DigitMap, first_digit: usize) -> NumericRun {
        let mut run = NumericRun {
            end: first_digit,
            digits: 0,
            groups: [Group::default(); MAX_GROUPS],
            n_groups: 0,
        };
        // The 64 bytes from the first digit, a bit each: a run shorter
        // than that is read with a few bit operations, its groups with a
        // bit scan each (a loop over bytes mispredicted at every group).
        let d = digits.digits_from(first_digit);
        let len = (d | digits.seps_from(first_digit)).trailing_ones() as usize;
        if len == 64 {
            return Self::read_long(digits, first_digit);
        }
        let inside = (1u64 << len) - 1;
        let (mut starts, mut ends) = (d & !(d << 1) & inside, !d & (d << 1) & (inside << 1 | 1));
        run.digits = (d & inside).count_ones() as usize;
        run.n_groups = starts.count_ones() as usize;
        run.end = first_digit + len;
        for g in run.groups.iter_mut() {
            if starts == 0 {
                break;
            }
            *g = Group {
                start: (first_digit + starts.trailing_zeros() as usize) as u32,
                end: (first_digit + ends.trailing_zeros() as usize) as u32,
            };
            starts &= starts - 1;
            ends &= ends - 1;
        }
        run
    }

    /// A run of 64 bytes or more, a group at a time.
    fn read_long(digits: &DigitMap, first_digit: usize) -> NumericRun {
        let mut run = NumericRun {
            end: first_digit,
            digits: 0,
            groups: [Group::default(); MAX_GROUPS],
            n_groups: 0,
        };
        for g in walk(digits, first_digit) {
            if run.n_groups < MAX_GROUPS {
                run.groups[run.n_groups] = g;
            }
            run.n_groups += 1;
            run.digits += g.len();
            // The separators after the last group are part of the run.
            run.end = digits.seps_end(g.end());
        }
        run
    }

    /// The groups are all known (else ask the DFA).
    pub fn complete(&self) -> bool {
        self.n_groups <= MAX_GROUPS
    }

    fn groups(&self) -> &[Group] {
        &self.groups[..self.n_groups.min(MAX_GROUPS)]
    }

    /// Some consecutive groups have exactly the lengths `want` (a
    /// necessary condition; always true when groups were not all kept).
    pub fn has_groups(&self, want: &[usize]) -> bool {
        if want.is_empty() || !self.complete() {
            return true;
        }
        self.groups()
            .windows(want.len())
            .any(|w| w.iter().zip(want).all(|(g, &n)| g.len() == n))
    }

    /// Card numbers, `(?-u)\b\d(?:[ -]?\d){12,18}\b` passing Luhn: from a
    /// group start (the only digits with a boundary before them), groups
    /// chained by single `[ -]` separators, ending at a group end (the only
    /// digits with a boundary after them) with 13 to 19 digits; of those
    /// the longest that passes Luhn. Not the regex's greedy match alone: a
    /// card followed by its CVV or expiry (`4111 1111 1111 1111 123`) is a
    /// 19-digit match that fails Luhn, and the card inside it would go out
    /// (found by an attack pass). Matches in order, non-overlapping.
    /// `digits`: the map, for a run with more groups than were kept.
    pub fn cards(&self, text: &[u8], digits: &DigitMap, out: &mut impl FnMut(usize, usize)) {
        let all;
        let g = if self.complete() {
            self.groups()
        } else {
            all = self.every_group(digits);
            &all[..]
        };
        let mut i = 0;
        while i < g.len() {
            if !boundary_before(text, g[i].start()) {
                i += 1;
                continue;
            }
            // The chain from group i: each end with enough digits and a
            // boundary after it, shortest first.
            let mut ends: [usize; 19] = [0; 19];
            let mut n_ends = 0;
            let mut count = 0;
            let mut j = i;
            loop {
                count += g[j].len();
                if count > 19 {
                    break;
                }
                if count >= 13 && boundary_after(text, g[j].end()) {
                    ends[n_ends] = j;
                    n_ends += 1;
                }
                let chained = j + 1 < g.len()
                    && g[j + 1].start() == g[j].end() + 1
                    && matches!(text[g[j].end()], b' ' | b'-');
                if !chained {
                    break;
                }
                j += 1;
            }
            let card = ends[..n_ends]
                .iter()
                .rev()
                .find(|&&last| super::detectors::luhn(&text[g[i].start()..g[last].end()]));
            match card {
                Some(&last) => {
                    out(g[i].start(), g[last].end());
                    i = last + 1;
                }
                None => i += 1,
            }
        }
    }

    /// Every group of a run with more than MAX_GROUPS (rare: read again).
    fn every_group(&self, digits: &DigitMap) -> Vec<Group> {
        walk(digits, self.groups[0].start()).collect()
    }

    /// `(?-u)\b\d{3}-\d{2}-\d{4}\b`: groups of exactly 3, 2 and 4 digits
    /// joined by single dashes, boundaries at both ends.
    pub fn ssns(&self, text: &[u8], out: &mut impl FnMut(usize, usize)) {
        let g = self.groups();
        let mut i = 0;
        while i + 3 <= g.len() {
            let w = &g[i..i + 3];
            let shape = w[0].len() == 3
                && w[1].len() == 2
                && w[2].len() == 4
                && w[1].start == w[0].end + 1
                && w[2].start == w[1].end + 1
                && text[w[0].end()] == b'-'
                && text[w[1].end()] == b'-';
            if shape && boundary_before(text, w[0].start()) && boundary_after(text, w[2].end()) {
                out(w[0].start(), w[2].end());
                i += 3;
            } else {
                i += 1;
            }
        }
    }
}

/// `(?-u)(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b` in
/// `[from, end)` (a numeric run): its leftmost-first matches, in order,
/// non-overlapping. Unlike cards and SSNs this reads bytes, not groups: the
/// optional parts make its matches start inside groups ("+1415" has none).
pub fn phones(text: &[u8], from: usize, end: usize, out: &mut impl FnMut(usize, usize)) {
    let mut s = from;
    while s < end {
        let m = match text[s] {
            b'+' => country_code_then_number(text, s),
            b'(' => number(text, s),
            c if c.is_ascii_digit() => number(text, s),
            _ => None,
        };
        match m {
            Some(e) => {
                out(s, e);
                s = e;
            }
            None => s += 1,
        }
    }
}

/// `\+\d{1,3}[ .-]?` then the number, at the `+` at `s`: the regex tries
/// three digits first, then two, then one, each with the separator first.
fn country_code_then_number(text: &[u8], s: usize) -> Option<usize> {
    let digits = text[s + 1..]
        .iter()
        .take(3)
        .take_while(|c| c.is_ascii_digit())
        .count();
    (1..=digits).rev().find_map(|k| {
        let at = s + 1 + k;
        let with_sep = is_sep(text, at).then(|| number(text, at + 1)).flatten();
        with_sep.or_else(|| number(text, at))
    })
}

/// `\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b` at `p`, where it ends. Each
/// optional part is decided by the byte at its place: leaving out a `(` or
/// `)` that is there leaves a byte nothing else matches.
fn number(text: &[u8], p: usize) -> Option<usize> {
    let mut at = p;
    if text.get(at) == Some(&b'(') {
        at += 1;
    } else if !boundary_before(text, at) {
        return None;
    }
    at = digits_then(text, at, 3)?;
    if text.get(at) == Some(&b')') {
        at += 1;
    }
    if !is_sep(text, at) {
        return None;
    }
    at = digits_then(text, at + 1, 3)?;
    if !is_sep(text, at) {
        return None;
    }
    at = digits_then(text, at + 1, 4)?;
    boundary_after(text, at).then_some(at)
}

/// Exactly `n` digits from `at` (what follows is checked by the caller):
/// where they end.
fn digits_then(text: &[u8], at: usize, n: usize) -> Option<usize> {
    let end = at + n;
    (text.get(at..end)?.iter().all(u8::is_ascii_digit)).then_some(end)
}

fn is_sep(text: &[u8], at: usize) -> bool {
    matches!(text.get(at), Some(b' ' | b'.' | b'-'))
}

/// The groups of the run from `first_digit`: each a run of digits, joined
/// to the next by a run of separators.
fn walk(digits: &DigitMap, first_digit: usize) -> impl Iterator<Item = Group> + '_ {
    let mut next = Some(first_digit);
    std::iter::from_fn(move || {
        let start = next?;
        let end = digits.run_end(start);
        let after = digits.seps_end(end);
        next = (after > end && digits.is_digit(after)).then_some(after);
        Some(Group {
            start: start as u32,
            end: end as u32,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::digit_map::Worth;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The runs read with bit operations are the runs read a group at a
        /// time, whatever the separators, wherever the 64-bit words end.
        #[test]
        fn runs_read_by_bits_as_by_groups(text in proptest::collection::vec(
            prop_oneof![4 => Just(b'4'), 2 => Just(b' '), 1 => Just(b'-'), 1 => Just(b'('), 1 => Just(b'x'), 1 => Just(b'.')],
            0..200)
        ) {
            let mut map = DigitMap::default();
            map.build(&text, Worth { digits: usize::MAX, after_capitals: false });
            for d in (0..text.len()).filter(|&i| text[i].is_ascii_digit()) {
                let (fast, slow) = (NumericRun::read(&map, d), NumericRun::read_long(&map, d));
                prop_assert_eq!((fast.end, fast.digits, fast.n_groups), (slow.end, slow.digits, slow.n_groups), "at {}", d);
                let spans = |r: &NumericRun| r.groups().iter().map(|g| (g.start(), g.end())).collect::<Vec<_>>();
                prop_assert_eq!(spans(&fast), spans(&slow), "at {}", d);
            }
        }
    }
}
