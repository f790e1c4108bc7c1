//! Where a buffer's ASCII digits are, one bit a byte, made in one pass
//! sixteen bytes at a time. Cards, SSNs and phone numbers are runs of
//! digits; finding each run and each group's end byte by byte was a third
//! of the masker's time on text full of numbers, and with the map both are
//! a few bit operations.
//!
//! The map also marks the runs of digits worth reading (`next_worth`):
//! most are a few digits that nothing continues (`"id":42,`), and deciding
//! that run by run, a mispredicted branch each, was a fifth of the
//! masker's time on JSON full of numbers. Over the bit planes it is a few
//! word operations per 64 bytes.

#[derive(Default)]
pub struct DigitMap {
    /// Bit `i % 64` of word `i / 64` is set when byte `i` is a digit;
    /// bits past the end of the buffer are clear.
    words: Vec<u64>,
    /// The same for the separators of a number.
    seps: Vec<u64>,
    /// Where to look (`next_worth`).
    worth: Vec<u64>,
}

/// Which runs of digits are worth reading.
#[derive(Clone, Copy)]
pub struct Worth {
    /// A run of at least this many digits (`usize::MAX`: none by length).
    pub digits: usize,
    /// A run after two capitals (where an IBAN's digits start).
    pub after_capitals: bool,
}

/// One 64-byte block's digits, separators of a number (`scan::NUMERIC`
/// less the digits) and capitals, a bit a byte.
#[derive(Clone, Copy, Default)]
struct Planes {
    digits: u64,
    seps: u64,
    capitals: u64,
}

impl DigitMap {
    /// The map of `text`, reusing the allocations: digits, and the runs
    /// `worth` says to read. One pass: a block's marks need the next
    /// block's planes, so each is made one block behind.
    pub fn build(&mut self, text: &[u8], worth: Worth) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512BW (checked).
            return unsafe { self.build_avx512(text, worth) };
        }
        self.build_with(text, worth, block_planes);
    }

    /// `build` with AVX-512BW: one compare a class for a whole block, a
    /// third of the SSE2 version's time (which was an eighth of the
    /// masker's on text full of numbers).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512bw")]
    unsafe fn build_avx512(&mut self, text: &[u8], worth: Worth) {
        // The closure has this function's target features.
        self.build_with(text, worth, |b| block_planes_avx512(b));
    }

    #[inline(always)]
    fn build_with(&mut self, text: &[u8], worth: Worth, planes: impl Fn(&[u8; 64]) -> Planes) {
        for plane in [&mut self.words, &mut self.seps, &mut self.worth] {
            plane.clear();
            plane.reserve(text.len() / 64 + 1);
        }
        let (mut before, mut current) = (Planes::default(), None);
        let mut blocks = text.chunks_exact(64);
        let rest = blocks.remainder();
        let last = (!rest.is_empty()).then(|| slow_planes(rest));
        let all = (&mut blocks)
            .map(|b| planes(b.try_into().expect("64 bytes")))
            .chain(last);
        for next in all {
            if let Some(cur) = current.replace(next) {
                self.push(before, cur, next, worth);
                before = cur;
            }
        }
        if let Some(cur) = current {
            self.push(before, cur, Planes::default(), worth);
        }
    }

    /// Marks, in the block `cur`, each place a run of digits starts that
    /// may be long enough (its k-th byte is a digit; the reader checks) or
    /// follows two capitals, and each separator that continues a run (a
    /// digit before it, a digit or separator after it): the run ending
    /// there goes on into a number of groups. Any other run is fewer
    /// digits than a detector needs followed by at most one separator,
    /// read by nothing.
    #[inline(always)]
    fn push(&mut self, before: Planes, cur: Planes, next: Planes, worth: Worth) {
        let digit_before = (cur.digits << 1) | (before.digits >> 63);
        let starts = cur.digits & !digit_before;
        let numeric = |p: Planes| p.digits | p.seps;
        let numeric_after = (numeric(cur) >> 1) | (numeric(next) << 63);
        let continues = cur.seps & digit_before & numeric_after;
        // Bit i: byte i + k is a digit.
        let digit_ahead = |k: usize| match k {
            0 => cur.digits,
            1..64 => (cur.digits >> k) | (next.digits << (64 - k)),
            64 => next.digits,
            _ => 0,
        };
        let long = match worth.digits {
            0 => starts,
            usize::MAX => 0,
            // Further than one block ahead: every start may be.
            k if k > 65 => starts,
            k => digit_ahead(k - 1),
        };
        let capitals = if worth.after_capitals {
            let one = (cur.capitals << 1) | (before.capitals >> 63);
            let two = (cur.capitals << 2) | (before.capitals >> 62);
            one & two
        } else {
            0
        };
        self.words.push(cur.digits);
        self.seps.push(cur.seps);
        self.worth.push((starts & (long | capitals)) | continues);
    }

    /// The next place at or after `from` that `push` marked: the
    /// first digit of a run worth reading, or the separator after the
    /// first group of one (`run_start` finds its first digit).
    pub fn next_worth(&self, from: usize) -> Option<usize> {
        next_set(&self.worth, from)
    }

    /// Byte `i` is a digit.
    pub fn is_digit(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// The first digit of the run of digits that ends at `end` (`end`
    /// itself when the byte before it is not a digit).
    pub fn run_start(&self, end: usize) -> usize {
        let mut at = end;
        while at > 0 {
            let w = (at - 1) / 64;
            let bit = (at - 1) % 64;
            // The digits at and below `at - 1` in this word, top-aligned.
            let below = self.words[w] << (63 - bit);
            let ones = below.leading_ones() as usize;
            at -= ones;
            if ones <= bit {
                break;
            }
        }
        at
    }

    /// The end of the run of digits that starts at `at` (`at` itself when
    /// it is not a digit).
    pub fn run_end(&self, at: usize) -> usize {
        ones_end(&self.words, at)
    }

    /// Whether each of the 64 bytes from `at` is a digit (bit 0: `at`).
    pub fn digits_from(&self, at: usize) -> u64 {
        window(&self.words, at)
    }

    /// Whether each of the 64 bytes from `at` is a separator.
    pub fn seps_from(&self, at: usize) -> u64 {
        window(&self.seps, at)
    }

    /// The end of the run of separators that starts at `at`.
    pub fn seps_end(&self, at: usize) -> usize {
        ones_end(&self.seps, at)
    }
}

