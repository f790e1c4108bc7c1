//! Finds the profile's detector matches in a buffer: the masker's hot loop.
//!
//! Running every detector's regex over every byte costs about 9 ns a byte.
//! Instead each built-in says where its matches can be (`Anchor`), and one
//! cheap pass per kind of anchor finds those spots: a multi-pattern search
//! (aho-corasick, SIMD) for the literal prefixes of tokens, a word-at-a-time
//! scan for digits, memchr for `@`. Only there does a detector's DFA run,
//! and only on its DFA's matches does its validator (Luhn, mod 97) run.
//! Each search is confined to a run of bytes that every match of that
//! detector is made of, so the result is the regex's own matches: the
//! differential test below checks that against the regex crate.
use super::detectors::{Anchor, Detector, Exact, MAX_MATCH};
use super::digit_map::{DigitMap, Worth};
use super::literals::Literals;
use super::numeric::NumericRun;
use regex_automata::dfa::{Automaton, regex::Regex as DfaRegex};
use regex_automata::{Anchored, Input};

/// A place where a token prefix starts: `literal` indexes `literal_text`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiteralStart {
    pub at: usize,
    pub literal: usize,
}

/// A candidate match: `[start, end)` of detector `detector`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
}

/// A masker's buffers for the scanner, kept between pushes.
#[derive(Default)]
pub struct Scratch {
    /// The matches of the last `find`.
    pub found: Vec<Found>,
    digits: DigitMap,
}

/// A profile's detectors, sorted by the pass that finds them.
pub struct Scanner {
    /// Literal prefixes of token detectors, prefix-free and lower case;
    /// `by_literal[pattern]` lists the detectors that start with it.
    literals: Option<Literals>,
    literal_text: Vec<&'static str>,
    by_literal: Vec<Vec<usize>>,
    numeric: Vec<Numeric>,
    /// The fewest digits any of `numeric` has.
    fewest_digits: usize,
    iban: Vec<usize>,
    /// Detectors around an `@`, and whether one is read directly.
    at: Vec<(usize, Option<Exact>)>,
    /// Custom detectors: their own regex over the whole buffer.
    whole: Vec<usize>,
}

