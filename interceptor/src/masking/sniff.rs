//! A body with no media type, or `text/plain`, that is a stream of events
//! all the same: SSE a server forgot to label (the openai SDK parses it
//! anyway), or the Vercel AI SDK's data stream without its header (3.x, or
//! a hand-written route: found by an attack pass, masked as bytes, the key
//! out whole). The first line decides: `data:` or `event:` is SSE, a type
//! code and JSON (`0:"tok"`) is the data stream, anything else is text,
//! masked as bytes.
use super::body::Events;
use super::ndjson::{NdjsonMasker, type_code};
use super::sse::{EventError, SseMasker};
use super::{Counts, StreamMasker};
use std::time::Instant;

/// Read before deciding, at most (a data stream's first line may be a
/// large part, sources or data: an attack pass cut one at 4 KiB).
const FIRST_LINE: usize = super::sse::MAX_EVENT;

/// Lines that make a body SSE: any field a client reads, or a comment.
const SSE_STARTS: [&[u8]; 5] = [b"data:", b"event:", b"id:", b"retry:", b":"];

pub struct Sniffed {
    choice: Option<Choice>,
    /// The makings of each, until one is chosen.
    sse: Option<SseMasker>,
    typed: Option<NdjsonMasker>,
    bytes: Option<StreamMasker>,
    /// What arrived before the choice.
    buf: Vec<u8>,
}

enum Choice {
    Events(Box<dyn Events>),
    Bytes(Box<StreamMasker>),
}

impl Sniffed {
    pub fn new(sse: SseMasker, typed: NdjsonMasker, bytes: StreamMasker) -> Self {
        Sniffed {
            choice: None,
            sse: Some(sse),
            typed: Some(typed.typed(true)),
            bytes: Some(bytes),
            buf: Vec::new(),
        }
    }

    fn choose(&mut self) -> Choice {
        let text = String::from_utf8_lossy(&self.buf);
        // Blank lines before the first are nothing to an SSE client.
        let first = text
            .trim_start_matches('\u{feff}')
            .trim_start_matches(['\r', '\n'])
            .split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches('\r');
        let typed = type_code(first)
            .is_some_and(|(_, json)| serde_json::from_str::<serde_json::Value>(json).is_ok());
        if SSE_STARTS.iter().any(|s| first.as_bytes().starts_with(s)) {
            Choice::Events(Box::new(self.sse.take().expect("chosen once")))
        } else if typed {
            Choice::Events(Box::new(self.typed.take().expect("chosen once")))
        } else {
            Choice::Bytes(Box::new(self.bytes.take().expect("chosen once")))
        }
    }

    fn feed(&mut self, chunk: &[u8], now: Instant) -> Result<Vec<u8>, EventError> {
        match self.choice.as_mut().expect("chosen") {
            Choice::Events(e) => e.push_at(chunk, now),
            Choice::Bytes(m) => Ok(m.push(chunk)),
        }
    }
}

/// Whether the first line that is not blank has ended.
fn first_line_ends(buf: &[u8]) -> bool {
    let t = buf.strip_prefix(b"\xef\xbb\xbf").unwrap_or(buf);
    t.iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .is_some_and(|start| t[start..].contains(&b'\n'))
}

/// Whether the start of the first line leaves the choice open: it could
/// still be `data:`/`event:`, or a type code whose JSON has not ended.
/// Text is decided within a few bytes, so a plain-text token stream is not
/// held back.
fn still_open(buf: &[u8]) -> bool {
    let t = buf.strip_prefix(b"\xef\xbb\xbf").unwrap_or(buf);
    let Some(start) = t.iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
        return true;
    };
    let t = &t[start..];
    let sse = SSE_STARTS
        .iter()
        .any(|f| f.starts_with(t) && !t.starts_with(f));
    let code = |b: &u8| b.is_ascii_digit() || b.is_ascii_lowercase();
    let typed = match t {
        [] => true,
        [a] => code(a),
        [a, b':', ..] => code(a),
        [a, b, rest @ ..] if code(a) && code(b) => rest.first().is_none_or(|c| *c == b':'),
        _ => false,
    };
    sse || typed
}

