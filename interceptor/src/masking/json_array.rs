//! A JSON body that is an array of a streaming API's chunks: Gemini's
//! `streamGenerateContent` without `alt=sse` answers `application/json`,
//! one chunk an element, sent as the model writes. A value the model
//! writes a few characters per chunk is never contiguous in the bytes, so
//! masking the body as bytes let the key out whole (found by an attack
//! pass). Here the array is split into its elements as they arrive; an
//! element of a known streaming shape is an event for the SSE masker
//! (sse.rs, written back as an element), any other element is masked
//! whole, as the body was before, and any other document is masked as
//! bytes.
//!
//! The splitter is hand-written: it only needs to find where top-level
//! elements end (depth, strings, escapes), and serde_json parses each one.
use super::body::Events;
use super::sse::{EventError, MAX_EVENT, SseMasker};
use super::{Counts, StreamMasker};
use std::time::Instant;

pub struct JsonArrayMasker {
    state: State,
    /// Elements, once the body is an array.
    elements: SseMasker,
    /// The body, when it is not an array.
    bytes: StreamMasker,
    /// The element still arriving (or, before the first byte that is not
    /// white space, that white space).
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The first element's comma is still to be dropped.
    first: bool,
}

#[derive(PartialEq, Eq)]
enum State {
    /// Nothing but white space yet.
    Start,
    Array,
    /// After the array's `]`: only white space may follow.
    After,
    /// Not an array: masked as bytes.
    Bytes,
}

impl JsonArrayMasker {
    pub fn new(elements: SseMasker, bytes: StreamMasker) -> Self {
        JsonArrayMasker {
            state: State::Start,
            elements: elements.for_array_elements(),
            bytes,
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            first: true,
        }
    }

    /// Elements written as `,` and the element: the first one's comma
    /// goes, since `[` came before it.
    fn out(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        if self.first && !bytes.is_empty() {
            self.first = false;
            if bytes.first() == Some(&b',') {
                bytes.remove(0);
            }
        }
        bytes
    }

    /// An element, complete: an event if it has a known stream's shape
    /// (a quick look at its bytes first: most arrays are lists of records
    /// that no stream is in), else masked whole.
    fn element(&mut self, raw: Vec<u8>, now: Instant) -> Result<Vec<u8>, EventError> {
        let raw = raw.trim_ascii();
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let streaming = [&b"\"candidates\""[..], b"\"choices\""]
            .iter()
            .any(|k| memchr::memmem::find(raw, k).is_some());
        let chunk = if streaming {
            let v: serde_json::Value =
                serde_json::from_slice(raw).map_err(|e| EventError::NotJson(e.to_string()))?;
            super::sse::known_shape(&v).then_some(v)
        } else {
            None
        };
        let out = match chunk {
            Some(v) => self.elements.element(v, now)?,
            None => self.elements.whole_element(raw)?,
        };
        Ok(self.out(out))
    }
}

impl Events for JsonArrayMasker {
    fn push_at(&mut self, chunk: &[u8], now: Instant) -> Result<Vec<u8>, EventError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if self.state == State::Start {
            let start = rest
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            self.buf.extend_from_slice(&rest[..start]);
            rest = &rest[start..];
            match rest.first() {
                None => return Ok(out),
                Some(b'[') => {
                    out.append(&mut self.buf);
                    out.push(b'[');
                    rest = &rest[1..];
                    self.state = State::Array;
                }
                Some(_) => {
                    self.state = State::Bytes;
                    let lead = std::mem::take(&mut self.buf);
                    out.extend(self.bytes.push(&lead));
                }
            }
        }
        if self.state == State::Bytes {
            out.extend(self.bytes.push(rest));
            return Ok(out);
        }
        for &b in rest {
            match self.state {
                State::After if b.is_ascii_whitespace() => out.push(b),
                State::After => {
                    return Err(EventError::NotJson("data after the array".into()));
                }
                _ => {}
            }
            if self.state != State::Array {
                continue;
            }
            if self.in_string {
                self.buf.push(b);
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b',' | b']' if self.depth == 0 => {
                    let element = std::mem::take(&mut self.buf);
                    out.extend(self.element(element, now)?);
                    if b == b']' {
                        self.state = State::After;
                    }
                    continue;
                }
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
            self.buf.push(b);
        }
        if self.buf.len() > MAX_EVENT {
            return Err(EventError::TooLarge);
        }
        Ok(out)
    }