impl Scanner {
    pub fn new(detectors: &[Detector]) -> Scanner {
        let mut s = Scanner {
            literals: None,
            literal_text: Vec::new(),
            by_literal: Vec::new(),
            numeric: Vec::new(),
            fewest_digits: usize::MAX,
            iban: Vec::new(),
            at: Vec::new(),
            whole: Vec::new(),
        };
        let mut literals: Vec<(&'static str, usize)> = Vec::new();
        for (i, d) in detectors.iter().enumerate() {
            match d.fast.as_ref().map(|f| f.anchor) {
                Some(Anchor::Literals(l)) => literals.extend(l.iter().map(|l| (*l, i))),
                Some(Anchor::Numeric {
                    digits,
                    groups,
                    exact,
                }) => s.numeric.push(Numeric {
                    detector: i,
                    digits,
                    groups,
                    exact,
                }),
                Some(Anchor::LettersDigits) => s.iban.push(i),
                Some(Anchor::At { exact }) => s.at.push((i, exact)),
                None => s.whole.push(i),
            }
        }
        s.fewest_digits = s
            .numeric
            .iter()
            .map(|n| n.digits)
            .min()
            .unwrap_or(usize::MAX);
        // Prefix-free: a literal that starts with another is found at the
        // same place as the shorter one, which then stands for both.
        literals.sort();
        let mut kept: Vec<&'static str> = Vec::new();
        for (lit, det) in literals {
            let at = match kept.iter().position(|k| lit.starts_with(k)) {
                Some(k) => k,
                None => {
                    kept.push(lit);
                    s.by_literal.push(Vec::new());
                    kept.len() - 1
                }
            };
            if !s.by_literal[at].contains(&det) {
                s.by_literal[at].push(det);
            }
        }
        if !kept.is_empty() {
            s.literals = Some(Literals::new(&kept));
        }
        s.literal_text = kept;
        s
    }

    /// Where the text that could still grow into a match begins
    /// (`text.len()` when none can): the stream masker holds it back
    /// until more arrives. For each kind of anchor, the least that can be
    /// the start of a match cut off by the end: the trailing run of digits
    /// and separators, of IBAN or e-mail bytes; a token whose DFA is still
    /// alive at the end, or a prefix of one cut off; for custom detectors
    /// (no DFA to ask), the last partial line. Looks back at most
    /// MAX_MATCH bytes.
    /// `starts` are the token prefixes' starts in `lower` (all of them,
    /// in order).
    pub fn hold_from(
        &self,
        detectors: &[Detector],
        text: &[u8],
        lower: &[u8],
        starts: &[LiteralStart],
    ) -> usize {
        let len = text.len();
        let floor = len.saturating_sub(MAX_MATCH);
        let mut hold = len;
        if !self.whole.is_empty() {
            hold = memchr::memrchr(b'\n', &text[floor..]).map_or(floor, |i| floor + i + 1);
        }
        let trailing = |class: &Class, starts: fn(u8) -> bool| {
            let r = run_back(text, len, floor, class);
            (r..len).find(|&i| starts(text[i])).unwrap_or(len)
        };
        if !self.numeric.is_empty() || !self.iban.is_empty() {
            let mut run = trailing(&NUMERIC, |c| c.is_ascii_digit() || c == b'+' || c == b'(');
            // The two capitals an IBAN starts with end the numeric run
            // before its digits, and are held with them.
            let capital = |i: Option<usize>| i.is_some_and(|i| text[i].is_ascii_uppercase());
            if !self.iban.is_empty()
                && run < len
                && capital(run.checked_sub(1))
                && capital(run.checked_sub(2))
            {
                run -= 2;
            }
            hold = hold.min(run);
        }
        if !self.iban.is_empty() {
            hold = hold.min(trailing(&IBAN, |c| c.is_ascii_uppercase()));
        }
        if !self.at.is_empty() {
            hold = hold.min(trailing(&EMAIL, |c| c.is_ascii_alphanumeric() || c == b'_'));
        }
        if !self.literal_text.is_empty() {
            hold = hold.min(self.literal_hold(detectors, text, lower, starts, floor));
        }
        hold
    }

    /// `at`, or an earlier place when `at` falls inside a run a detector
    /// reads whole (digits and separators, an IBAN, an e-mail address):
    /// the start of that run, so the rest is scanned from where the whole
    /// text's scan starts it, with the same result. Not before `floor`.
    pub fn settle(&self, text: &[u8], at: usize, floor: usize) -> usize {
        let classes = [
            (!self.numeric.is_empty() || !self.iban.is_empty(), &NUMERIC),
            (!self.iban.is_empty(), &IBAN),
            (!self.at.is_empty(), &EMAIL),
        ];
        let mut at = at;
        loop {
            let before = at;
            for (_, class) in classes.iter().filter(|(used, _)| *used) {
                let inside = at > floor
                    && at < text.len()
                    && class[text[at - 1] as usize]
                    && class[text[at] as usize];
                if inside {
                    at = run_back(text, at, floor, class);
                }
            }
            if at == before {
                return at;
            }
        }
    }

    fn literal_hold(
        &self,
        detectors: &[Detector],
        text: &[u8],
        lower: &[u8],
        starts: &[LiteralStart],
        floor: usize,
    ) -> usize {
        let len = text.len();
        let mut hold = len;
        // A prefix cut off by the end ("...sk", "-----BEG"): the earliest
        // place in the last few bytes where one starts.
        let longest = self.literal_text.iter().map(|l| l.len()).max().unwrap_or(0);
        for p in len.saturating_sub(longest.saturating_sub(1)).max(floor)..len {
            let tail = &lower[p..];
            if self
                .literal_text
                .iter()
                .any(|l| l.len() > tail.len() && l.as_bytes().starts_with(tail))
            {
                hold = p;
                break;
            }
        }
        // The earliest occurrence whose token could still go on (after a
        // few that cannot, the next one is held without asking: bounded
        // work per push whatever the text).
        let first = starts.partition_point(|s| s.at < floor);
        for (dead, s) in starts[first..].iter().enumerate() {
            if s.at >= hold {
                break;
            }
            if dead == MISSES {
                return s.at;
            }
            if self.by_literal[s.literal]
                .iter()
                .any(|&d| alive_at_end(dfa_of(detectors, d), text, s.at))
            {
                return s.at;
            }
        }
        hold
    }

    /// The token prefixes, lower case and prefix-free: a masker that looks
    /// for other literals too finds these in the same pass.
    pub fn literal_text(&self) -> &[&'static str] {
        &self.literal_text
    }

    /// The prefix that starts at `at` in `lower`, if one does (at most
    /// one: no prefix starts with another).
    pub fn literal_at(&self, lower: &[u8], at: usize) -> Option<usize> {
        self.literal_text
            .iter()
            .position(|l| lower[at..].starts_with(l.as_bytes()))
    }

    /// Every start of a prefix in `lower`, in order, with the scanner's own
    /// searcher.
    pub fn literal_starts(&self, lower: &[u8], out: &mut Vec<LiteralStart>) {
        out.clear();
        let Some(literals) = &self.literals else {
            return;
        };
        let mut from = 0;
        // Every start, not only non-overlapping ones: "xoxsk-..." has two.
        while let Some(m) = literals.find_at(lower, from) {
            out.push(LiteralStart {
                at: m.start,
                literal: m.pattern,
            });
            from = m.start + 1;
        }
    }

    /// Whether the literal pass needs the lower-cased copy of the buffer.
    pub fn needs_lower(&self) -> bool {
        !self.literal_text.is_empty()
    }

    /// Every validated match starting in `decide` (the rest of the buffer
    /// is context for them: what was decided before, what could still
    /// grow). `starts` are the token prefixes' starts (`literal_starts`, or
    /// a masker's own pass that finds them too).
    pub fn find(
        &self,
        detectors: &[Detector],
        text: &[u8],
        decide: std::ops::Range<usize>,
        starts: &[LiteralStart],
        scratch: &mut Scratch,
    ) -> usize {
        scratch.found.clear();
        let boundary = decide.end;
        let mut sink = Sink {
            detectors,
            text,
            from: decide.start,
            boundary,
            out: &mut scratch.found,
            work: 0,
        };
        self.literal_pass(&mut sink, starts);
        if !self.numeric.is_empty() || !self.iban.is_empty() {
            let worth = Worth {
                digits: self.fewest_digits,
                after_capitals: !self.iban.is_empty(),
            };
            scratch.digits.build(text, worth);
            self.numeric_pass(&mut sink, &scratch.digits);
        }
        if !self.at.is_empty() {
            self.at_pass(&mut sink);
        }
        for &i in &self.whole {
            for m in detectors[i].regex.find_iter(text) {
                if m.start() >= boundary {
                    break;
                }
                sink.push(i, m.start(), m.end());
            }
        }
        sink.work
    }

    /// Token detectors: their DFA anchored at each place a prefix occurs.
    fn literal_pass(&self, sink: &mut Sink, starts: &[LiteralStart]) {
        if starts.is_empty() {
            return;
        }
        let len = sink.text.len();
        let mut floor = vec![0usize; sink.detectors.len()];
        let mut misses = vec![0usize; sink.detectors.len()];
        for s in starts {
            let at = s.at;
            if at >= sink.boundary {
                break;
            }
            if at < sink.from {
                continue;
            }
            for &d in &self.by_literal[s.literal] {
                if at < floor[d] {
                    continue;
                }
                let dfa = sink.dfa(d);
                if misses[d] < MISSES {
                    // Anchored here: one forward pass, usually short.
                    let input = Input::new(sink.text).span(at..len).anchored(Anchored::Yes);
                    match dfa.forward().try_search_fwd(&input) {
                        Ok(Some(end)) => {
                            sink.work += end.offset() - at;
                            sink.push(d, at, end.offset());
                            floor[d] = end.offset();
                        }
                        _ => {
                            // Where it gave up is not known: count it all.
                            sink.work += len - at;
                            misses[d] += 1;
                        }
                    }
                } else {
                    // Many prefixes that start nothing (a text of "-----BEGIN"
                    // lines and no END, each anchored search running to the
                    // end): the leftmost match from here instead, so each
                    // byte is searched once for this detector.
                    let found = dfa.try_search(&Input::new(sink.text).span(at..len));
                    sink.work += match &found {
                        Ok(Some(f)) => f.end() - at,
                        _ => len - at,
                    };
                    match found {
                        Ok(Some(found)) => {
                            sink.push(d, found.start(), found.end());
                            floor[d] = found.end();
                        }
                        _ => floor[d] = usize::MAX,
                    }
                }
            }
        }
    }

    /// Cards, SSNs, phone numbers, IBANs: around each run of digits the
    /// map marks worth reading (long enough, continued by a separator and
    /// more digits, or after two capitals); the others are a few digits
    /// that nothing continues (`"id":42,`, `warehouse 42 on`), too short
    /// for any detector.
    fn numeric_pass(&self, sink: &mut Sink, digits: &DigitMap) {
        let text = sink.text;
        let mut iban_floor = 0;
        let mut from = 0;
        while let Some(p) = digits.next_worth(from) {
            // A mark on a separator stands for the run ending there.
            let d = if digits.is_digit(p) {
                p
            } else {
                digits.run_start(p)
            };
            if d < from {
                // Inside the last run read.
                from = p + 1;
                continue;
            }
            let digits_end = digits.run_end(d);
            let is_numeric = |i: usize| text.get(i).is_some_and(|&c| NUMERIC[c as usize]);
            // A run marked only for the capitals before it may still be
            // short: a separator then a byte of no number ends it.
            let short = if digits_end - d >= self.fewest_digits {
                None
            } else if !is_numeric(digits_end) {
                Some(digits_end)
            } else if !is_numeric(digits_end + 1) {
                Some(digits_end + 1)
            } else {
                None
            };
            let end = match short {
                // Where a short run starts does not matter: it starts
                // before `boundary` if its digits do, and if they do not,
                // no later run does.
                Some(_) if d >= sink.boundary => break,
                Some(end) => end,
                None => {
                    let start = run_back(text, d, from, &NUMERIC);
                    if start >= sink.boundary {
                        break;
                    }
                    let run = NumericRun::read(digits, d);
                    self.numeric_matches(sink, &run, digits, start, d);
                    run.end
                }
            };
            // An IBAN starts with two capitals, which end a numeric run.
            if d >= 2 && d - 2 >= iban_floor && !NUMERIC[text[d - 1] as usize] {
                let (a, b) = (text[d - 2], text[d - 1]);
                if a.is_ascii_uppercase() && b.is_ascii_uppercase() {
                    let iban_end = run_forward(text, d, &IBAN);
                    for &det in &self.iban {
                        sink.find_iter(det, d - 2, iban_end);
                    }
                    iban_floor = iban_end;
                }
            }
            from = end.max(p + 1);
        }
    }

    /// The numeric detectors' matches in one run of digits and separators
    /// (from `start`, its first digit at `d`).
    fn numeric_matches(
        &self,
        sink: &mut Sink,
        run: &NumericRun,
        digits: &DigitMap,
        start: usize,
        d: usize,
    ) {
        let text = sink.text;
        // No built-in number starts with a space, dot, dash or ')'.
        let first = (start..d)
            .find(|&i| matches!(text[i], b'+' | b'('))
            .unwrap_or(d);
        for n in &self.numeric {
            if run.digits < n.digits || !run.has_groups(n.groups) {
                continue;
            }
            let d = n.detector;
            match n.exact {
                // Luhn-checked as they are found.
                Some(Exact::Card) => {
                    run.cards(text, digits, &mut |s, e| sink.push_checked(d, s, e))
                }
                Some(Exact::Ssn) if run.complete() => {
                    run.ssns(text, &mut |s, e| sink.push(d, s, e))
                }
                Some(Exact::Phone) => {
                    super::numeric::phones(text, first, run.end, &mut |s, e| sink.push(d, s, e))
                }
                _ => sink.find_iter(d, first, run.end),
            }
        }
    }

    /// E-mail addresses: around each `@`.
    fn at_pass(&self, sink: &mut Sink) {
        let text = sink.text;
        let mut floor = 0;
        // `%40` is an `@` percent-encoded (query strings, redirects, logs):
        // the detector's pattern reads it as one, and so does its DFA.
        // One pass finds both: `@`, and `%` then `40`, after any number of
        // `25` (the `%` itself encoded again: `%2540`).
        let escaped_at = |q: usize| {
            let mut i = q + 1;
            while text.get(i..i + 2) == Some(b"25") {
                i += 2;
            }
            text.get(i..i + 2) == Some(b"40")
        };
        let mut anchors = memchr::memchr2_iter(b'@', b'%', text)
            .filter(|&q| text[q] == b'@' || escaped_at(q))
            .peekable();
        while let Some(q) = anchors.next() {
            let is_escaped = text[q] == b'%';
            if q < floor {
                continue;
            }
            // Not before `from`: what is there was decided already.
            let start = run_back(text, q, floor.max(sink.from), &EMAIL);
            if start >= sink.boundary {
                break;
            }
            if is_escaped {
                let end = run_forward(text, q, &EMAIL);
                for &(det, _) in &self.at {
                    sink.find_iter(det, start, end);
                }
                floor = end;
                continue;
            }
            let run = super::email::around_at(text, start, q);
            // Another `@` in the run makes `alone` false; an escaped one
            // would be the next anchor.
            let alone = run.alone && anchors.peek().is_none_or(|&e| e >= run.end);
            for &(det, exact) in &self.at {
                if alone && exact == Some(Exact::Email) {
                    if let Some((s, e)) = run.found {
                        sink.push(det, s, e);
                    }
                } else {
                    sink.find_iter(det, start, run.end);
                }
            }
            floor = run.end;
        }
    }
}

/// A detector found around runs of digits.
struct Numeric {
    detector: usize,
    /// The fewest digits a match has, the digit groups it must have.
    digits: usize,
    groups: &'static [usize],
    /// Matched on the groups directly, not with its DFA.
    exact: Option<Exact>,
}

/// Where matches go: validated, and only those starting before the boundary.
struct Sink<'a> {
    detectors: &'a [Detector],
    text: &'a [u8],
    /// Matches start in `from..boundary`.
    from: usize,
    boundary: usize,
    out: &'a mut Vec<Found>,
    /// Bytes handed to token DFAs (at most): the tests hold it linear.
    work: usize,
}