impl Events for Sniffed {
    fn push_at(&mut self, chunk: &[u8], now: Instant) -> Result<Vec<u8>, EventError> {
        if self.choice.is_some() {
            return self.feed(chunk, now);
        }
        self.buf.extend_from_slice(chunk);
        if !first_line_ends(&self.buf) && self.buf.len() < FIRST_LINE && still_open(&self.buf) {
            return Ok(Vec::new());
        }
        self.choice = Some(self.choose());
        let held = std::mem::take(&mut self.buf);
        self.feed(&held, now)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.choice.is_none() {
            self.choice = Some(self.choose());
            let held = std::mem::take(&mut self.buf);
            out.extend(self.feed(&held, Instant::now()).unwrap_or_default());
        }
        match self.choice.as_mut().expect("chosen") {
            Choice::Events(e) => out.extend(e.finish()),
            Choice::Bytes(m) => out.extend(m.finish()),
        }
        out
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.choice {
            Some(Choice::Events(e)) => e.deadline(),
            _ => None,
        }
    }

    fn expire(&mut self, now: Instant) -> Vec<u8> {
        match &mut self.choice {
            Some(Choice::Events(e)) => e.expire(now),
            _ => Vec::new(),
        }
    }

    fn take_counts(&mut self) -> Counts {
        match &mut self.choice {
            Some(Choice::Events(e)) => e.take_counts(),
            Some(Choice::Bytes(m)) => std::mem::take(&mut m.counts),
            None => Counts::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SECRET: &str = "sk-SNIFF-5e4d3c2b1a";

    fn sniffer() -> Sniffed {
        let p = Arc::new(crate::masking::test_profile(&["card"]));
        let proto = StreamMasker::new(p.clone(), &[SECRET]);
        Sniffed::new(
            SseMasker::new(p.clone(), &[SECRET]),
            NdjsonMasker::new(proto.sibling(), vec![]),
            proto,
        )
    }

    /// Plain text is decided within a few bytes: a plain-text token
    /// stream is not held back for a line.
    #[test]
    fn plain_text_is_not_held_for_a_line() {
        let mut m = sniffer();
        let out = m.push_at(b"Hello, this is ", Instant::now()).unwrap();
        assert!(!out.is_empty());
    }

    fn run(body: &str) -> String {
        let mut m = sniffer();
        let now = Instant::now();
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(3) {
            out.extend(m.push_at(chunk, now).unwrap());
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    /// Streams without their label are read as what they are.
    #[test]
    fn unlabelled_streams_are_read_as_streams() {
        let (a, b) = SECRET.split_at(7);
        let typed = format!("0:\"key {a}\"\n0:\"{b} ok\"\nd:{{\"finishReason\":\"stop\"}}\n");
        let out = run(&typed);
        assert!(!out.contains(b) && out.starts_with("0:\"key"), "{out}");
        let sse = format!("data: {{\"t\":\"key {a}\"}}\n\ndata: {{\"t\":\"{b} ok\"}}\n\n");
        let out = run(&sse);
        assert!(!out.contains(b) && out.starts_with("data: "), "{out}");
        // A comment or blank lines first are SSE all the same (found by
        // an attack pass).
        let sse =
            format!("\n: ok\n\ndata: {{\"t\":\"key {a}\"}}\n\ndata: {{\"t\":\"{b} ok\"}}\n\n");
        let out = run(&sse);
        assert!(!out.contains(b), "{out}");
        // Text is text, masked as bytes, as it was.
        let text = format!("a note: {SECRET}\nsecond line 0:\"x\"\n");
        assert_eq!(
            run(&text),
            "a note: [REDACTED:injected_secret]\nsecond line 0:\"x\"\n"
        );
    }
}
