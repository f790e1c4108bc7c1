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

/// How events are written: as server-sent events, one JSON value a line,
/// or a line of a type code, `:` and a JSON value (the Vercel AI SDK's
/// data stream: `0:"tok"`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    Sse,
    Lines,
    TypedLines,
    /// Elements of a JSON array, each written as `,` and the element
    /// (json_array.rs drops the first comma).
    Array,
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

/// Where a string of a held event sits in the field texts it belongs to.
struct Slot {
    /// Where it is in the event (a JSON pointer; `PLAIN` for plain data).
    pointer: String,
    places: Vec<Place>,
    original: Vec<u8>,
    /// An array of byte values (a token's UTF-8 bytes), not a string.
    bytes: bool,
}

/// A slot's span in one field's text.
struct Place {
    field: String,
    start: usize,
    end: usize,
}

/// A string of an event, or an array of byte values (which a client
/// decodes as UTF-8 and joins: llama.cpp's and Ollama's token `bytes`,
/// found unread by an attack pass), with the fields it belongs to.
struct Piece {
    pointer: String,
    fields: Vec<String>,
    original: Vec<u8>,
    bytes: bool,
}

/// Keys whose values an API's server sets, never the model: ids, names,
/// types, reasons, opaque signatures. In a known API's events they are
/// masked whole rather than joined across events, so that one sent once
/// (an `encrypted_content`, a thought signature) does not hold the
/// stream until it is taken as ended. Every other string is joined.
pub(super) const METADATA: [&str; 19] = [
    "id",
    "object",
    "model",
    "created",
    "role",
    "type",
    "name",
    "finish_reason",
    "finishReason",
    "stop_reason",
    "system_fingerprint",
    "service_tier",
    "modelVersion",
    "responseId",
    "item_id",
    "obfuscation",
    "signature",
    "thoughtSignature",
    "encrypted_content",
];

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
        data: Data,
        now: Instant,
    ) -> Result<Vec<u8>, EventError> {
        self.event_of_known(lines, data, now, &[], false)
    }

    /// An event of a typed lines stream: `prefix` (`0:`) is written before
    /// it, and its fields are its type's own.
    pub fn typed_event(
        &mut self,
        prefix: String,
        data: Data,
        now: Instant,
    ) -> Result<Vec<u8>, EventError> {
        let scope = prefix.clone();
        self.event_in(vec![prefix], data, now, &[], false, &scope)
    }

    /// The same for an event of a known API: the strings at `skip` (its
    /// text deltas, rewritten by the caller) are left as they are, and with
    /// `metadata` the values of `METADATA` keys are masked whole.
    pub fn event_of_known(
        &mut self,
        lines: Vec<String>,
        data: Data,
        now: Instant,
        skip: &[String],
        metadata: bool,
    ) -> Result<Vec<u8>, EventError> {
        self.event_in(lines, data, now, skip, metadata, "")
    }

    /// An event whose fields are named within `scope`.
    fn event_in(
        &mut self,
        lines: Vec<String>,
        mut data: Data,
        now: Instant,
        skip: &[String],
        metadata: bool,
        scope: &str,
    ) -> Result<Vec<u8>, EventError> {
        let mut pieces = Vec::new();
        match &mut data {
            Data::Json(v) => {
                let dropped = drop_token_ids(v, false);
                if dropped > 0 {
                    *self.counts.entry("token_ids_dropped".into()).or_default() += dropped;
                }
                self.mask_keys_and_numbers(v, metadata);
                let mut at = Path {
                    pointer: String::new(),
                    by_position: scope.to_string(),
                    in_order: scope.to_string(),
                };
                pieces_of(v, &mut at, skip, metadata, &mut pieces);
            }
            Data::Plain(s) => pieces.push(Piece {
                pointer: PLAIN.to_string(),
                fields: vec![format!("{scope}{PLAIN}")],
                original: s.clone().into_bytes(),
                bytes: false,
            }),
        }
        self.events += 1;
        let mut slots = Vec::with_capacity(pieces.len());
        // What the held event costs: its lines, and its data as parsed (a
        // deep array of empty arrays holds no strings and much memory;
        // found by an attack pass).
        let mut size = 64 + lines.iter().map(String::len).sum::<usize>() + weight(&data);
        for piece in pieces {
            let mut places = Vec::with_capacity(piece.fields.len());
            for field in piece.fields {
                let prototype = &self.prototype;
                let text = self
                    .fields
                    .entry(field.clone())
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
                text.pushed += piece.original.len();
                let mut edits = Vec::new();
                text.decided = text.masker.push_marks(&piece.original, &mut edits);
                text.edits.extend(edits);
                text.slots += 1;
                take_counts(&mut self.counts, &mut text.masker);
                size += field.len();
                places.push(Place {
                    field,
                    start,
                    end: start + piece.original.len(),
                });
            }
            size += piece.pointer.len();
            slots.push(Slot {
                pointer: piece.pointer,
                places,
                original: piece.original,
                bytes: piece.bytes,
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

    /// A known API said its streams end (a finish reason, a stop): every
    /// field's text is decided as if it ended, and what that decides goes
    /// out.
    pub fn end_fields(&mut self) -> Vec<u8> {
        let undecided: Vec<String> = self
            .fields
            .iter()
            .filter(|(_, t)| t.decided < t.pushed)
            .map(|(k, _)| k.clone())
            .collect();
        for field in undecided {
            self.take_as_ended(&field);
        }
        self.release(None)
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
        let mut out: Vec<String> = places(h)
            .filter(|p| {
                self.fields
                    .get(&p.field)
                    .is_some_and(|t| t.decided < p.end && ended(t))
            })
            .map(|p| p.field.clone())
            .collect();
        out.dedup();
        out
    }

    /// A field's held text decided with what has arrived, as if it ended
    /// (a cut-off start of a secret masked: StreamMasker::end_marks).
    fn take_as_ended(&mut self, field: &str) {
        if let Some(text) = self.fields.get_mut(field) {
            let mut edits = Vec::new();
            text.decided = text.masker.end_marks(&mut edits);
            text.edits.extend(edits);
            take_counts(&mut self.counts, &mut text.masker);
        }
    }

    /// The fields of a held event that are not yet decided as far as it.
    fn undecided<'a>(&'a self, h: &'a Held) -> impl Iterator<Item = &'a FieldText> + 'a {
        places(h).filter_map(|p| self.fields.get(&p.field).filter(|t| t.decided < p.end))
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
        places(h).all(|p| {
            self.fields
                .get(&p.field)
                .is_some_and(|t| t.decided >= p.end)
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
            let mut cuts = Vec::new();
            for place in &slot.places {
                let Some(text) = self.fields.get_mut(&place.field) else {
                    continue;
                };
                if text.decided < place.end {
                    let mut edits = Vec::new();
                    text.decided = text.masker.force_marks(place.end, &mut edits);
                    text.edits.extend(edits);
                    take_counts(&mut self.counts, &mut text.masker);
                }
                cuts_of(&mut text.edits, place, &mut cuts);
                text.slots -= 1;
            }
            let joined = put_back(&slot.original, cuts);
            let masked = self.whole.push_all(&joined);
            take_counts(&mut self.counts, &mut self.whole);
            let value = if slot.bytes {
                Value::Array(masked.into_iter().map(Value::from).collect())
            } else {
                Value::String(String::from_utf8_lossy(&masked).into_owned())
            };
            match &mut data {
                Data::Json(v) => {
                    if let Some(x) = v.pointer_mut(&slot.pointer) {
                        *x = value;
                    }
                }
                Data::Plain(s) => {
                    if let Value::String(m) = value {
                        *s = m
                    }
                }
            }
        }
        match self.framing {
            Framing::Sse => to_bytes(&lines, &data),
            Framing::Array => {
                let mut out = b",\n".to_vec();
                match &data {
                    Data::Json(v) => out.extend(serde_json::to_vec(v).unwrap_or_default()),
                    Data::Plain(s) => out.extend_from_slice(s.as_bytes()),
                }
                out
            }
            Framing::Lines | Framing::TypedLines => {
                // A typed line's prefix is its one "line".
                let mut out = lines.concat().into_bytes();
                match &data {
                    Data::Json(v) => out.extend(serde_json::to_vec(v).unwrap_or_default()),
                    Data::Plain(s) => out.extend_from_slice(s.as_bytes()),
                }
                out.push(b'\n');
                out
            }
        }
    }

    /// With `metadata`, the string values of `METADATA` keys are masked
    /// whole here too.
    fn mask_keys_and_numbers(&mut self, v: &mut Value, metadata: bool) {
        match v {
            Value::Array(a) => a
                .iter_mut()
                .for_each(|x| self.mask_keys_and_numbers(x, metadata)),
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    match x {
                        Value::String(s) if metadata && METADATA.contains(&k.as_str()) => {
                            let masked = self.whole.push_all(s.as_bytes());
                            if masked != s.as_bytes() {
                                *s = String::from_utf8_lossy(&masked).into_owned();
                            }
                        }
                        x => self.mask_keys_and_numbers(x, metadata),
                    }
                }
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

/// The matches of one field that touch `place`, as spans of the slot's
/// string: a match's replacement where it starts, and the bytes of one
/// that started in an earlier slot left out (no replacement).
fn cuts_of(edits: &mut VecDeque<Edit>, place: &Place, cuts: &mut Vec<(usize, usize, Vec<u8>)>) {
    while edits.front().is_some_and(|e| e.end <= place.start) {
        edits.pop_front();
    }
    for e in edits.iter() {
        if e.start >= place.end {
            break;
        }
        let with = if e.start >= place.start {
            e.with.clone()
        } else {
            Vec::new()
        };
        cuts.push((
            e.start.max(place.start) - place.start,
            e.end.min(place.end) - place.start,
            with,
        ));
    }
    while edits.front().is_some_and(|e| e.end <= place.end) {
        edits.pop_front();
    }
}

/// A slot's string with the cuts of all its fields made: where two
/// overlap (the same bytes matched in two of its fields), every byte
/// either covers goes, and the first one's replacement stands.
fn put_back(original: &[u8], mut cuts: Vec<(usize, usize, Vec<u8>)>) -> Vec<u8> {
    cuts.sort_by_key(|c| c.0);
    let mut out = Vec::with_capacity(original.len());
    let mut at = 0;
    for (start, end, with) in cuts {
        if start >= at {
            out.extend_from_slice(&original[at..start]);
            out.extend_from_slice(&with);
        }
        at = at.max(end);
    }
    out.extend_from_slice(&original[at.min(original.len())..]);
    out
}

/// Every slot's places in a held event.
fn places(h: &Held) -> impl Iterator<Item = &Place> {
    h.slots.iter().flat_map(|s| s.places.iter())
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

/// Where the walk is: the JSON pointer, and the two names of the field a
/// string there belongs to. A client joins an array's strings either by
/// position (parallel texts, one per element) or one after another (a
/// list of tokens in each event); and an object's `index` either names
/// its stream (choices, candidates, blocks: an attack pass interleaved
/// two choices) or counts tokens (TGI: an attack pass found every event a
/// field of its own). Each string belongs to both fields, by position
/// with no index, in order with the index, and a match in either is
/// masked.
#[derive(Default)]
struct Path {
    pointer: String,
    by_position: String,
    in_order: String,
}

impl Path {
    fn push(&mut self, pointer: &str, by_position: &str, in_order: &str) -> [usize; 3] {
        let lens = [
            self.pointer.len(),
            self.by_position.len(),
            self.in_order.len(),
        ];
        self.pointer.push('/');
        self.pointer.push_str(pointer);
        self.by_position.push('/');
        self.by_position.push_str(by_position);
        self.in_order.push('/');
        self.in_order.push_str(in_order);
        lens
    }

    fn pop(&mut self, lens: [usize; 3]) {
        self.pointer.truncate(lens[0]);
        self.by_position.truncate(lens[1]);
        self.in_order.truncate(lens[2]);
    }

    fn piece(&self, original: Vec<u8>, bytes: bool) -> Piece {
        let mut fields = vec![self.by_position.clone()];
        if self.in_order != self.by_position {
            fields.push(self.in_order.clone());
        }
        Piece {
            pointer: self.pointer.clone(),
            fields,
            original,
            bytes,
        }
    }
}

/// Every string of `v` (and array of byte values) but those at `skip`, in
/// document order; with `metadata`, not the values of `METADATA` keys.
fn pieces_of(v: &Value, at: &mut Path, skip: &[String], metadata: bool, out: &mut Vec<Piece>) {
    match v {
        Value::String(s) if !skip.contains(&at.pointer) => {
            out.push(at.piece(s.as_bytes().to_vec(), false));
        }
        Value::Array(a) => {
            if let Some(bytes) = byte_values(a) {
                out.push(at.piece(bytes, true));
                return;
            }
            for (i, x) in a.iter().enumerate() {
                let i = i.to_string();
                let lens = at.push(&i, &i, "*");
                pieces_of(x, at, skip, metadata, out);
                at.pop(lens);
            }
        }
        Value::Object(o) => {
            let lens = [at.pointer.len(), at.by_position.len(), at.in_order.len()];
            if let Some(index) = index_of(v) {
                at.in_order.push_str(&index);
            }
            for (k, x) in o {
                if metadata && x.is_string() && METADATA.contains(&k.as_str()) {
                    continue;
                }
                let key = k.replace('~', "~0").replace('/', "~1");
                let inner = at.push(&key, &key, &key);
                pieces_of(x, at, skip, metadata, out);
                at.pop(inner);
            }
            at.pop(lens);
        }
        _ => {}
    }
}

/// Token ids spell the text in the model's public vocabulary, which a
/// client with the tokenizer reads back, masked text included (found by an
/// attack pass: TGI `token.id`, vLLM `token_ids`, llama.cpp `tokens`,
/// Ollama's `context`). They are set to `null`; returns how many were.
/// `token`: `v` is a token object (under `token`, `tokens`, `top_tokens`,
/// `prefill`), whose `id` is one.
fn drop_token_ids(v: &mut Value, token: bool) -> u64 {
    let token = token || is_token_object(v);
    fn integers(x: &Value) -> bool {
        match x {
            Value::Number(n) => n.is_u64() || n.is_i64(),
            Value::Array(a) => !a.is_empty() && a.iter().all(integers),
            _ => false,
        }
    }
    match v {
        Value::Object(o) => {
            let mut n = 0;
            for (k, x) in o.iter_mut() {
                let ids = matches!(
                    k.as_str(),
                    "token_ids"
                        | "prompt_token_ids"
                        | "output_token_ids"
                        | "output_ids"
                        | "input_ids"
                        | "token_id"
                        | "tokens"
                        | "context"
                ) || (token && k == "id");
                if ids && integers(x) {
                    *x = Value::Null;
                    n += 1;
                } else {
                    let inner = matches!(k.as_str(), "token" | "tokens" | "top_tokens" | "prefill");
                    n += drop_token_ids(x, inner);
                }
            }
            n
        }
        Value::Array(a) => a.iter_mut().map(|x| drop_token_ids(x, token)).sum(),
        _ => 0,
    }
}

/// An object that describes a token: its text and its probability
/// (llama.cpp's `completion_probabilities[]` and `top_logprobs[]`), whose
/// `id` is the token's id.
fn is_token_object(v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    let text = ["token", "text", "piece"]
        .iter()
        .any(|k| o.get(*k).is_some_and(Value::is_string));
    let prob = ["logprob", "prob", "bytes"]
        .iter()
        .any(|k| o.contains_key(*k));
    text && prob
}

/// The index an object names for itself (`index`, and the Responses API's
/// output and content indexes), as a key: `#0`.
fn index_of(v: &Value) -> Option<String> {
    let o = v.as_object()?;
    let mut key = String::new();
    // Indexes, and ids of any name (`id`, `item_id`, `toolCallId`: the
    // AI SDK interleaves tool calls by it).
    for (name, x) in o {
        let named = name.ends_with("index") || name.ends_with("id") || name.ends_with("Id");
        if named && (x.is_number() || x.is_string()) {
            key.push('#');
            key.push_str(name);
            key.push('=');
            key.push_str(&super::sse::key_of(Some(x)));
        }
    }
    (!key.is_empty()).then_some(key)
}

/// An array of integers 0..=255 is read as bytes a client may decode as
/// text (token `bytes` in logprobs).
fn byte_values(a: &[Value]) -> Option<Vec<u8>> {
    if a.is_empty() {
        return None;
    }
    a.iter()
        .map(|x| x.as_u64().filter(|n| *n <= 255).map(|n| n as u8))
        .collect()
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
