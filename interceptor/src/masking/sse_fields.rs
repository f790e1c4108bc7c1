//! Events of shapes the SSE masker does not know (no built-in text field,
//! none the profile declares): every string is reassembled
//! with the same field of the events before it (one text per JSON
//! pointer; plain `data:` text is one more), and detection runs on that
//! text, so a value an API streams a few characters per event is still
//! found whole. Each value is also masked on its own, as a whole value.
//!
//! Unlike the known shapes, whose deltas a client joins, nothing here says
//! a field is a delta: a status or a name repeated in every event is a
//! whole value. So no byte moves between events. Each event waits, in
//! order, until what its fields hold is decided (a match that starts in
//! it is complete, or nothing there can still grow into one); the masked
//! text then goes back in the same places, a match's replacement in the
//! event where the match starts. A client that joins the field reads the
//! masked text, and one that reads each event whole reads each value as
//! sent unless a secret touches it.
//!
//! Time alone never lets undecided text go: a value an API streams at a
//! few characters an event may take seconds, and the masker's own work
//! is not the upstream pausing. A field is taken as ended (its held text
//! decided with what has arrived) only when nothing continues it: after
//! `STALE_AFTER_EVENTS` events without it (a field a stream sends once),
//! or when the upstream has been quiet for `QUIET` since its last value
//! (the body's timer; see `expire`). What is held is bounded; past the
//! bounds the response ends.
use super::sse::EventError;
use super::stream::Edit;
use super::{Counts, StreamMasker};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long the upstream must be quiet after a field's last value before
/// the field is taken as ended. Longer than a slow model's pause between
/// two tokens; a stream that goes quiet mid-value waits this long.
pub const QUIET: Duration = Duration::from_secs(1);
/// Events without a field after which it is taken as ended: an API's
/// stream carries its text field in (nearly) every event, so only a field
/// it sent once goes this long without a value.
pub const STALE_AFTER_EVENTS: usize = 32;
/// Events, bytes and field texts held at most: past any, the response
/// ends (fail closed). Letting the oldest go undecided instead would let
/// an upstream release the first half of a secret by sending filler.
pub const MAX_HELD_EVENTS: usize = 16 << 10;
pub const MAX_HELD_BYTES: usize = 1 << 20;
/// Those no held event uses are dropped first.
pub const MAX_FIELDS: usize = 4 << 10;

/// The text of a plain (not JSON) `data:` field, as a field of its own.
const PLAIN: &str = "data:";

/// How events are written: as server-sent events, or one JSON value a line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Sse,
    Lines,
}

pub struct FieldStreams {
    framing: Framing,
    prototype: StreamMasker,
    /// Each value is masked whole as well: joined with the next event's,
    /// a value complete in its own (`... AKIA...EXAMPLE`, then `event 3`)
    /// would lose the boundary that ends it.
    whole: StreamMasker,
    fields: HashMap<String, FieldText>,
    queue: VecDeque<Waiting>,
    held_bytes: usize,
    /// Events seen, for `STALE_AFTER_EVENTS`.
    events: u64,
    pub counts: Counts,
}

/// One field's text across events: what was pushed, what is decided, and
/// the matches found in it not yet put back.
struct FieldText {
    masker: StreamMasker,
    pushed: usize,
    decided: usize,
    edits: VecDeque<Edit>,
    /// Held events with a slot in this text.
    slots: usize,
    /// The event that brought its last value, and when.
    last_event: u64,
    last_at: Instant,
}

enum Waiting {
    /// An event already masked: out in its turn.
    Ready(Vec<u8>),
    Held(Held),
}

struct Held {
    /// `event:`, `id:` and comment lines, masked already.
    lines: Vec<String>,
    data: Data,
    slots: Vec<Slot>,
    size: usize,
}

pub enum Data {
    Json(Value),
    Plain(String),
}

/// Where a string of a held event sits in its field's text.
struct Slot {
    /// The string's JSON pointer in the event, which names its field
    /// (`PLAIN`, which no pointer can be: the data).
    pointer: String,
    start: usize,
    end: usize,
    original: String,
}