/// Bits `at..at + 64` of the plane (clear past its end).
fn window(plane: &[u64], at: usize) -> u64 {
    let (w, shift) = (at / 64, at % 64);
    let low = plane.get(w).map_or(0, |x| x >> shift);
    let high = match shift {
        0 => 0,
        _ => plane.get(w + 1).map_or(0, |x| x << (64 - shift)),
    };
    low | high
}

/// The end of the run of set bits from `at`.
fn ones_end(plane: &[u64], at: usize) -> usize {
    let mut w = at / 64;
    let Some(&word) = plane.get(w) else {
        return at;
    };
    let shift = at % 64;
    let ones = (word >> shift).trailing_ones() as usize;
    if ones < 64 - shift {
        return at + ones;
    }
    let mut end = (w + 1) * 64;
    loop {
        w += 1;
        let Some(&word) = plane.get(w) else {
            return end;
        };
        let ones = word.trailing_ones() as usize;
        end += ones;
        if ones < 64 {
            return end;
        }
    }
}

/// The first set bit at or after `from`.
fn next_set(plane: &[u64], from: usize) -> Option<usize> {
    let mut w = from / 64;
    let mut bits = *plane.get(w)? & (!0u64 << (from % 64));
    while bits == 0 {
        w += 1;
        bits = *plane.get(w)?;
    }
    Some(w * 64 + bits.trailing_zeros() as usize)
}

/// A number's separators (`scan::NUMERIC` less the digits).
fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'.' | b'(' | b')' | b'+' | b'-')
}

/// Up to 64 bytes, one at a time (the tail of a buffer): digits,
/// separators, capitals.
fn slow_planes(bytes: &[u8]) -> Planes {
    let mut p = Planes::default();
    for (j, &b) in bytes.iter().enumerate() {
        p.digits |= u64::from(b.is_ascii_digit()) << j;
        p.seps |= u64::from(is_sep(b)) << j;
        p.capitals |= u64::from(b.is_ascii_uppercase()) << j;
    }
    p
}

