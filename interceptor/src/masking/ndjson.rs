//! Newline-delimited JSON streams (`application/x-ndjson`, JSON Lines):
//! Ollama's API and others stream a model's text a few characters per
//! line, so a value is no more contiguous in the bytes than in an SSE
//! stream. Each line is an event: its strings and numbers are reassembled
//! per field with the lines before it (sse_fields.rs), and a line that is
//! not JSON is one more field of text.
use super::body::Events;
use super::line_ends::LineEnds;
use super::sse::EventError;
use super::sse_fields::{Data, FieldStreams, Framing};
use super::{Counts, StreamMasker};
use serde_json::Value;
use std::time::Instant;

/// Longest line held while it arrives.
pub const MAX_LINE: usize = 1 << 20;

pub struct NdjsonMasker {
    fields: FieldStreams,
    /// The profile's JSON field paths, applied to each line.
    paths: Vec<super::JsonPath>,
    /// Bytes of the line still arriving.
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    searched: usize,
    /// Lines end at LF, CRLF or a lone CR, as clients split them; a
    /// leading byte-order mark is dropped.
    lines: LineEnds,
    /// Each line is a type code, `:` and JSON (the Vercel AI SDK's data
    /// stream: `0:"tok"` is text, `g:` reasoning, `9:` a tool call).
    typed: bool,
}

impl NdjsonMasker {
    pub fn new(prototype: StreamMasker, paths: Vec<super::JsonPath>) -> NdjsonMasker {
        NdjsonMasker {
            paths,
            fields: FieldStreams::new(prototype, Framing::Lines),
            buf: Vec::new(),
            searched: 0,
            lines: LineEnds::default(),
            typed: false,
        }
    }

    pub fn typed(mut self, yes: bool) -> Self {
        self.typed = yes;
        self
    }

    fn line(&mut self, line: String, now: Instant) -> Result<Vec<u8>, EventError> {
        if line.trim().is_empty() {
            return self.fields.ready(format!("{line}\n").into_bytes());
        }
        if self.typed
            && let Some((code, json)) = type_code(&line)
        {
            let data = self.data(json.to_string())?;
            return self.fields.typed_event(format!("{code}:"), data, now);
        }
        let data = self.data(line)?;
        self.fields.event(Vec::new(), data, now)
    }

    /// A line's JSON, its paths masked; text that looks like JSON and
    /// does not parse ends the stream.
    fn data(&mut self, line: String) -> Result<Data, EventError> {
        let parsed = serde_json::from_str::<Value>(&line);
        if let Err(e) = &parsed
            && looks_like_json(&line)
        {
            return Err(EventError::NotJson(e.to_string()));
        }
        let data = match parsed {
            Ok(v @ Value::String(_)) => Data::Json(v),
            Ok(mut v @ (Value::Object(_) | Value::Array(_))) => {
                let selected: u64 = self.paths.iter().map(|p| p.mask(&mut v)).sum();
                if selected > 0 {
                    *self.fields.counts.entry("json_path".into()).or_default() += selected;
                }
                Data::Json(v)
            }
            // A number, a literal or text: the line as text, as sent.
            _ => Data::Plain(line),
        };
        Ok(data)
    }
}

/// A typed line's code and what follows it: one or two digits or lower
/// case letters, then `:`.
pub fn type_code(line: &str) -> Option<(&str, &str)> {
    let (code, rest) = line.split_once(':')?;
    let short = (1..=2).contains(&code.len());
    (short
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()))
    .then_some((code, rest))
}

/// Text a lenient client would parse as a JSON object, array or string
/// (Python's reads NaN, lone surrogates and 1e999).
pub fn looks_like_json(text: &str) -> bool {
    let t = text.trim_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    t.starts_with(['{', '[']) || (t.len() > 1 && t.starts_with('"') && t.ends_with('"'))
}

impl Events for NdjsonMasker {
    fn push_at(&mut self, chunk: &[u8], now: Instant) -> Result<Vec<u8>, EventError> {
        self.lines.push(chunk, &mut self.buf);
        let mut out = Vec::new();
        let (mut from, mut search) = (0, self.searched);
        while let Some(i) = memchr::memchr(b'\n', &self.buf[search..]) {
            let end = search + i;
            let line = String::from_utf8_lossy(&self.buf[from..end]).into_owned();
            out.extend(self.line(line, now)?);
            from = end + 1;
            search = from;
        }
        self.buf.drain(..from);
        self.searched = self.buf.len();
        if self.buf.len() > MAX_LINE {
            return Err(EventError::LineTooLarge);
        }
        Ok(out)
    }

    /// The end of the body: a last line without its newline goes out
    /// without one too.
    fn finish(&mut self) -> Vec<u8> {
        self.lines.finish(&mut self.buf);
        let rest = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        if !rest.is_empty() {
            // Past the bounds, the end of the body decides it all anyway.
            let last = String::from_utf8_lossy(&rest).into_owned();
            out.extend(self.line(last, Instant::now()).unwrap_or_default());
        }
        out.extend(self.fields.finish());
        if !rest.is_empty() && out.last() == Some(&b'\n') {
            out.pop();
        }
        out
    }

    fn deadline(&self) -> Option<Instant> {
        self.fields.deadline()
    }

    fn expire(&mut self, now: Instant) -> Vec<u8> {
        self.fields.expire(now)
    }

    fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.fields.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SECRET: &str = "sk-NDJ-9f8e7d6c5b";