impl<'a> Sink<'a> {
    fn dfa(&self, d: usize) -> &'a DfaRegex {
        dfa_of(self.detectors, d)
    }

    /// A match its reader validated already.
    fn push_checked(&mut self, detector: usize, start: usize, end: usize) {
        if (self.from..self.boundary).contains(&start) {
            self.out.push(Found {
                start,
                end,
                detector,
            });
        }
    }

    fn push(&mut self, detector: usize, start: usize, end: usize) {
        if (self.from..self.boundary).contains(&start)
            && self.detectors[detector].accepts(&self.text[start..end])
        {
            self.out.push(Found {
                start,
                end,
                detector,
            });
        }
    }

    /// The detector's matches inside `[start, end)`, with the bytes around
    /// it as context for `\b`. A run usually begins with its match, so
    /// that is tried first, anchored: one forward pass, no reverse one.
    fn find_iter(&mut self, detector: usize, start: usize, end: usize) {
        let dfa = self.dfa(detector);
        let anchored = Input::new(self.text)
            .span(start..end)
            .anchored(Anchored::Yes);
        let rest = match dfa.forward().try_search_fwd(&anchored) {
            Ok(Some(m)) => {
                self.push(detector, start, m.offset());
                m.offset()
            }
            _ => start + 1,
        };
        if rest < end {
            for m in dfa.find_iter(Input::new(self.text).span(rest..end)) {
                self.push(detector, m.start(), m.end());
            }
        }
    }
}

