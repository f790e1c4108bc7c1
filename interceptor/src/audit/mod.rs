//! The audit log: append-only and hash-chained. Each record carries the
//! hash of the one before it, so a changed, removed or reordered record
//! breaks the chain where it happened; the index's note of the last record
//! it saw catches a cut-off tail. Export it to a SIEM for an anchor outside
//! the host: whoever can rewrite the files could rewrite the whole chain.
//!
//! - `segment`: the files, a run of length-prefixed frames each;
//! - `log`: the one writer, and the group commit (`audit_sync`);
//! - `verify`: the chain check; `export`: SIEM formats.
mod export;
pub mod log;
mod segment;
mod verify;

pub use export::{ExportFormat, format};
pub use log::{AuditLog, Repair, SyncMode};
pub use verify::{Verification, verify};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// A record as read back: what `audit export` prints and the admin API
/// answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// 1, 2, 3, ... without gaps.
    pub seq: u64,
    pub ts_ms: u64,
    /// "connection", "request", ...
    pub kind: String,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// A record's content, as written and hashed: encoded once, by whoever
/// appends it (typed data serialises straight into the frame).
#[derive(Serialize)]
struct Body<'a, D: Serialize + ?Sized> {
    seq: u64,
    ts_ms: u64,
    kind: &'a str,
    data: &'a D,
}

#[derive(Deserialize)]
struct OwnedBody {
    seq: u64,
    ts_ms: u64,
    kind: String,
    data: Value,
}

/// SHA-256 over the previous hash (hex), a newline and the record's bytes
/// as stored. Hashing the stored bytes means no canonical re-encoding when
/// verifying; the hex and the newline keep the hashes of logs written
/// before segment files (sled, canonical JSON bodies) as they were, so
/// anchors taken then still hold.
pub fn digest(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(hex(prev).as_bytes());
    ctx.update(b"\n");
    ctx.update(body);
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

pub fn hex(h: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One record as stored: its predecessor's hash, its own, and its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    pub body: Vec<u8>,
}

impl Frame {
    /// Encodes a record after `prev` (the writer encodes in place).
    #[cfg(test)]
    pub fn new<D: Serialize + ?Sized>(
        seq: u64,
        ts_ms: u64,
        kind: &str,
        data: &D,
        prev: [u8; 32],
    ) -> serde_json::Result<Frame> {
        let body = serde_json::to_vec(&Body {
            seq,
            ts_ms,
            kind,
            data,
        })?;
        Ok(Frame {
            prev,
            hash: digest(&prev, &body),
            body,
        })
    }

    /// The hash still matches the bytes.
    pub fn intact(&self) -> bool {
        digest(&self.prev, &self.body) == self.hash
    }

    pub fn record(&self) -> serde_json::Result<AuditRecord> {
        let b: OwnedBody = serde_json::from_slice(&self.body)?;
        Ok(AuditRecord {
            seq: b.seq,
            ts_ms: b.ts_ms,
            kind: b.kind,
            data: b.data,
            prev_hash: hex(&self.prev),
            hash: hex(&self.hash),
        })
    }

    /// A record of the log kept in sled before segment files, with its
    /// hash as it was: the body is the canonical JSON it was hashed over.
    pub fn from_legacy(r: &AuditRecord) -> Option<Frame> {
        let body =
            serde_json::json!({"seq": r.seq, "ts_ms": r.ts_ms, "kind": r.kind, "data": r.data})
                .to_string()
                .into_bytes();
        Some(Frame {
            prev: parse_hex(&r.prev_hash)?,
            hash: parse_hex(&r.hash)?,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The hash of a record written before segment files (sled, canonical
    /// JSON, hex of the previous hash) is the same under `digest`: anchors
    /// kept from then still verify.
    #[test]
    fn records_from_before_segment_files_keep_their_hashes() {
        let data = json!({"path": "/x", "decision": "allow"});
        let content = json!({"seq": 1, "ts_ms": 5, "kind": "request", "data": data});
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(hex(&GENESIS).as_bytes());
        ctx.update(b"\n");
        ctx.update(content.to_string().as_bytes());
        let old: [u8; 32] = ctx.finish().as_ref().try_into().unwrap();
        let legacy = AuditRecord {
            seq: 1,
            ts_ms: 5,
            kind: "request".into(),
            data,
            prev_hash: hex(&GENESIS),
            hash: hex(&old),
        };
        let f = Frame::from_legacy(&legacy).unwrap();
        assert!(f.intact());
        assert_eq!(f.record().unwrap(), legacy);
    }

    #[test]
    fn hex_round_trips() {
        let h = digest(&GENESIS, b"x");
        assert_eq!(parse_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hex("zz"), None);
    }
}
