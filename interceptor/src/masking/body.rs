//! A response body masked as it streams: decoded (gzip, deflate, br) to be
//! inspected, masked, and sent on as identity. JSON bodies with field paths
//! are buffered up to the profile's limit (over it: an error, fail closed).
use super::{Counts, JsonPath, StreamMasker};
use crate::proxy::upstream::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Content-Encoding values the masker can look into.
pub fn decoder_for(encoding: Option<&str>) -> Result<Decoder, String> {
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
    Ok(match enc.as_deref() {
        None | Some("") | Some("identity") => Decoder::Identity,
        Some("gzip") | Some("x-gzip") => {
            Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new())))
        }
        Some("deflate") => Decoder::Deflate(Box::new(flate2::write::ZlibDecoder::new(Vec::new()))),
        Some("br") => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
            Vec::new(),
            64 * 1024,
        ))),
        Some(other) => return Err(format!("content-encoding {other:?} cannot be inspected")),
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
    let is_json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    let json = (is_json && !profile.json_paths.is_empty())
        .then(|| JsonMode::new(profile.json_paths.clone(), profile.max_inspect));
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::CONTENT_ENCODING);
    headers.remove(http::header::TRANSFER_ENCODING);
    Ok((decoder, json))
}

pub enum Decoder {
    Identity,
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Deflate(Box<flate2::write::ZlibDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    /// Feeds encoded bytes, returns the decoded ones available so far.
    fn feed(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Identity => Ok(data.to_vec()),
            Decoder::Gzip(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Brotli(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Identity => Ok(Vec::new()),
            Decoder::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Brotli(d) => {
                d.flush()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

/// JSON field-path masking needs the whole document.
pub struct JsonMode {
    pub paths: Vec<JsonPath>,
    pub limit: u64,
    buf: Vec<u8>,
}

impl JsonMode {
    pub fn new(paths: Vec<JsonPath>, limit: u64) -> Self {
        Self {
            paths,
            limit,
            buf: Vec::new(),
        }
    }
}

pub struct MaskedBody<B> {
    inner: B,
    decoder: Decoder,
    masker: StreamMasker,
    json: Option<JsonMode>,
    /// Shared with the request record: detector → count.
    counts: Arc<Mutex<Counts>>,
    /// What the client received (masked), up to the recording cap.
    capture: Option<Capture>,
    ended: bool,
    /// Trailers that arrived while masked data was still held back: sent
    /// after it.
    trailers: Option<http::HeaderMap>,
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
            capture: None,
            ended: false,
            trailers: None,
        }
    }

    pub fn capture(mut self, c: Capture) -> Self {
        self.capture = Some(c);
        self
    }

    /// Masked bytes on their way to the client.
    fn out(&self, data: Vec<u8>) -> Frame<Bytes> {
        if let Some(c) = &self.capture {
            c.keep(&data);
        }
        Frame::data(Bytes::from(data))
    }

    fn absorb(&mut self, decoded: Vec<u8>) -> Result<Vec<u8>, BoxError> {
        match &mut self.json {
            Some(j) => {
                j.buf.extend_from_slice(&decoded);
                if j.buf.len() as u64 > j.limit {
                    return Err(Box::new(Uninspectable(format!(
                        "JSON body over the masking inspection limit of {} bytes",
                        j.limit
                    ))));
                }
                Ok(Vec::new())
            }
            None => Ok(self.masker.push(&decoded)),
        }
    }

    fn end(&mut self) -> Result<Vec<u8>, BoxError> {
        let tail = self.decoder.finish().map_err(|e| {
            Box::new(Uninspectable(format!("decoding the response: {e}"))) as BoxError
        })?;
        let mut out = self.absorb(tail)?;
        if let Some(j) = self.json.take() {
            // Field paths first; then the detectors over the re-serialised
            // document. Not JSON after all: the detectors still run.
            let text = match serde_json::from_slice::<serde_json::Value>(&j.buf) {
                Ok(mut v) => {
                    let n: u64 = j.paths.iter().map(|p| p.mask(&mut v)).sum();
                    if n > 0 {
                        *self
                            .counts
                            .lock()
                            .unwrap()
                            .entry("json_path".into())
                            .or_default() += n;
                    }
                    serde_json::to_vec(&v).unwrap_or(j.buf)
                }
                Err(_) => j.buf,
            };
            out.extend(self.masker.push(&text));
        }
        out.extend(self.masker.finish());
        let mut counts = self.counts.lock().unwrap();
        for (k, v) in std::mem::take(&mut self.masker.counts) {
            *counts.entry(k).or_default() += v;
        }
        Ok(out)
    }
}

impl<B> Body for MaskedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let decoded = match this.decoder.feed(&data) {
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
                    // Trailers end the body: what is held back goes first,
                    // then the trailers, masked like headers.
                    Err(frame) => {
                        let Ok(mut t) = frame.into_trailers() else {
                            continue;
                        };
                        super::mask_headers(&mut t, &mut this.masker);
                        this.ended = true;
                        return match this.end() {
                            Ok(out) if out.is_empty() => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                            Ok(out) => {
                                this.trailers = Some(t);
                                Poll::Ready(Some(Ok(this.out(out))))
                            }
                            Err(e) => Poll::Ready(Some(Err(e))),
                        };
                    }
                },
                Poll::Ready(None) => {
                    this.ended = true;
                    return match this.end() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(this.out(out)))),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Profile, Uninspectable as Mode, detectors};
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
            Decoder::Identity,
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