/// The DFA of detector `d`, one the scanner anchors (a built-in).
fn dfa_of(detectors: &[Detector], d: usize) -> &DfaRegex {
    &detectors[d]
        .fast
        .as_ref()
        .expect("anchored detectors are built-ins")
        .dfa
}

/// Anchored misses per detector and buffer before its search goes on
/// unanchored (linear however many prefixes start nothing).
const MISSES: usize = 4;

/// Whether a match of `dfa` starting at `at` could still go on past the
/// end of `text`: its DFA, run from there over the rest, is not dead.
fn alive_at_end(dfa: &DfaRegex, text: &[u8], at: usize) -> bool {
    let fwd = dfa.forward();
    let input = Input::new(text)
        .span(at..text.len())
        .anchored(Anchored::Yes);
    let Ok(mut state) = fwd.start_state_forward(&input) else {
        return true;
    };
    for &b in &text[at..] {
        state = fwd.next_state(state, b);
        if fwd.is_dead_state(state) {
            return false;
        }
        if fwd.is_quit_state(state) {
            return true;
        }
    }
    true
}

/// Byte classes as tables: a run scan is one load per byte.
type Class = [bool; 256];

const fn class(ranges: &[(u8, u8)]) -> Class {
    let mut t = [false; 256];
    let mut r = 0;
    while r < ranges.len() {
        let mut c = ranges[r].0;
        while c <= ranges[r].1 {
            t[c as usize] = true;
            c += 1;
        }
        r += 1;
    }
    t
}