#[cfg(target_arch = "x86_64")]
fn block_planes(block: &[u8; 64]) -> Planes {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // LLVM does not vectorise the bit gathering of `slow_planes` (about
    // 0.7 GB/s); this is 20+ GB/s.
    let mut planes = [0u64; 3];
    for k in 0..4 {
        // SAFETY: SSE2 is part of the x86_64 baseline, and the load reads
        // 16 bytes at offset 16k of a 64-byte array (unaligned load).
        let bits = unsafe {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>());
            // Signed compares: bytes of 0x80 and above are negative, never
            // inside an ASCII range.
            let within = |lo: u8, hi: u8| {
                _mm_and_si128(
                    _mm_cmpgt_epi8(v, _mm_set1_epi8(lo as i8 - 1)),
                    _mm_cmplt_epi8(v, _mm_set1_epi8(hi as i8 + 1)),
                )
            };
            let is = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
            let sep = _mm_or_si128(
                _mm_or_si128(is(b' '), is(b'.')),
                _mm_or_si128(within(b'(', b')'), _mm_or_si128(is(b'+'), is(b'-'))),
            );
            [
                _mm_movemask_epi8(within(b'0', b'9')) as u16,
                _mm_movemask_epi8(sep) as u16,
                _mm_movemask_epi8(within(b'A', b'Z')) as u16,
            ]
        };
        for (plane, b) in planes.iter_mut().zip(bits) {
            *plane |= u64::from(b) << (16 * k);
        }
    }
    let [digits, seps, capitals] = planes;
    Planes {
        digits,
        seps,
        capitals,
    }
}