    fn finish(&mut self) -> Vec<u8> {
        match self.state {
            State::Start => std::mem::take(&mut self.buf),
            State::Bytes => self.bytes.finish(),
            // A body cut off inside the array: what is whole goes out,
            // the rest is dropped (a client cannot parse it anyway).
            State::Array => {
                let end = self.elements.end();
                self.out(end)
            }
            State::After => {
                let mut out = self.elements.end();
                out = self.out(out);
                out.extend_from_slice(b"\n]");
                out
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.elements.deadline()
    }

    fn expire(&mut self, now: Instant) -> Vec<u8> {
        let out = self.elements.expire(now);
        self.out(out)
    }

    fn take_counts(&mut self) -> Counts {
        let mut counts = self.elements.take_counts();
        for (k, v) in std::mem::take(&mut self.bytes.counts) {
            *counts.entry(k).or_default() += v;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::Arc;

    const SECRET: &str = "sk-ARR-0a9b8c7d6e";

    fn masker() -> JsonArrayMasker {
        let p = Arc::new(crate::masking::test_profile(&["card"]));
        JsonArrayMasker::new(
            SseMasker::new(p.clone(), &[SECRET]),
            StreamMasker::new(p, &[SECRET]),
        )
    }

    fn run(body: &[u8], step: usize) -> String {
        let mut m = masker();
        let now = Instant::now();
        let mut out = Vec::new();
        for chunk in body.chunks(step) {
            out.extend(m.push_at(chunk, now).unwrap());
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    /// Gemini's array of chunks: the text joined across elements is
    /// masked, and the body is still one JSON array of the chunks.
    #[test]
    fn chunks_of_a_streamed_array_are_joined() {
        let text = format!("key {SECRET} card 4111 1111 1111 1111 end");
        let mut body = String::from("[");
        for (i, piece) in text.as_bytes().chunks(3).enumerate() {
            let piece = std::str::from_utf8(piece).unwrap();
            let chunk = serde_json::json!({"candidates":[{"content":{"parts":[{"text":piece}],"role":"model"},"index":0}],"modelVersion":"g"});
            body.push_str(&format!("{}\r\n{chunk}", if i > 0 { "," } else { "" }));
        }
        body.push(']');
        for step in [1, 5, 64, body.len()] {
            let out = run(body.as_bytes(), step);
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            let joined: String = v
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c.pointer("/candidates/0/content/parts/0/text"))
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                joined, "key [REDACTED:injected_secret] card [REDACTED:card] end",
                "step {step}"
            );
        }
    }

    /// Arrays of records and other documents are masked as before: each
    /// element whole, an object as bytes.
    #[test]
    fn other_documents_are_masked_as_before() {
        let list = format!(
            "  [{{\"name\": \"a\", \"card\": \"4111 1111 1111 1111\"}}, {{\"k\": \"{SECRET}\"}}, 7, \"x,]\"]\n"
        );
        let out = run(list.as_bytes(), 3);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"name":"a","card":"[REDACTED:card]"},{"k":"[REDACTED:injected_secret]"},7,"x,]"])
        );
        let doc = format!("{{\"k\": \"{SECRET}\", \"list\": [1, 2]}}");
        assert_eq!(
            run(doc.as_bytes(), 4),
            "{\"k\": \"[REDACTED:injected_secret]\", \"list\": [1, 2]}"
        );
        assert_eq!(run(b"[]", 1), "[\n]");
        let mut m = masker();
        assert!(m.push_at(b"[1] 2", Instant::now()).is_err());
    }
}