/// Every byte a card, SSN or phone number is made of.
pub(super) static NUMERIC: Class = class(&[
    (b'0', b'9'),
    (b' ', b' '),
    (b'.', b'.'),
    (b'(', b')'),
    (b'+', b'+'),
    (b'-', b'-'),
]);
/// Every byte of an IBAN.
static IBAN: Class = class(&[(b'0', b'9'), (b'A', b'Z'), (b' ', b' ')]);
/// Every byte of an e-mail address.
pub(super) static EMAIL: Class = class(&[
    (b'0', b'9'),
    (b'A', b'Z'),
    (b'a', b'z'),
    (b'.', b'.'),
    (b'_', b'_'),
    (b'%', b'%'),
    (b'+', b'+'),
    (b'-', b'-'),
    (b'@', b'@'),
]);

/// A byte `\b` counts as part of a word (ASCII: the patterns are `(?-u)`).
pub(super) fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `\b` before the word byte at `at`.
pub(super) fn boundary_before(text: &[u8], at: usize) -> bool {
    at == 0 || !is_word(text[at - 1])
}

/// `\b` after the word byte before `at`.
pub(super) fn boundary_after(text: &[u8], at: usize) -> bool {
    !text.get(at).copied().is_some_and(is_word)
}

/// The start of the run of `class` bytes that ends at `at`, not before
/// `floor` (where the previous run ended: each byte is looked at once).
fn run_back(text: &[u8], at: usize, floor: usize, class: &Class) -> usize {
    let mut i = at;
    while i > floor && class[text[i - 1] as usize] {
        i -= 1;
    }
    i
}

