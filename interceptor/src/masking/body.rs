//! A response body masked as it streams: decoded (gzip, deflate, br) to be
//! inspected, masked, and sent on as identity. JSON bodies with field paths
//! are buffered up to the profile's limit (over it: an error, fail closed).
use super::{Counts, StreamMasker};
use crate::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Content-Encoding values the masker can look into.
pub fn decoder_for(encoding: Option<&str>) -> Result<Decoder, String> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
    let kind = match enc.as_deref() {
        None | Some("") | Some("identity") => Kind::Identity,
        Some("gzip") | Some("x-gzip") => {
            Kind::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
        }
        Some("deflate") => Kind::DeflateUndecided,
        Some("br") => Kind::Brotli(Box::new(BrotliStream::new())),
        Some(other) => return Err(format!("content-encoding {other:?} cannot be inspected")),
    };
    Ok(Decoder {
        kind,
        input: Vec::new(),
    })
}

/// How to read a body with these headers under `profile`: its decoder and,
/// for JSON when the profile has field paths, the JSON mode. On success the
/// headers the masked body no longer honours (length, encoding) are gone;
/// on error (an encoding it cannot read) they are untouched.
pub fn prepare(
    headers: &mut http::HeaderMap,
    profile: &super::Profile,
) -> Result<(Decoder, Option<JsonMode>), String> {
    // One coding, named once: a second header or a list ("identity, gzip")
    // leaves what the bytes are open, and a transfer coding other than
    // chunked (`gzip, chunked`) reaches us still encoded.
    let mut encodings = headers.get_all(http::header::CONTENT_ENCODING).iter();
    let encoding = match (encodings.next(), encodings.next()) {
        (None, _) => None,
        (Some(v), None) => match v.to_str() {
            Ok(v) if !v.contains(',') => Some(v),
            _ => return Err(format!("content-encoding {v:?} cannot be inspected")),
        },
        (Some(_), Some(_)) => {
            return Err("more than one content-encoding header".into());
        }
    };
    let transfer = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|t| !t.eq_ignore_ascii_case("chunked"));
    if let Some(t) = transfer {
        return Err(format!("transfer-encoding {t:?} cannot be inspected"));
    }
    let decoder = decoder_for(encoding)?;
    // What the body is must be said once and plainly: a client may read a
    // second header, a list or a malformed type differently than we would.
    if headers.get_all(http::header::CONTENT_TYPE).iter().count() > 1 {
        return Err("more than one content-type header".into());
    }
    let media = media_type(headers);
    if let Some(t) = media.as_deref()
        && !valid_media_type(t)
    {
        return Err(format!("content-type {t:?} is not a media type"));
    }
    if let Some(why) = media.as_deref().and_then(opaque_media) {
        return Err(why);
    }
    if let Some(t) = media.as_deref()
        && !profile.allows_type(t)
    {
        return Err(format!(
            "{t} is not among the profile's content_types: it is refused, not masked"
        ));
    }
    charset_is_readable(headers)?;
    let is_json = media.as_deref().is_some_and(|t| t.contains("json"));
    // JSONP carries the JSON document the paths are for, wrapped so that
    // it does not parse: refused rather than sent with the fields unmasked.
    // (Text and HTML get the detectors; see README on json_paths.)
    let script = media.as_deref().is_some_and(|t| {
        matches!(
            t,
            "application/javascript"
                | "text/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "text/ecmascript"
        )
    });
    if !profile.json_paths.is_empty()
        && script
        && profile.on_uninspectable == super::Uninspectable::Block
    {
        return Err(format!(
            "the profile masks JSON field paths and the response is {}, not JSON",
            media.as_deref().unwrap_or("untyped")
        ));
    }
    let json = (is_json && !profile.json_paths.is_empty())
        .then(|| JsonMode::new(profile.json_paths.clone(), profile.max_inspect));
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::CONTENT_ENCODING);
    headers.remove(http::header::TRANSFER_ENCODING);
    Ok((decoder, json))
}