    fn masker() -> NdjsonMasker {
        let p = crate::masking::test_profile(&["card"]);
        NdjsonMasker::new(StreamMasker::new(Arc::new(p), &[SECRET]), vec![])
    }

    /// Ollama's /api/generate stream, the text a few characters a line,
    /// cut into chunks anywhere: the joined `response` is masked, and
    /// every line still parses with its other fields as sent.
    #[test]
    fn a_value_split_across_lines_is_masked() {
        let text = format!("key {SECRET} card 4111 1111 1111 1111 end");
        let chars: Vec<char> = text.chars().collect();
        let mut body = String::new();
        for (i, piece) in chars.chunks(2).enumerate() {
            let piece: String = piece.iter().collect();
            let line = serde_json::json!({"model":"llama3","response":piece,"done":false,"n":i});
            body.push_str(&format!("{line}\n"));
        }
        body.push_str("{\"model\":\"llama3\",\"response\":\"\",\"done\":true}");
        for step in [1, 7, 64, body.len()] {
            let mut m = masker();
            let now = Instant::now();
            let mut out = Vec::new();
            for chunk in body.as_bytes().chunks(step) {
                out.extend(m.push_at(chunk, now).unwrap());
            }
            out.extend(m.finish());
            let out = String::from_utf8(out).unwrap();
            assert!(!out.ends_with('\n'), "a newline was added");
            let mut joined = String::new();
            for (i, line) in out.lines().enumerate() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["model"], "llama3");
                if v["done"] == false {
                    assert_eq!(v["n"], i);
                }
                joined.push_str(v["response"].as_str().unwrap());
            }
            assert_eq!(
                joined, "key [REDACTED:injected_secret] card [REDACTED:card] end",
                "chunks of {step}"
            );
        }
    }

    /// Lines split at a lone CR, as clients split them, and a leading
    /// byte-order mark (found by an attack pass: `\r` between two halves).
    #[test]
    fn every_line_ending_and_a_bom_frame_lines() {
        let (a, b) = SECRET.split_at(8);
        for body in [
            format!("{{\"r\":\"{a}\"}}\r{{\"r\":\"{b}\"}}\n"),
            format!("\u{feff}{{\"r\":\"{a}\"}}\r\n{{\"r\":\"{b}\"}}\r\n"),
        ] {
            let mut m = masker();
            let now = Instant::now();
            let mut out = Vec::new();
            for chunk in body.as_bytes().chunks(1) {
                out.extend(m.push_at(chunk, now).unwrap());
            }
            out.extend(m.finish());
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains(a) && !out.contains(b), "{out}");
        }
    }

    /// A line a lenient client reads as JSON (NaN, a lone surrogate, a
    /// number out of range) but serde_json does not: its fields cannot be
    /// reassembled, so the stream ends, as an SSE stream does (found by an
    /// attack pass: such lines were joined as plain text, key unmasked).
    #[test]
    fn json_that_does_not_parse_ends_the_stream() {
        let (a, b) = SECRET.split_at(8);
        for bad in ["NaN", "Infinity", "1e999", "\"\\ud800\""] {
            let body = format!("{{\"r\":\"{a}\",\"x\":{bad}}}\n{{\"r\":\"{b}\",\"x\":{bad}}}\n");
            let mut m = masker();
            let got = m.push_at(body.as_bytes(), Instant::now());
            assert!(
                matches!(got, Err(EventError::NotJson(_))),
                "{bad}: {:?}",
                got.map(String::from_utf8)
            );
        }
        // Text that is not JSON at all is still text.
        let mut m = masker();
        let out = m.push_at(format!("hello {SECRET}\n").as_bytes(), Instant::now());
        let mut out = out.unwrap();
        out.extend(m.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "hello [REDACTED:injected_secret]\n"
        );
    }

    /// The Vercel AI SDK's data stream (`text/plain`, a type code before
    /// each line's JSON): the text parts are joined per type and masked
    /// (found by an attack pass: masked as bytes, the key went out whole).
    #[test]
    fn typed_lines_are_joined_per_type() {
        let text = format!("key {SECRET} card 4111 1111 1111 1111 end");
        let mut body = String::from("f:{\"messageId\":\"m1\"}\n");
        for piece in text.as_bytes().chunks(3) {
            let piece = std::str::from_utf8(piece).unwrap();
            body.push_str(&format!(
                "0:{}\ng:{}\n",
                serde_json::json!(piece),
                serde_json::json!("ab")
            ));
        }
        body.push_str("e:{\"finishReason\":\"stop\"}\nd:{\"finishReason\":\"stop\"}\n");
        let mut m = masker().typed(true);
        let mut out = m.push_at(body.as_bytes(), Instant::now()).unwrap();
        out.extend(m.finish());
        let out = String::from_utf8(out).unwrap();
        let mut joined = String::new();
        for line in out.lines() {
            let (code, json) = line.split_once(':').expect("typed line");
            let v: Value = serde_json::from_str(json).expect("JSON after the code");
            if code == "0" {
                joined.push_str(v.as_str().unwrap());
            }
        }
        assert_eq!(
            joined,
            "key [REDACTED:injected_secret] card [REDACTED:card] end"
        );
        assert!(out.starts_with("f:{\"messageId\":\"m1\"}\n"), "{out}");
    }

    #[test]
    fn a_line_too_long_ends_the_stream() {
        let mut m = masker();
        let now = Instant::now();
        assert!(m.push_at(&vec![b'x'; MAX_LINE], now).is_ok());
        assert!(matches!(
            m.push_at(b"x", now),
            Err(EventError::LineTooLarge)
        ));
    }
}