/// The end of the run of `class` bytes from `at`.
fn run_forward(text: &[u8], at: usize, class: &Class) -> usize {
    let mut i = at;
    while i < text.len() && class[text[i] as usize] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::super::detectors;
    use super::*;
    use proptest::prelude::*;

    fn all() -> &'static [Detector] {
        static ALL: std::sync::OnceLock<Vec<Detector>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| {
            detectors::builtin_names()
                .map(|n| detectors::builtin(n).unwrap())
                .collect()
        })
    }

    /// The scanner's matches, as a sorted list.
    fn scanned(text: &[u8]) -> Vec<Found> {
        let d = all();
        let scanner = Scanner::new(d);
        let mut scratch = Scratch::default();
        let mut starts = Vec::new();
        scanner.literal_starts(&text.to_ascii_lowercase(), &mut starts);
        scanner.find(d, text, 0..text.len(), &starts, &mut scratch);
        let mut out = scratch.found;
        out.sort_by_key(|f| (f.detector, f.start));
        out.dedup();
        out
    }

    /// The definition: each detector's regex over the whole text, validated.
    /// Cards as `NumericRun::cards` reads them, by brute force: from the
    /// leftmost start, the longest span the card regex matches whole (with
    /// its boundaries) that passes Luhn.
    fn reference_cards(text: &[u8], card: &detectors::Detector) -> Vec<(usize, usize)> {
        let whole = regex::bytes::Regex::new(r"(?-u)^\d(?:[ -]?\d){12,18}$").unwrap();
        let mut out = Vec::new();
        let mut s = 0;
        while s < text.len() {
            let found = (s + 1..=text.len().min(s + 40)).rev().find(|&e| {
                whole.is_match(&text[s..e])
                    && boundary_before(text, s)
                    && boundary_after(text, e)
                    && card.accepts(&text[s..e])
            });
            match found {
                Some(e) => {
                    out.push((s, e));
                    s = e;
                }
                None => s += 1,
            }
        }
        out
    }

    fn reference(text: &[u8]) -> Vec<Found> {
        let mut out = Vec::new();
        for (i, d) in all().iter().enumerate() {
            if d.name == "card" {
                out.extend(
                    reference_cards(text, d)
                        .into_iter()
                        .map(|(start, end)| Found {
                            start,
                            end,
                            detector: i,
                        }),
                );
                continue;
            }
            for m in d.regex.find_iter(text) {
                if d.accepts(m.as_bytes()) {
                    out.push(Found {
                        start: m.start(),
                        end: m.end(),
                        detector: i,
                    });
                }
            }
        }
        out.sort_by_key(|f| (f.detector, f.start));
        out
    }

    /// Prefixes that start no match, thousands of them: each byte goes
    /// through a token's DFA a bounded number of times.
    #[test]
    fn many_prefixes_cost_linear_work() {
        let d = all();
        let scanner = Scanner::new(d);
        for unit in [
            "-----BEGIN PRIVATE KEY-----\n",
            "sk-",
            "eyJhbGciOiJIUzI1NiJ9.",
            "Bearer ",
        ] {
            let text = unit.repeat(64 * 1024 / unit.len()).into_bytes();
            let lower = text.to_ascii_lowercase();
            let mut starts = Vec::new();
            scanner.literal_starts(&lower, &mut starts);
            let work = scanner.find(d, &text, 0..text.len(), &starts, &mut Scratch::default());
            assert!(
                work <= 12 * text.len(),
                "{unit:?}: {work} for {}",
                text.len()
            );
            assert!(scanner.hold_from(d, &text, &lower, &starts) <= text.len());
        }
    }

    #[test]
    fn same_matches_as_the_regexes_on_samples() {
        let samples = [
            "pay 4111 1111 1111 1111 now, ssn 123-45-6789; call +1 (415) 555-0132",
            "IBAN DE89 3704 0044 0532 0130 00 and GB82WEST12345698765432.",
            "mail alice.smith+x@example.co.uk!bob@x.io @@ a@b c@d.e f@g.hi",
            "a@b.comx-y a@b.c0m a@b.cc.d ..+a@b.io _a@b.io a@b.com_x a@b..com a@b.com. %@b.io a@-b.io",
            "+14155550132 +1 (415) 555-0132 +1-415.555 0132 +1234 415 555 0132 (415 555-0132 415) 555-0132",
            "a415 555 0132 415 555 01322 +12(415)555-0132 ++1 415 555 0132 +1 +1 415-555-0132 ((415) 555-0132",
            "x@y.abcdefghijklmnopqrstuvwxy x@y.abcdefghijklmnopqrstuvwx éa@b.io a@b.io9 a@b.io-9 a@b-.c-.de",
            "key=AKIAIOSFODNN7EXAMPLE; xoxb-1234567890-abcdefghij sk-ant-api03-abcdefghijklmnopqrstuv",
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345 BEARER abcdefghijklmnop1234 bearer\tx",
            "t=eyJhbGciOi.eyJzdWIiOi.c2ln& ghp_0123456789abcdefghijABCDEFGHIJ012345 glpat-abcdefghij0123456789",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK=\n-----END RSA PRIVATE KEY-----",
            "4111111111111111111111 1234-5678-9012-3456 café4111 1111 1111 1111 (415)555-0132",
            "xoxsk-ant-abcdefghijklmnopqrstuv sk-sk-abcdefghijklmnopqrstuvwxyz",
            // Cards next to a CVV, an expiry or another number (attack pass 8).
            "card 4111 1111 1111 1111 123 ok 4111111111111111 123 1 4111111111111111",
            "378282246310005 1225, 4111-1111-1111-1111-1, 5555 5555 5555 4444 12 34",
            "1 2 3 4 5 6 7 8 9 0 1 2 4111 1111 1111 1111 9 9",
            // An `@` percent-encoded (attack pass 8), alone and next to one.
            "to=john.doe%40example.com&a%40b%40c.com a%40b@c.io x@y%40z.io %40a.io a%4",
            "r=john.doe%2540example.com a%252540b.io a%25b.io a%2540%40b.io %25%2540x.io",
        ];
        for s in samples {
            assert_eq!(scanned(s.as_bytes()), reference(s.as_bytes()), "{s}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Random text made of fragments of every detector's alphabet: the
        /// scanner finds exactly the regexes' validated matches.
        #[test]
        fn same_matches_as_the_regexes(parts in proptest::collection::vec(prop_oneof![
            Just("4111 1111 1111 1111".to_string()), Just("4111-1111-1111-1111".to_string()), Just("123-45-6789".to_string()),
            Just("+1 415-555-0132".to_string()), Just("(415) 555-0132".to_string()), Just("415".to_string()), Just("555-0132".to_string()),
            Just("+1".to_string()), Just("+123".to_string()), Just("(".to_string()), Just(")".to_string()), Just("DE89 3704 0044 0532 0130 00".to_string()),
            Just("alice@example.com".to_string()), Just("@".to_string()), Just(".".to_string()), Just(" ".to_string()), Just("-".to_string()), Just("\n".to_string()),
            Just("AKIAIOSFODNN7EXAMPLE".to_string()), Just("sk-".to_string()), Just("ant-".to_string()), Just("eyJ".to_string()), Just("xox".to_string()),
            Just("b-".to_string()), Just("_".to_string()), Just("%".to_string()), Just("+".to_string()), Just(".io".to_string()), Just("@x-y.example.org".to_string()), Just("%40".to_string()), Just("40".to_string()), Just("%25".to_string()), Just("25".to_string()), Just("123".to_string()),
            Just("Bearer ".to_string()), Just("ghp_".to_string()), Just("glpat-".to_string()), Just("é".to_string()),
            "[0-9]{1,6}", "[A-Za-z]{1,8}", "[A-Z]{2}[0-9]{2}", "[ .()+-]{1,2}",
        ], 0..24)) {
            let text = parts.concat();
            prop_assert_eq!(scanned(text.as_bytes()), reference(text.as_bytes()), "{:?}", text);
        }
    }
}