/// The body's charset, if it names one, must keep ASCII as ASCII bytes:
/// the detectors and the injected secret's forms are ASCII. Checked
/// against a list of such charsets, not a list of bad ones: UTF-16 alone
/// has a dozen labels a client decodes (`ucs-2`, `unicode`, `x-utf-16le`),
/// and UTF-7 spells ASCII in base64. The parameter is read as leniently as
/// a client would (spaces, quotes, case); more than one is refused.
fn charset_is_readable(headers: &http::HeaderMap) -> Result<(), String> {
    let Some(t) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let t = String::from_utf8_lossy(t.as_bytes()).to_ascii_lowercase();
    let mut charsets = t.split(';').skip(1).filter_map(|p| {
        let (name, value) = p.split_once('=')?;
        let name = name.trim();
        (name == "charset" || name.starts_with("charset*")).then(|| {
            (
                name.to_string(),
                value.trim().trim_matches(['"', '\'', ' ']).to_string(),
            )
        })
    });
    let Some((name, c)) = charsets.next() else {
        return Ok(());
    };
    // RFC 2231 (`charset*=''utf-16le`, `charset*0=...`): a client that
    // reads it decodes as it says; no API needs it, so it is refused.
    if name != "charset" {
        return Err(format!(
            "an RFC 2231 charset parameter ({name}) is not read"
        ));
    }
    if charsets.next().is_some() {
        return Err("more than one charset in content-type".into());
    }
    let ascii_compatible = matches!(
        c.as_str(),
        "utf-8"
            | "utf8"
            | "us-ascii"
            | "ascii"
            | "iso-646-us"
            | "latin1"
            | "latin-1"
            | "l1"
            | "koi8-r"
            | "koi8-u"
            | "shift_jis"
            | "sjis"
            | "euc-jp"
            | "euc-kr"
            | "gbk"
            | "gb2312"
            | "gb18030"
            | "big5"
    ) || ["iso-8859-", "iso8859-", "windows-125", "cp125"]
        .iter()
        .any(|p| {
            c.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    if ascii_compatible {
        Ok(())
    } else {
        Err(format!(
            "text in charset {c:?} cannot be inspected (the detectors read ASCII-compatible text)"
        ))
    }
}

/// The media type of a response, lower case, without parameters.
pub fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let t = v.split(';').next()?.trim().to_ascii_lowercase();
    (!t.is_empty()).then_some(t)
}

/// Media types whose bodies are streams of events, each masked as the
/// texts it carries: server-sent events, and newline-delimited JSON
/// (what Ollama and other APIs stream).
pub fn event_framing(
    media: Option<&str>,
    headers: &http::HeaderMap,
) -> Option<super::sse_fields::Framing> {
    use super::sse_fields::Framing;
    // The Vercel AI SDK's data stream is labelled `text/plain` and says
    // what it is in its own header (or, in 3.x, another). Under another
    // media type the type decides (an SSE stream with the header is SSE:
    // an attack pass read it as typed lines, unmasked).
    let typed = headers.contains_key("x-vercel-ai-data-stream")
        || headers.contains_key("x-experimental-stream-data");
    if typed && media.is_none_or(|t| t == "text/plain") {
        return Some(Framing::TypedLines);
    }
    match media? {
        "text/event-stream" => Some(Framing::Sse),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines"
        | "text/x-ndjson"
        | "application/x-ldjson"
        // Cohere's v1 chat stream, and others'.
        | "application/stream+json"
        | "application/x-json-stream" => Some(Framing::Lines),
        // Perhaps an array of a stream's chunks (json_array.rs looks).
        t if t == "application/json" || t.ends_with("+json") => Some(Framing::Array),
        _ => None,
    }
}

/// `type/subtype`, both RFC 9110 tokens.
fn valid_media_type(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    };
    t.split_once('/').is_some_and(|(a, b)| token(a) && token(b))
}

/// Why a body of this media type cannot be masked: compressed archives
/// (what is inside is never seen) and text in an encoding the detectors
/// do not read (UTF-16, UTF-32).
fn opaque_media(t: &str) -> Option<String> {
    const ARCHIVES: [&str; 11] = [
        "application/gzip",
        "application/x-gzip",
        "application/zip",
        "application/x-zip-compressed",
        "application/x-bzip2",
        "application/x-xz",
        "application/zstd",
        "application/x-7z-compressed",
        "application/vnd.rar",
        "application/x-rar-compressed",
        "application/x-compress",
    ];
    if t.starts_with("application/grpc") || t.starts_with("application/connect+") {
        // gRPC, gRPC-Web and Connect: length-prefixed protobuf messages,
        // a stream's text a few characters a message (Vertex AI). Masking
        // the bytes would miss it and break the framing.
        return Some(format!(
            "{t} messages are protobuf: their fields are not read (see README, Limits)"
        ));
    }
    if t == "application/vnd.amazon.eventstream" {
        // Bedrock's streams: binary frames with lengths and checksums,
        // their payloads JSON or base64 of JSON. Masking the bytes would
        // miss the base64 and break the frames; they are not parsed yet.
        return Some(format!(
            "{t} frames are binary: their payloads are not read (see README, Limits)"
        ));
    }
    ARCHIVES
        .contains(&t)
        .then(|| format!("{t} is compressed: what it holds cannot be inspected"))
}

/// Why a body whose first bytes are these cannot be masked: a compressed
/// format under another label (the skill could decompress it itself).
pub fn opaque_start(b: &[u8]) -> Option<&'static str> {
    const MAGIC: [(&[u8], &str); 7] = [
        (b"\x1f\x8b", "gzip"),
        (b"PK\x03\x04", "zip"),
        (b"BZh", "bzip2"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"7z\xbc\xaf\x27\x1c", "7z"),
        (b"Rar!\x1a\x07", "rar"),
    ];
    MAGIC
        .iter()
        .find(|(m, _)| b.starts_with(m))
        .map(|(_, name)| *name)
}

/// A streaming decoder whose output is bounded per step: encoded input is
/// kept until it is decoded, and each step yields at most about `max` bytes
/// however much the input expands (a few hundred bytes of brotli can stand
/// for gigabytes). Decoded bytes go on as they come; nothing is held whole.
pub struct Decoder {
    kind: Kind,
    /// Encoded bytes not decoded yet.
    input: Vec<u8>,
}