/// The CPU has AVX-512BW (asked once).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::is_x86_feature_detected!("avx512bw"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
#[inline]
fn block_planes_avx512(block: &[u8; 64]) -> Planes {
    use std::arch::x86_64::{
        __m512i, _mm512_cmpeq_epi8_mask, _mm512_cmpge_epu8_mask, _mm512_cmple_epu8_mask,
        _mm512_loadu_si512, _mm512_set1_epi8,
    };
    // SAFETY: the load reads the 64 bytes of the array (unaligned load).
    let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast::<__m512i>()) };
    let within = |lo: u8, hi: u8| {
        _mm512_cmpge_epu8_mask(v, _mm512_set1_epi8(lo as i8))
            & _mm512_cmple_epu8_mask(v, _mm512_set1_epi8(hi as i8))
    };
    let is = |b: u8| _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b as i8));
    Planes {
        digits: within(b'0', b'9'),
        seps: is(b' ') | is(b'.') | within(b'(', b')') | is(b'+') | is(b'-'),
        capitals: within(b'A', b'Z'),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn block_planes(block: &[u8; 64]) -> Planes {
    slow_planes(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NONE: Worth = Worth {
        digits: usize::MAX,
        after_capitals: false,
    };

    /// Where `mark_worth` should mark, byte by byte.
    fn worth_by_hand(text: &[u8], worth: Worth) -> Vec<usize> {
        let digit = |i: usize| text.get(i).is_some_and(u8::is_ascii_digit);
        let numeric = |i: usize| {
            text.get(i)
                .is_some_and(|&b| super::super::scan::NUMERIC[b as usize])
        };
        let capital = |i: usize| text.get(i).is_some_and(u8::is_ascii_uppercase);
        (0..text.len())
            .filter(|&i| {
                if digit(i) && (i == 0 || !digit(i - 1)) {
                    let end = (i..text.len()).find(|&j| !digit(j)).unwrap_or(text.len());
                    end - i >= worth.digits
                        || (worth.after_capitals && i >= 2 && capital(i - 1) && capital(i - 2))
                } else {
                    !digit(i) && numeric(i) && i > 0 && digit(i - 1) && numeric(i + 1)
                }
            })
            .collect()
    }

    #[test]
    fn separators_are_the_numeric_class_less_the_digits() {
        let all: Vec<u8> = (0..=255).collect();
        for b in 0..=255u8 {
            let numeric = super::super::scan::NUMERIC[b as usize];
            assert_eq!(is_sep(b), numeric && !b.is_ascii_digit(), "{b}");
        }
        for block in all.chunks_exact(64) {
            let block: &[u8; 64] = block.try_into().unwrap();
            let slow = slow_planes(block);
            let mut fast = vec![block_planes(block)];
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: the CPU has AVX-512BW (checked).
                fast.push(unsafe { block_planes_avx512(block) });
            }
            for f in fast {
                assert_eq!(
                    (f.digits, f.seps, f.capitals),
                    (slow.digits, slow.seps, slow.capitals)
                );
            }
        }
    }

    proptest! {
        /// The runs worth reading, and each one's start from the separator
        /// after its first group, as byte by byte.
        #[test]
        fn runs_worth_reading_as_byte_by_byte(
            text in proptest::collection::vec(
                prop_oneof![Just(b'0'), Just(b'7'), Just(b' '), Just(b'-'), Just(b'('),
                    Just(b'A'), Just(b'Z'), Just(b'x'), any::<u8>()], 0..300),
            digits in prop_oneof![0usize..20, 60usize..70, Just(usize::MAX)],
            after_capitals in any::<bool>(),
        ) {
            let worth = Worth { digits, after_capitals };
            let mut map = DigitMap::default();
            map.build(&text, worth);
            let want = worth_by_hand(&text, worth);
            let mut got = Vec::new();
            let mut from = 0;
            while let Some(p) = map.next_worth(from) {
                got.push(p);
                from = p + 1;
            }
            // What must be marked is; what more is marked is a run's
            // start (the reader checks its length).
            let start = |i: usize| text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_digit());
            prop_assert!(want.iter().all(|w| got.contains(w)), "{:?} {:?}", want, got);
            prop_assert!(got.iter().all(|g| want.contains(g) || start(*g)), "{:?} {:?}", want, got);
            if digits == usize::MAX {
                prop_assert_eq!(&got, &want);
            }
            for i in 0..=text.len() {
                let start = (0..i).rev().take_while(|&j| text[j].is_ascii_digit()).last().unwrap_or(i);
                prop_assert_eq!(map.run_start(i), start, "start of the run ending at {}", i);
                prop_assert_eq!(map.is_digit(i), text.get(i).is_some_and(u8::is_ascii_digit));
            }
        }
    }

    proptest! {
        /// Every byte value, every length around the 64-byte blocks: the
        /// map's digits and run ends are the bytes' own.
        #[test]
        fn digits_and_runs_as_byte_by_byte(text in proptest::collection::vec(
            prop_oneof![Just(b'0'), Just(b'9'), Just(b'/'), Just(b':'), Just(b' '), Just(b'-'), any::<u8>()], 0..300)
        ) {
            let mut map = DigitMap::default();
            map.build(&text, NONE);
            for from in 0..=text.len() + 1 {
                prop_assert_eq!(map.is_digit(from), text.get(from).is_some_and(u8::is_ascii_digit));
                let end = (from..text.len()).find(|&i| !text[i].is_ascii_digit()).unwrap_or(text.len().max(from));
                prop_assert_eq!(map.run_end(from), end, "run from {}", from);
                let end = (from..text.len()).find(|&i| !is_sep(text[i])).unwrap_or(text.len().max(from));
                prop_assert_eq!(map.seps_end(from), end, "separators from {}", from);
            }
        }
    }

    #[test]
    fn long_runs_across_words() {
        let mut text = vec![b'x'; 10];
        text.extend(std::iter::repeat_n(b'7', 200));
        text.push(b'-');
        let mut map = DigitMap::default();
        map.build(&text, NONE);
        assert!(!map.is_digit(9) && map.is_digit(10));
        assert_eq!(map.run_end(10), 210);
        assert_eq!(map.run_end(64), 210);
        assert_eq!(map.seps_end(210), 211);
        map.build(&[], NONE);
        assert!(!map.is_digit(0));
        assert_eq!(map.run_end(0), 0);
    }
}