impl FieldStreams {
    pub fn new(prototype: StreamMasker, framing: Framing) -> FieldStreams {
        FieldStreams {
            framing,
            whole: prototype.sibling(),
            prototype,
            fields: HashMap::new(),
            queue: VecDeque::new(),
            held_bytes: 0,
            events: 0,
            counts: Counts::new(),
        }
    }

    /// An event masked otherwise: out now, or after those held before it.
    pub fn ready(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>, EventError> {
        self.events += 1;
        if self.queue.is_empty() {
            return Ok(bytes);
        }
        if !bytes.is_empty() {
            self.held_bytes += bytes.len();
            self.queue.push_back(Waiting::Ready(bytes));
        }
        self.within_bounds()?;
        Ok(Vec::new())
    }

    fn within_bounds(&mut self) -> Result<(), EventError> {
        self.forget_idle_fields();
        if self.queue.len() > MAX_HELD_EVENTS
            || self.held_bytes > MAX_HELD_BYTES
            || self.fields.len() > MAX_FIELDS
        {
            return Err(EventError::TooMuchHeld);
        }
        Ok(())
    }

    /// An event whose strings are reassembled per field (its object keys
    /// and numbers are masked whole: a client reads a number as a value,
    /// never as a piece of text to join, and joined counters such as a
    /// sequence number would read as one ever-growing run of digits);
    /// returns what can go out now.
    pub fn event(
        &mut self,
        lines: Vec<String>,
        mut data: Data,
        now: Instant,
    ) -> Result<Vec<u8>, EventError> {
        if let Data::Json(v) = &mut data {
            self.mask_keys_and_numbers(v);
        }
        let mut strings = Vec::new();
        match &data {
            Data::Json(v) => strings_of(v, &mut String::new(), &mut strings),
            Data::Plain(s) => strings.push((PLAIN.to_string(), s.clone())),
        }
        self.events += 1;
        let mut slots = Vec::with_capacity(strings.len());
        // What the held event costs: its lines, and its data as parsed (a
        // deep array of empty arrays holds no strings and much memory;
        // found by an attack pass).
        let mut size = 64 + lines.iter().map(String::len).sum::<usize>() + weight(&data);
        for (pointer, original) in strings {
            let prototype = &self.prototype;
            let text = self
                .fields
                .entry(pointer.clone())
                .or_insert_with(|| FieldText {
                    masker: prototype.sibling(),
                    pushed: 0,
                    decided: 0,
                    edits: VecDeque::new(),
                    slots: 0,
                    last_event: 0,
                    last_at: now,
                });
            text.last_event = self.events;
            text.last_at = now;
            let start = text.pushed;
            text.pushed += original.len();
            let mut edits = Vec::new();
            text.decided = text.masker.push_marks(original.as_bytes(), &mut edits);
            text.edits.extend(edits);
            text.slots += 1;
            take_counts(&mut self.counts, &mut text.masker);
            size += pointer.len();
            slots.push(Slot {
                pointer,
                start,
                end: start + original.len(),
                original,
            });
        }
        self.held_bytes += size;
        self.queue.push_back(Waiting::Held(Held {
            lines,
            data,
            slots,
            size,
        }));
        let out = self.release(None);
        self.within_bounds()?;
        Ok(out)
    }

    /// When the oldest held event can go out if the upstream stays quiet
    /// (`expire` then), if one is held: QUIET after the last value of the
    /// latest of its undecided fields.
    pub fn deadline(&self) -> Option<Instant> {
        let Some(Waiting::Held(h)) = self.queue.front() else {
            return None;
        };
        self.undecided(h).map(|t| t.last_at + QUIET).max()
    }

    /// The upstream is quiet: fields whose last value came QUIET ago or
    /// more are taken as ended, and what that decides goes out.
    pub fn expire(&mut self, now: Instant) -> Vec<u8> {
        self.release(Some(now))
    }

    /// Every event at the head that is decided, in order, after taking as
    /// ended the fields nothing continues (and, when the upstream is quiet
    /// at `quiet`, those whose last value is QUIET old).
    fn release(&mut self, quiet: Option<Instant>) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            match self.queue.front() {
                None => break,
                Some(Waiting::Ready(_)) => {}
                Some(Waiting::Held(h)) if self.is_decided(h) => {}
                Some(Waiting::Held(h)) => {
                    let ended = self.ended_fields(h, quiet);
                    if ended.is_empty() {
                        break;
                    }
                    for pointer in ended {
                        self.take_as_ended(&pointer);
                    }
                    continue;
                }
            }
            let head = self.queue.pop_front().expect("looked at above");
            out.extend(self.render(head));
        }
        self.forget_idle_fields();
        out
    }

    /// The undecided fields of `h` that nothing continues.
    fn ended_fields(&self, h: &Held, quiet: Option<Instant>) -> Vec<String> {
        let ended = |t: &FieldText| {
            self.events - t.last_event >= STALE_AFTER_EVENTS as u64
                || quiet.is_some_and(|now| now >= t.last_at + QUIET)
        };
        h.slots
            .iter()
            .filter(|s| {
                self.fields
                    .get(&s.pointer)
                    .is_some_and(|t| t.decided < s.end && ended(t))
            })
            .map(|s| s.pointer.clone())
            .collect()
    }

    /// A field's held text decided with what has arrived, as if it ended
    /// (a cut-off start of a secret masked: StreamMasker::end_marks).
    fn take_as_ended(&mut self, pointer: &str) {
        if let Some(text) = self.fields.get_mut(pointer) {
            let mut edits = Vec::new();
            text.decided = text.masker.end_marks(&mut edits);
            text.edits.extend(edits);
            take_counts(&mut self.counts, &mut text.masker);
        }
    }

    /// The fields of a held event that are not yet decided as far as it.
    fn undecided<'a>(&'a self, h: &'a Held) -> impl Iterator<Item = &'a FieldText> + 'a {
        h.slots
            .iter()
            .filter_map(|s| self.fields.get(&s.pointer).filter(|t| t.decided < s.end))
    }

    /// The end of the stream: every field's text is decided; all goes out.
    pub fn finish(&mut self) -> Vec<u8> {
        for text in self.fields.values_mut() {
            let mut edits = Vec::new();
            text.decided = text.masker.force_marks(text.pushed, &mut edits);
            text.edits.extend(edits);
            take_counts(&mut self.counts, &mut text.masker);
        }
        let mut out = Vec::new();
        while let Some(head) = self.queue.pop_front() {
            out.extend(self.render(head));
        }
        self.fields.clear();
        out
    }

    fn is_decided(&self, h: &Held) -> bool {
        h.slots.iter().all(|s| {
            self.fields
                .get(&s.pointer)
                .is_some_and(|t| t.decided >= s.end)
        })
    }

    /// The event with its strings masked; held text of its fields decided
    /// first with what has arrived, when it goes out before it was.
    fn render(&mut self, w: Waiting) -> Vec<u8> {
        let h = match w {
            Waiting::Ready(bytes) => {
                self.held_bytes -= bytes.len();
                return bytes;
            }
            Waiting::Held(h) => h,
        };
        self.held_bytes -= h.size;
        let Held {
            lines,
            mut data,
            slots,
            ..
        } = h;
        for slot in &slots {
            let Some(text) = self.fields.get_mut(&slot.pointer) else {
                continue;
            };
            if text.decided < slot.end {
                let mut edits = Vec::new();
                text.decided = text.masker.force_marks(slot.end, &mut edits);
                text.edits.extend(edits);
                take_counts(&mut self.counts, &mut text.masker);
            }
            let joined = put_back(&mut text.edits, slot);
            text.slots -= 1;
            let masked =
                String::from_utf8_lossy(&self.whole.push_all(joined.as_bytes())).into_owned();
            take_counts(&mut self.counts, &mut self.whole);
            match &mut data {
                Data::Json(v) => {
                    if let Some(x) = v.pointer_mut(&slot.pointer) {
                        *x = Value::String(masked);
                    }
                }
                Data::Plain(s) => *s = masked,
            }
        }
        match self.framing {
            Framing::Sse => to_bytes(&lines, &data),
            Framing::Lines => {
                let mut out = match &data {
                    Data::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
                    Data::Plain(s) => s.clone().into_bytes(),
                };
                out.push(b'\n');
                out
            }
        }
    }

    fn mask_keys_and_numbers(&mut self, v: &mut Value) {
        match v {
            Value::Array(a) => a.iter_mut().for_each(|x| self.mask_keys_and_numbers(x)),
            Value::Object(o) => {
                o.values_mut().for_each(|x| self.mask_keys_and_numbers(x));
                let keys: Vec<String> = o.keys().cloned().collect();
                for k in keys {
                    let masked = self.whole.push_all(k.as_bytes());
                    if masked != k.as_bytes()
                        && let Some(x) = o.remove(&k)
                    {
                        o.insert(String::from_utf8_lossy(&masked).into_owned(), x);
                    }
                }
                take_counts(&mut self.counts, &mut self.whole);
            }
            // A number stays one unless a match touches it.
            Value::Number(n) => {
                let text = n.to_string();
                let masked = self.whole.push_all(text.as_bytes());
                if masked != text.as_bytes() {
                    *v = Value::String(String::from_utf8_lossy(&masked).into_owned());
                }
                take_counts(&mut self.counts, &mut self.whole);
            }
            _ => {}
        }
    }

    /// Field texts no held event uses and with nothing held back, dropped
    /// when there are too many (an API with a new key in every event).
    fn forget_idle_fields(&mut self) {
        if self.fields.len() > MAX_FIELDS / 2 {
            self.fields
                .retain(|_, t| t.slots > 0 || t.decided < t.pushed || !t.edits.is_empty());
        }
    }
}