enum Kind {
    Identity,
    // flate2's write decoders consume input in steps of at most their 32 KiB
    // output buffer per `write`, so they can be driven a step at a time.
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Deflate(Box<flate2::write::ZlibDecoder<Vec<u8>>>),
    /// `deflate` is zlib (RFC 9110), but servers also send raw deflate, as
    /// browsers accept: told apart by the zlib header once two bytes are in.
    DeflateUndecided,
    DeflateRaw(Box<flate2::write::DeflateDecoder<Vec<u8>>>),
    // brotli's writer decodes all it is given at once: its streaming
    // function is driven directly, with a bounded output buffer.
    Brotli(Box<BrotliStream>),
}

/// Decoded bytes per step of the masker.
pub const STEP: usize = 64 * 1024;

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// Input left to decode, or decoded output not drawn yet.
    pub fn has_input(&self) -> bool {
        match &self.kind {
            // Waits for the two bytes that tell zlib from raw deflate.
            Kind::DeflateUndecided => self.input.len() >= 2,
            Kind::Brotli(b) if b.more_output => true,
            _ => !self.input.is_empty(),
        }
    }

    /// Decodes until about `max` bytes are out or the input is used up.
    pub fn step(&mut self, max: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        if matches!(self.kind, Kind::DeflateUndecided) {
            if self.input.len() < 2 {
                return Ok(out);
            }
            self.decide_deflate();
        }
        match &mut self.kind {
            Kind::Identity => {
                let n = self.input.len().min(max.max(1));
                out.extend(self.input.drain(..n));
            }
            Kind::Gzip(d) => step_flate(d.as_mut(), &mut self.input, &mut out, max)?,
            Kind::Deflate(d) => step_flate(d.as_mut(), &mut self.input, &mut out, max)?,
            Kind::DeflateRaw(d) => step_flate(d.as_mut(), &mut self.input, &mut out, max)?,
            Kind::DeflateUndecided => unreachable!("decided above"),
            Kind::Brotli(b) => b.step(&mut self.input, &mut out, max)?,
        }
        Ok(out)
    }

    fn decide_deflate(&mut self) {
        let zlib = match self.input[..] {
            [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0,
            _ => true,
        };
        self.kind = if zlib {
            Kind::Deflate(Box::new(flate2::write::ZlibDecoder::new(Vec::new())))
        } else {
            Kind::DeflateRaw(Box::new(flate2::write::DeflateDecoder::new(Vec::new())))
        };
    }

    /// The end of the body: the input is used up; what the decoder still
    /// holds comes out, and a truncated stream is an error.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        if matches!(self.kind, Kind::DeflateUndecided) {
            self.decide_deflate();
            let mut out = Vec::new();
            if let Kind::Deflate(d) = &mut self.kind {
                step_flate(d.as_mut(), &mut self.input, &mut out, usize::MAX)?;
            }
            if let Kind::DeflateRaw(d) = &mut self.kind {
                step_flate(d.as_mut(), &mut self.input, &mut out, usize::MAX)?;
            }
            out.extend(self.finish()?);
            return Ok(out);
        }
        match &mut self.kind {
            Kind::Identity => Ok(Vec::new()),
            Kind::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Kind::Deflate(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Kind::DeflateRaw(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Kind::DeflateUndecided => Ok(Vec::new()),
            Kind::Brotli(b) => b.finish(),
        }
    }
}

/// The flate2 write decoders, as far as a step needs them.
trait FlateWrite: Write {
    fn sink(&mut self) -> &mut Vec<u8>;
}

