//! A set of literal strings found in one pass: Teddy (aho-corasick's SIMD
//! packed searcher) where the CPU has it, else an Aho-Corasick automaton.
//! Asked for directly because the automaton's own choice of prefilter
//! falls back to a byte-at-a-time loop for more than 16 patterns or
//! varied first bytes (both the case here), about ten times slower.
use aho_corasick::packed;

pub enum Literals {
    Teddy(packed::Searcher),
    Automaton(aho_corasick::AhoCorasick),
}

/// One occurrence: pattern `pattern` starts at `start`.
pub struct Hit {
    pub start: usize,
    pub pattern: usize,
}

impl Literals {
    /// Leftmost-longest: of matches starting at one place, the longest.
    pub fn new<P: AsRef<[u8]>>(patterns: &[P]) -> Literals {
        let teddy = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(patterns)
            .build();
        match teddy {
            Some(t) => Literals::Teddy(t),
            None => Literals::Automaton(
                aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(patterns)
                    .expect("a few literals fit an automaton"),
            ),
        }
    }

    /// The leftmost occurrence starting at or after `from`.
    pub fn find_at(&self, hay: &[u8], from: usize) -> Option<Hit> {
        if from > hay.len() {
            return None;
        }
        let (start, pattern) = match self {
            Literals::Teddy(t) => {
                let m = t.find_in(hay, aho_corasick::Span::from(from..hay.len()))?;
                (m.start(), m.pattern().as_usize())
            }
            Literals::Automaton(a) => {
                let m = a.find(aho_corasick::Input::new(hay).span(from..hay.len()))?;
                (m.start(), m.pattern().as_usize())
            }
        };
        Some(Hit { start, pattern })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftmost_longest_from_any_offset() {
        let l = Literals::new(&["sk-", "sk-ant-", "xox", "eyj"]);
        let hay = b"..sk-ant-x xoxsk-";
        let h = l.find_at(hay, 0).unwrap();
        assert_eq!((h.start, h.pattern), (2, 1));
        let h = l.find_at(hay, 3).unwrap();
        assert_eq!((h.start, h.pattern), (11, 2));
        let h = l.find_at(hay, 12).unwrap();
        assert_eq!((h.start, h.pattern), (14, 0));
        assert!(l.find_at(hay, 15).is_none());
        assert!(l.find_at(hay, hay.len()).is_none());
    }
}