/// A slot's string with the matches that start in it replaced, and the
/// bytes of a match that started in an earlier slot left out.
fn put_back(edits: &mut VecDeque<Edit>, slot: &Slot) -> String {
    while edits.front().is_some_and(|e| e.end <= slot.start) {
        edits.pop_front();
    }
    let original = slot.original.as_bytes();
    let mut out = Vec::with_capacity(original.len());
    let mut at = slot.start;
    for e in edits.iter() {
        if e.start >= slot.end {
            break;
        }
        if e.start >= at {
            out.extend_from_slice(&original[at - slot.start..e.start - slot.start]);
            out.extend_from_slice(&e.with);
        }
        at = at.max(e.end.min(slot.end));
    }
    out.extend_from_slice(&original[at - slot.start..]);
    while edits.front().is_some_and(|e| e.end <= slot.end) {
        edits.pop_front();
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Roughly the memory a parsed event takes: its strings, and a few words
/// per value.
fn weight(data: &Data) -> usize {
    fn of(v: &Value) -> usize {
        32 + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(of).sum(),
            Value::Object(o) => o.iter().map(|(k, x)| k.len() + of(x)).sum(),
            _ => 0,
        }
    }
    match data {
        Data::Json(v) => of(v),
        Data::Plain(s) => s.len(),
    }
}

/// Every string in `v` with its JSON pointer, in document order.
fn strings_of(v: &Value, at: &mut String, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => out.push((at.clone(), s.clone())),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                strings_of(x, at, out);
                at.truncate(len);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                strings_of(x, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

fn to_bytes(lines: &[String], data: &Data) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    match data {
        Data::Json(v) => {
            out.extend_from_slice(b"data: ");
            out.extend(serde_json::to_vec(v).unwrap_or_default());
            out.push(b'\n');
        }
        Data::Plain(s) => {
            for line in s.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
    }
    out.push(b'\n');
    out
}

fn take_counts(into: &mut Counts, masker: &mut StreamMasker) {
    for (k, v) in std::mem::take(&mut masker.counts) {
        *into.entry(k).or_default() += v;
    }
}