impl FlateWrite for flate2::write::MultiGzDecoder<Vec<u8>> {
    fn sink(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

impl FlateWrite for flate2::write::DeflateDecoder<Vec<u8>> {
    fn sink(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

impl FlateWrite for flate2::write::ZlibDecoder<Vec<u8>> {
    fn sink(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

fn step_flate(
    d: &mut dyn FlateWrite,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<()> {
    while !input.is_empty() && out.len() < max {
        let n = d.write(input)?;
        out.append(d.sink());
        if n == 0 {
            // The stream ended; what follows it is not decoded.
            input.clear();
            break;
        }
        input.drain(..n);
    }
    Ok(())
}

/// brotli's own streaming decoder state (the `brotli` crate's
/// `BrotliDecompressStream`), with the output drawn in bounded slices.
pub struct BrotliStream {
    state: brotli::BrotliState<
        brotli::HeapAlloc<u8>,
        brotli::HeapAlloc<u32>,
        brotli::HeapAlloc<brotli::HuffmanCode>,
    >,
    total_out: usize,
    done: bool,
    seen_input: bool,
    /// The last step stopped with output still to draw.
    more_output: bool,
}

impl BrotliStream {
    fn new() -> BrotliStream {
        BrotliStream {
            state: brotli::BrotliState::new(
                brotli::HeapAlloc::new(0),
                brotli::HeapAlloc::new(0),
                brotli::HeapAlloc::new(brotli::HuffmanCode::default()),
            ),
            total_out: 0,
            done: false,
            seen_input: false,
            more_output: false,
        }
    }

    fn step(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
        self.seen_input |= !input.is_empty();
        let mut buf = vec![0u8; STEP.min(max.max(1))];
        while !self.done && out.len() < max {
            let (mut avail_in, mut in_off) = (input.len(), 0usize);
            let (mut avail_out, mut out_off) = (buf.len(), 0usize);
            let r = brotli::BrotliDecompressStream(
                &mut avail_in,
                &mut in_off,
                input,
                &mut avail_out,
                &mut out_off,
                &mut buf,
                &mut self.total_out,
                &mut self.state,
            );
            out.extend_from_slice(&buf[..out_off]);
            input.drain(..in_off);
            self.more_output = matches!(r, brotli::BrotliResult::NeedsMoreOutput);
            match r {
                brotli::BrotliResult::NeedsMoreOutput => continue,
                brotli::BrotliResult::NeedsMoreInput => break,
                brotli::BrotliResult::ResultSuccess => {
                    self.done = true;
                    input.clear();
                }
                brotli::BrotliResult::ResultFailure => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "invalid brotli stream",
                    ));
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        // An empty body (HEAD, 204) carries no stream at all.
        if self.done || !self.seen_input {
            Ok(Vec::new())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the brotli stream is truncated",
            ))
        }
    }
}

/// A stream of events masked as the texts they carry, events held while
/// a field could still continue (sse.rs, ndjson.rs).
pub trait Events: Send + Sync {
    fn push_at(
        &mut self,
        chunk: &[u8],
        now: std::time::Instant,
    ) -> Result<Vec<u8>, super::sse::EventError>;
    fn finish(&mut self) -> Vec<u8>;
    /// When held events can go out if nothing more arrives (QUIET after
    /// the last value of the fields they wait for).
    fn deadline(&self) -> Option<std::time::Instant>;
    /// The upstream has been quiet: what that decides.
    fn expire(&mut self, now: std::time::Instant) -> Vec<u8>;
    fn take_counts(&mut self) -> Counts;
}

/// JSON field-path masking needs the whole document.
pub use super::json_body::JsonMode;

pub struct MaskedBody<B> {
    inner: B,
    decoder: Decoder,
    masker: StreamMasker,
    json: Option<JsonMode>,
    /// Server-sent events and JSON lines: masked as the text streams
    /// they carry.
    events: Option<Box<dyn Events>>,
    /// Shared with the request record: detector → count.
    counts: Arc<Mutex<Counts>>,
    /// What the client received (masked), up to the recording cap.
    capture: Option<Capture>,
    /// Memory a buffered JSON document draws from (per workload and daemon).
    budget: Option<crate::memory_budget::Lease>,
    /// A masked JSON document, a block a frame, each given back to the
    /// budget as it goes out.
    queued: std::collections::VecDeque<Vec<u8>>,
    /// A frame looked at before the response went out, sent first.
    peeked: Option<Frame<Bytes>>,
    /// The first decoded bytes were looked at for a compressed format
    /// (or need not be: the profile passes what it cannot inspect).
    sniffed: bool,
    ended: bool,
    /// The upstream's body is over (its input may still be decoding).
    inner_done: bool,
    /// Trailers that arrived while masked data was still held back: sent
    /// after it.
    trailers: Option<http::HeaderMap>,
    /// Wakes the body when held events can go out though the upstream
    /// sends nothing more (SSE fields that could still continue).
    wake: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the masker last finished with what the upstream sent: the
    /// upstream is quiet only counting from there (time spent masking a
    /// large event is not a pause of the stream; found by an attack pass).
    last_input: std::time::Instant,
    /// The CPU the masking has used, against what it may (cut off past it).
    cpu: super::cpu_allowance::CpuMeter,
}

/// Keeps the first `cap` bytes of the masked body for the session record.
pub struct Capture {
    pub buf: Arc<Mutex<Vec<u8>>>,
    pub cap: usize,
}

impl Capture {
    fn keep(&self, data: &[u8]) {
        let mut b = self.buf.lock().unwrap();
        let room = self.cap.saturating_sub(b.len());
        b.extend_from_slice(&data[..room.min(data.len())]);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Uninspectable(pub String);

impl<B> MaskedBody<B> {
    pub fn new(
        inner: B,
        decoder: Decoder,
        masker: StreamMasker,
        json: Option<JsonMode>,
        counts: Arc<Mutex<Counts>>,
    ) -> Self {
        Self {
            inner,
            decoder,
            masker,
            json,
            counts,
            events: None,
            capture: None,
            budget: None,
            queued: Default::default(),
            peeked: None,
            sniffed: false,
            ended: false,
            inner_done: false,
            trailers: None,
            wake: None,
            last_input: std::time::Instant::now(),
            cpu: super::cpu_allowance::CpuMeter::new(Default::default()),
        }
    }

    pub fn cpu_meter(mut self, meter: super::cpu_allowance::CpuMeter) -> Self {
        self.cpu = meter;
        self
    }

    pub fn capture(mut self, c: Capture) -> Self {
        self.capture = Some(c);
        self
    }

    /// `text/event-stream`, JSON lines: events are reassembled and masked
    /// as text.
    pub fn events(mut self, events: Box<dyn Events>) -> Self {
        self.events = Some(events);
        self
    }

    /// Whether the whole body is buffered before any of it goes out
    /// (JSON field paths): then an error can still become a refusal.
    pub fn buffers_whole(&self) -> bool {
        self.json.is_some()
    }

    /// Lets a body in a compressed format through, masked as bytes (the
    /// profile's `on_uninspectable = "pass"`, no injected secret).
    pub fn pass_opaque(mut self, yes: bool) -> Self {
        self.sniffed |= yes;
        self
    }

    /// Sends `frame` (taken with `frame()`) first after all.
    pub fn unread(&mut self, frame: Frame<Bytes>) {
        self.peeked = Some(frame);
    }

    pub fn budget(mut self, lease: crate::memory_budget::Lease) -> Self {
        self.budget = Some(lease);
        self
    }

    /// Masked bytes on their way to the client.
    fn out(&self, data: Vec<u8>) -> Frame<Bytes> {
        if let Some(c) = &self.capture {
            c.keep(&data);
        }
        Frame::data(Bytes::from(data))
    }

    /// `decoded` masked, within the body's CPU allowance.
    fn absorb(&mut self, decoded: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        let start = super::cpu_allowance::CpuMeter::start();
        let len = decoded.len();
        let out = self.mask(decoded)?;
        self.charge(start, len)?;
        Ok(out)
    }

    fn charge(&mut self, start: std::time::Duration, bytes: usize) -> Result<(), BoxError> {
        self.cpu
            .charge(start, bytes)
            .map_err(|why| Box::new(Uninspectable(why)) as BoxError)
    }

    fn mask(&mut self, decoded: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        if !self.sniffed && !decoded.is_empty() {
            self.sniffed = true;
            let utf16 = decoded.starts_with(b"\xff\xfe") || decoded.starts_with(b"\xfe\xff");
            if let Some(kind) = opaque_start(&decoded).or(utf16.then_some("UTF-16 text")) {
                return Err(Box::new(Uninspectable(format!(
                    "the body is {kind}: what it holds cannot be inspected"
                ))));
            }
        }
        match &mut self.json {
            Some(j) => {
                j.absorb(decoded, self.budget.as_mut())
                    .map_err(|why| Box::new(Uninspectable(why)) as BoxError)?;
                Ok(Vec::new())
            }
            None => match &mut self.events {
                Some(events) => {
                    let out = events
                        .push_at(&decoded, std::time::Instant::now())
                        .map_err(|e| Box::new(Uninspectable(e.to_string())) as BoxError);
                    self.last_input = std::time::Instant::now();
                    out
                }
                None => Ok(self.masker.push(&decoded)),
            },
        }
    }

    fn end(&mut self) -> Result<Vec<u8>, BoxError> {
        let tail = self.decoder.finish().map_err(|e| {
            Box::new(Uninspectable(format!("decoding the response: {e}"))) as BoxError
        })?;
        let mut out = self.absorb(tail)?;
        let start = super::cpu_allowance::CpuMeter::start();
        if let Some(j) = self.json.take() {
            let lease = std::cell::RefCell::new(self.budget.take());
            let done = j.mask(self.masker.sibling(), &lease, &mut self.queued);
            self.budget = lease.into_inner();
            let counts = done.map_err(|why| {
                self.queued.clear();
                Box::new(Uninspectable(why)) as BoxError
            })?;
            let mut mine = self.counts.lock().unwrap();
            for (k, v) in counts {
                *mine.entry(k).or_default() += v;
            }
        }
        if let Some(mut events) = self.events.take() {
            out.extend(events.finish());
            for (k, v) in events.take_counts() {
                *self.masker.counts.entry(k).or_default() += v;
            }
        }
        out.extend(self.masker.finish());
        if let Err(e) = self.charge(start, 0) {
            self.queued.clear();
            return Err(e);
        }
        let mut counts = self.counts.lock().unwrap();
        for (k, v) in std::mem::take(&mut self.masker.counts) {
            *counts.entry(k).or_default() += v;
        }
        Ok(out)
    }
}

impl<B> MaskedBody<B> {
    /// While the upstream is quiet: the SSE events that its quiet decides
    /// (`None` while there are none, with a wake-up set for when there
    /// will be).
    fn held_until(&mut self, cx: &mut Context<'_>) -> Option<Vec<u8>> {
        let events = self.events.as_mut()?;
        let Some(deadline) = events.deadline() else {
            self.wake = None;
            return None;
        };
        let deadline = deadline.max(self.last_input + super::sse_fields::QUIET);
        let deadline = tokio::time::Instant::from_std(deadline);
        let wake = self
            .wake
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if wake.deadline() != deadline {
            wake.as_mut().reset(deadline);
        }
        match wake.as_mut().poll(cx) {
            Poll::Ready(()) => Some(events.expire(std::time::Instant::now())),
            Poll::Pending => None,
        }
    }
}

impl<B> Body for MaskedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    /// Decoded input first (a step at a time: memory stays bounded however
    /// much it expands), then the next frame; at the end what is held back,
    /// then the trailers.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.peeked.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        loop {
            if this.ended {
                if let Some(block) = this.queued.pop_front() {
                    if let Some(lease) = &mut this.budget {
                        lease.give_back(block.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(this.out(block))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            if this.decoder.has_input() {
                let decoded = match this.decoder.step(STEP) {
                    Ok(d) => d,
                    Err(e) => {
                        return Poll::Ready(Some(Err(Box::new(Uninspectable(format!(
                            "decoding the response: {e}"
                        ))))));
                    }
                };
                match this.absorb(decoded) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Poll::Ready(Some(Ok(this.out(out)))),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            if this.inner_done {
                this.ended = true;
                match this.end() {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => this.queued.push_front(out),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => match this.held_until(cx) {
                    Some(out) if !out.is_empty() => return Poll::Ready(Some(Ok(this.out(out)))),
                    Some(_) => continue,
                    None => return Poll::Pending,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.decoder.push(&data),
                    // Trailers end the body: masked like headers, sent after
                    // what is still held back.
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            super::mask_headers(&mut t, &mut this.masker);
                            this.trailers = Some(t);
                        }
                        this.inner_done = true;
                    }
                },
                Poll::Ready(None) => this.inner_done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{JsonPath, Profile, Uninspectable as Mode, detectors};
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::collections::BTreeMap;

    fn profile(json: Vec<JsonPath>) -> Arc<Profile> {
        let d = detectors::builtin_names()
            .map(|n| detectors::builtin(n).unwrap())
            .collect();
        Arc::new(Profile::new("t", d, BTreeMap::new(), json, 1 << 20, Mode::Block).unwrap())
    }

    async fn run(
        chunks: Vec<Vec<u8>>,
        encoding: Option<&str>,
        json: Option<JsonMode>,
        injected: &[String],
    ) -> (Result<Vec<u8>, String>, Counts) {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        let inner = StreamBody::new(futures_stream(frames));
        let counts = Arc::new(Mutex::new(Counts::new()));
        let paths = json.as_ref().map(|j| j.paths.clone()).unwrap_or_default();
        let body = MaskedBody::new(
            inner,
            decoder_for(encoding).unwrap(),
            StreamMasker::new(profile(paths), injected),
            json,
            counts.clone(),
        );
        let out = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| e.to_string());
        let c = counts.lock().unwrap().clone();
        (out, c)
    }

    /// Streams under other names are read as streams, and binary event
    /// frames the masker cannot rewrite are refused (found by an attack
    /// pass: Cohere's `application/stream+json` lines were masked as bytes,
    /// and Bedrock's event stream went out with the key in its frames).
    #[test]
    fn streams_by_every_name_are_read_or_refused() {
        use super::super::sse_fields::Framing;
        for t in ["application/stream+json", "application/x-json-stream"] {
            let h = http::HeaderMap::new();
            assert_eq!(event_framing(Some(t), &h), Some(Framing::Lines), "{t}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(
            "content-type",
            "application/vnd.amazon.eventstream".parse().unwrap(),
        );
        let err = prepare(&mut h, &profile(vec![])).err().expect("refused");
        assert!(err.contains("eventstream"), "{err}");
        for t in [
            "application/grpc",
            "application/grpc-web+proto",
            "application/connect+proto",
        ] {
            let mut h = http::HeaderMap::new();
            h.insert("content-type", t.parse().unwrap());
            assert!(prepare(&mut h, &profile(vec![])).is_err(), "{t}");
        }
        // The data stream header decides only for text/plain.
        let mut h = http::HeaderMap::new();
        h.insert("x-vercel-ai-data-stream", "v2".parse().unwrap());
        assert_eq!(
            event_framing(Some("text/event-stream"), &h),
            Some(Framing::Sse)
        );
        assert_eq!(
            event_framing(Some("text/plain"), &h),
            Some(Framing::TypedLines)
        );
    }

    /// Bytes that are not UTF-8 pass as they are, only matches replaced
    /// (found by an attack pass: every such byte became U+FFFD).
    #[tokio::test]
    async fn bytes_that_are_not_text_pass_unchanged() {
        let mut body: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
        let clean = body.clone();
        body.extend_from_slice(b" card 4111 1111 1111 1111 \xff\xfe");
        let chunks: Vec<Vec<u8>> = body.chunks(5).map(|c| c.to_vec()).collect();
        let key = "wJalrXUtnFEMI/K7MDENG+bPxRfi&CYEXAMPLEKEY".to_string();
        let (out, _) = run(chunks, None, None, &[key]).await;
        let mut want = clean;
        want.extend_from_slice(b" card [REDACTED:card] \xff\xfe");
        assert_eq!(out.unwrap(), want);
    }

    #[test]
    fn a_bomb_decodes_a_bounded_step_at_a_time() {
        let zeros = vec![0u8; 1 << 20];
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 1 << 16, 5, 22);
            for _ in 0..32 {
                w.write_all(&zeros).unwrap();
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..32 {
            gz.write_all(&zeros).unwrap();
        }
        let gz = gz.finish().unwrap();
        for (enc, body) in [("br", br), ("gzip", gz)] {
            let mut d = decoder_for(Some(enc)).unwrap();
            d.push(&body);
            let mut total = 0;
            while d.has_input() {
                let out = d.step(STEP).unwrap();
                assert!(out.len() <= 2 * STEP, "{enc}: a step of {}", out.len());
                assert!(out.iter().all(|&b| b == 0));
                total += out.len();
            }
            total += d.finish().unwrap().len();
            assert_eq!(total, 32 << 20, "{enc}");
        }
        // Truncated: an error at the end, never a silent stop.
        let mut d = decoder_for(Some("br")).unwrap();
        d.push(b"\x1b\xff\xff\x7f");
        while d.has_input() {
            let _ = d.step(STEP);
        }
        assert!(d.finish().is_err());
    }

    /// Charsets that keep ASCII as ASCII pass; every label of UTF-16/32
    /// and UTF-7, however spelled, is refused (an attack pass found
    /// `ucs-2`, `unicode`, `x-utf-16le` and others let through).
    #[test]
    fn only_ascii_compatible_charsets_are_read() {
        let check = |ct: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            charset_is_readable(&h)
        };
        for ok in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "text/html; charset=ISO-8859-1",
            "text/plain; charset=windows-1252",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain; charset=utf-16",
            "text/plain; charset=ucs-2",
            "text/plain; charset=unicode",
            "text/plain; charset=csunicode",
            "text/plain; charset=iso-10646-ucs-2",
            "text/plain; charset=x-utf-16le",
            "text/plain; charset=unicodefffe",
            "text/plain; charset=utf16",
            "text/plain; charset=ucs-4",
            "text/plain; charset=utf-7",
            "text/plain; charset = \"utf-32be\"",
            "text/plain; charset=utf-8; charset=utf-16le",
            "text/plain; charset=iso-8859-",
            "text/plain; charset*=''utf-16le",
            "text/plain; charset*0=utf-1; charset*1=6le",
            "text/plain; charset*=utf-8''utf-16le",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    /// An SSE event held for its field's next piece goes out when the
    /// upstream goes quiet, without anything more arriving.
    #[tokio::test]
    async fn a_held_event_goes_out_while_the_upstream_is_quiet() {
        struct Quiet(Option<Bytes>);
        impl Body for Quiet {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                match self.0.take() {
                    Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                    // Never wakes: only the masker's own timer can.
                    None => Poll::Pending,
                }
            }
        }
        let event = b"data: {\"n\":\"card 4111\",\"status\":\"running\"}\n\n";
        let p = profile(vec![]);
        let masker = StreamMasker::new(p.clone(), &[] as &[String]);
        let mut body = MaskedBody::new(
            Quiet(Some(Bytes::from_static(event))),
            decoder_for(None).unwrap(),
            masker,
            None,
            Arc::new(Mutex::new(Counts::new())),
        )
        .events(Box::new(crate::masking::sse::SseMasker::new(
            p,
            &[] as &[String],
        )));
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("the held event never went out")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), &event[..]);
    }

    #[tokio::test]
    async fn trailers_come_after_the_held_back_data_and_are_masked() {
        let secret = "sk-TRAILER-77aa";
        let mut t = http::HeaderMap::new();
        t.insert("x-echo", format!("got {secret}").parse().unwrap());
        t.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            // No newline: the masker holds this back until the end.
            Ok(Frame::data(Bytes::from(format!(
                "partial {}",
                &secret[..6]
            )))),
            Ok(Frame::data(Bytes::from(secret[6..].to_string()))),
            Ok(Frame::trailers(t)),
        ];
        let counts = Arc::new(Mutex::new(Counts::new()));
        let mut body = MaskedBody::new(
            StreamBody::new(futures_stream(frames)),
            decoder_for(None).unwrap(),
            StreamMasker::new(profile(vec![]), &[secret]),
            None,
            counts.clone(),
        );
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            assert!(trailers.is_none(), "data after the trailers");
            match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        let data = String::from_utf8(data).unwrap();
        assert_eq!(data, "partial [REDACTED:injected_secret]");
        let t = trailers.expect("the trailers arrive");
        assert_eq!(t["x-echo"], "got [REDACTED:injected_secret]");
        assert_eq!(t["grpc-status"], "0");
        assert!(counts.lock().unwrap()["header:injected_secret"] >= 1);
    }

    fn futures_stream(
        v: Vec<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        struct S(std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>);
        impl futures_core::Stream for S {
            type Item = Result<Frame<Bytes>, BoxError>;
            fn poll_next(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                Poll::Ready(self.0.pop_front())
            }
        }
        S(v.into())
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn gzip_bodies_are_decoded_masked_and_sent_as_identity() {
        let text = b"contact bob@example.com, card 4111 1111 1111 1111\n".repeat(50);
        let z = gzip(&text);
        // Compressed bytes split into small chunks: the decoder streams.
        let chunks: Vec<Vec<u8>> = z.chunks(7).map(|c| c.to_vec()).collect();
        let (out, counts) = run(chunks, Some("gzip"), None, &[]).await;
        let out = String::from_utf8(out.unwrap()).unwrap();
        assert!(!out.contains("bob@example.com") && !out.contains("4111 1111"));
        assert_eq!(counts["email"], 50);
        assert_eq!(counts["card"], 50);
    }

    /// Concatenated gzip members are one body (RFC 1952): all decoded,
    /// and a value split between two members is still caught.
    #[tokio::test]
    async fn every_gzip_member_is_decoded() {
        let mut z = gzip(b"ssn 078-05");
        z.extend(gzip(b"-1120 end"));
        let (out, counts) = run(vec![z], Some("gzip"), None, &[]).await;
        assert_eq!(out.unwrap(), b"ssn [REDACTED:ssn] end");
        assert_eq!(counts["ssn"], 1);
    }

    /// `deflate` as raw deflate (no zlib header), as some servers send it.
    #[tokio::test]
    async fn raw_deflate_is_read_too() {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"ssn 078-05-1120 end").unwrap();
        let z = z.finish().unwrap();
        let chunks: Vec<Vec<u8>> = z.chunks(1).map(|c| c.to_vec()).collect();
        let (out, _) = run(chunks, Some("deflate"), None, &[]).await;
        assert_eq!(out.unwrap(), b"ssn [REDACTED:ssn] end");
    }

    #[tokio::test]
    async fn brotli_and_deflate_too() {
        let text = b"key AKIAIOSFODNN7EXAMPLE end";
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(text).unwrap();
        }
        let (out, _) = run(vec![br], Some("br"), None, &[]).await;
        assert_eq!(out.unwrap(), b"key [REDACTED:aws_access_key] end");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text).unwrap();
        let (out, _) = run(vec![z.finish().unwrap()], Some("deflate"), None, &[]).await;
        assert_eq!(out.unwrap(), b"key [REDACTED:aws_access_key] end");
    }

    #[tokio::test]
    async fn json_paths_and_detectors_together() {
        let doc = br#"{"customers":[{"ssn":"078-05-1120","note":"mail a@b.example"}],"password":"hunter2"}"#;
        let paths = vec![
            JsonPath::parse("$.customers[*].ssn").unwrap(),
            JsonPath::parse("$..password").unwrap(),
        ];
        let chunks: Vec<Vec<u8>> = doc.chunks(5).map(|c| c.to_vec()).collect();
        let (out, counts) = run(chunks, None, Some(JsonMode::new(paths, 1 << 20)), &[]).await;
        let v: serde_json::Value = serde_json::from_slice(&out.unwrap()).unwrap();
        assert_eq!(v["customers"][0]["ssn"], "[REDACTED]");
        assert_eq!(v["password"], "[REDACTED]");
        assert_eq!(v["customers"][0]["note"], "mail [REDACTED:email]");
        assert_eq!(counts["json_path"], 2);
    }

    /// The field paths alone mask (no detector would): a document many
    /// blocks long, streamed through the re-writer.
    #[tokio::test]
    async fn json_paths_mask_large_documents() {
        let row =
            r#"{"name":"Ann","ssn":"078-05-1120","note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"#;
        let mut doc = String::from("{\"customers\":[");
        while doc.len() < 300_000 {
            doc.push_str(row);
        }
        doc.push_str(r#"{"name":"end"}]}"#);
        let paths = vec![JsonPath::parse("$.customers[*].ssn").unwrap()];
        let p = Arc::new(
            Profile::new(
                "t",
                vec![detectors::builtin("email").unwrap()],
                BTreeMap::new(),
                paths.clone(),
                1 << 20,
                Mode::Block,
            )
            .unwrap(),
        );
        let frames = doc
            .as_bytes()
            .chunks(10_000)
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = MaskedBody::new(
            StreamBody::new(futures_stream(frames)),
            decoder_for(None).unwrap(),
            StreamMasker::new(p, &[] as &[String]),
            Some(JsonMode::new(paths, 1 << 20)),
            Arc::new(Mutex::new(Counts::new())),
        );
        let out = body.collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("078-05-1120"));
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["customers"][7]["ssn"], "[REDACTED]");
        assert_eq!(v["customers"][7]["note"].as_str().unwrap().len(), 32);
    }

    #[tokio::test]
    async fn over_the_limit_or_corrupt_fails_closed() {
        let big = vec![b'{'; 2000];
        let (out, _) = run(vec![big], None, Some(JsonMode::new(vec![], 1000)), &[]).await;
        assert!(out.unwrap_err().contains("inspection limit"));
        let (out, _) = run(vec![b"not gzip at all".to_vec()], Some("gzip"), None, &[]).await;
        assert!(out.unwrap_err().contains("decoding"));
        assert!(decoder_for(Some("zstd")).is_err());
    }
}
