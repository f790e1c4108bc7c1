//! The audit log: append-only and hash-chained. Each record carries the
//! hash of the one before it, so a changed, removed or reordered record
//! breaks the chain where it happened; a separate head (last seq + hash)
//! catches a cut-off tail. Export it to a SIEM for an anchor outside the
//! host: whoever can rewrite the store could rewrite the whole chain.
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

/// SHA-256 over the previous hash and the canonical JSON of the content
/// (serde_json writes object keys in sorted order: `Value` maps are
/// BTreeMaps here, no `preserve_order`).
pub fn hash_of(seq: u64, ts_ms: u64, kind: &str, data: &Value, prev_hash: &str) -> String {
    let content = serde_json::json!({"seq": seq, "ts_ms": ts_ms, "kind": kind, "data": data});
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(b"\n");
    ctx.update(content.to_string().as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl AuditRecord {
    pub fn new(seq: u64, ts_ms: u64, kind: &str, data: Value, prev_hash: String) -> AuditRecord {
        let hash = hash_of(seq, ts_ms, kind, &data, &prev_hash);
        AuditRecord {
            seq,
            ts_ms,
            kind: kind.into(),
            data,
            prev_hash,
            hash,
        }
    }
}

/// Where the chain breaks, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub records: u64,
    pub problems: Vec<String>,
    /// The last record's number and hash: kept by an operator (or a SIEM),
    /// `audit verify --anchor SEQ:HASH` later proves nothing up to it was
    /// rewritten since.
    #[serde(default)]
    pub head: Option<(u64, String)>,
}

impl Verification {
    /// Checks that record `seq` still has `hash` (an anchor kept from an
    /// earlier check); `record` is what the log holds at `seq`.
    pub fn check_anchor(&mut self, seq: u64, hash: &str, record: Option<&AuditRecord>) {
        match record {
            Some(r) if r.seq == seq && r.hash == hash => {}
            Some(r) if r.seq == seq => self.problems.push(format!(
                "record {seq}: its hash is not the anchor's (the log was rewritten up to it)"
            )),
            _ => self.problems.push(format!(
                "record {seq} of the anchor is not in the log (removed, or another log)"
            )),
        }
    }
}

/// Checks a chain given in storage order plus the stored head.
/// `in_use`: the store holds sessions, so it has been used and an empty
/// log means a removed one.
pub fn verify(
    records: impl Iterator<Item = AuditRecord>,
    head: Option<(u64, String)>,
    in_use: bool,
) -> Verification {
    let mut problems = Vec::new();
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_string();
    let mut n = 0;
    for r in records {
        n += 1;
        if r.seq != expected_seq {
            problems.push(if r.seq > expected_seq {
                format!(
                    "record {}: records {}..{} are missing (removed)",
                    r.seq,
                    expected_seq,
                    r.seq - 1
                )
            } else {
                format!(
                    "record {}: out of order after record {} (reordered or duplicated)",
                    r.seq,
                    expected_seq - 1
                )
            });
        }
        if r.prev_hash != prev {
            problems.push(format!(
                "record {}: does not follow the record before it (removed or reordered)",
                r.seq
            ));
        }
        if hash_of(r.seq, r.ts_ms, &r.kind, &r.data, &r.prev_hash) != r.hash {
            problems.push(format!(
                "record {}: content does not match its hash (changed)",
                r.seq
            ));
        }
        expected_seq = r.seq + 1;
        prev = r.hash;
        if problems.len() > 100 {
            problems.push("more problems not listed".into());
            break;
        }
    }
    match head {
        Some((seq, hash)) if seq != expected_seq - 1 || hash != prev => problems.push(format!(
            "the log ends at record {} but its head says {seq}: records were cut off the end",
            expected_seq - 1
        )),
        None if n > 0 => problems.push("the log has records but no head".into()),
        None if in_use => problems
            .push("the store has sessions but its audit log is empty: the log was removed".into()),
        _ => {}
    }
    Verification {
        records: n,
        problems,
        head: (n > 0).then_some((expected_seq - 1, prev)),
    }
}

/// One record for a SIEM. `jsonl`: the record itself. `cef`: ArcSight CEF.
/// `ocsf`: an OCSF 1.x event (HTTP Activity 4002 for requests, Network
/// Activity 4001 for connections).
pub fn format(r: &AuditRecord, fmt: ExportFormat) -> String {
    let d = &r.data;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    match fmt {
        ExportFormat::Jsonl => serde_json::to_string(r).unwrap_or_default(),
        ExportFormat::Cef => {
            let esc_h = |v: &str| v.replace('\\', "\\\\").replace('|', "\\|");
            let esc = |v: &str| {
                v.replace('\\', "\\\\")
                    .replace('=', "\\=")
                    .replace('\n', " ")
            };
            let decision = s("decision");
            let severity = if decision == "deny" { 5 } else { 1 };
            format!(
                "CEF:0|interceptor|interceptor|{}|{}|{} {}|{}|rt={} cs1Label=rule cs1={} cs2Label=workload cs2={} suser={} requestMethod={} request={} dst={} act={} msg={} cs3Label=hash cs3={}",
                esc_h(env!("CARGO_PKG_VERSION")),
                esc_h(&r.kind),
                esc_h(&r.kind),
                esc_h(&decision),
                severity,
                r.ts_ms,
                esc(&s("rule")),
                esc(&s("workload")),
                esc(&s("user")),
                esc(&s("method")),
                esc(&format!("{}{}", s("host"), s("path"))),
                esc(&s("destination")),
                esc(&decision),
                esc(&s("reason")),
                r.hash
            )
        }
        ExportFormat::Ocsf => {
            let http = r.kind == "request";
            let v = serde_json::json!({
                "class_uid": if http { 4002 } else { 4001 },
                "category_uid": 4,
                "activity_id": if http { 99 } else { 1 },
                "time": r.ts_ms,
                "severity_id": if s("decision") == "deny" { 3 } else { 1 },
                "status": s("decision"),
                "message": s("reason"),
                "metadata": {"product": {"name": "interceptor", "vendor_name": "interceptor", "version": env!("CARGO_PKG_VERSION")},
                             "uid": r.seq.to_string(), "version": "1.1.0"},
                "actor": {"process": {"pid": d.get("pid"), "file": {"path": s("exe")}},
                          "user": {"name": s("user")}, "session": {"uid": d.get("session")}},
                "dst_endpoint": {"hostname": s("host"), "ip": s("destination")},
                "http_request": if http { serde_json::json!({"http_method": s("method"), "url": {"hostname": s("host"), "path": s("path")}}) } else { Value::Null },
                "unmapped": {"rule": s("rule"), "workload": s("workload"), "hash": r.hash, "prev_hash": r.prev_hash},
            });
            v.to_string()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Cef,
    Ocsf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 1..=n {
            let prev = out.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
            out.push(AuditRecord::new(
                i,
                1000 + i,
                "request",
                json!({"path": format!("/x/{i}"), "decision": "allow"}),
                prev,
            ));
        }
        out
    }

    fn head(c: &[AuditRecord]) -> Option<(u64, String)> {
        c.last().map(|r| (r.seq, r.hash.clone()))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(5);
        assert_eq!(
            verify(c.clone().into_iter(), head(&c), true),
            Verification {
                records: 5,
                problems: vec![],
                head: head(&c),
            }
        );
    }

    /// A store that was used (it has sessions) with its whole log and its
    /// head removed is not "intact: 0 records"; a new store is.
    #[test]
    fn a_removed_log_is_not_an_empty_one() {
        let v = verify(std::iter::empty(), None, true);
        assert!(v.problems[0].contains("log was removed"), "{v:?}");
        assert!(verify(std::iter::empty(), None, false).problems.is_empty());
    }

    /// An anchor kept from an earlier check: the log rewritten up to it
    /// from scratch (a new chain, consistent in itself) fails against it.
    #[test]
    fn an_anchor_catches_a_rewritten_log() {
        let c = chain(5);
        let v = verify(c.clone().into_iter(), head(&c), true);
        let (seq, hash) = v.head.clone().unwrap();
        let mut ok = v.clone();
        ok.check_anchor(seq, &hash, c.last());
        assert!(ok.problems.is_empty());
        // The same records with one changed, re-hashed from there on.
        let mut forged = chain(5);
        forged[1].data["decision"] = json!("deny");
        let mut prev = forged[0].hash.clone();
        for r in forged.iter_mut().skip(1) {
            r.prev_hash = prev.clone();
            r.hash = hash_of(r.seq, r.ts_ms, &r.kind, &r.data, &r.prev_hash);
            prev = r.hash.clone();
        }
        let mut v = verify(forged.clone().into_iter(), head(&forged), true);
        assert!(v.problems.is_empty(), "consistent in itself");
        v.check_anchor(seq, &hash, forged.last());
        assert!(v.problems[0].contains("not the anchor's"), "{v:?}");
        let mut v = verify(c[..3].iter().cloned(), head(&c[..3]), true);
        v.check_anchor(seq, &hash, None);
        assert!(v.problems[0].contains("not in the log"), "{v:?}");
    }

    #[test]
    fn changes_removals_reorders_and_cut_tails_are_found_where_they_are() {
        let c = chain(6);
        let h = head(&c);
        let mut changed = c.clone();
        changed[2].data["decision"] = json!("deny");
        let v = verify(changed.into_iter(), h.clone(), true);
        assert_eq!(
            v.problems,
            vec!["record 3: content does not match its hash (changed)"]
        );

        let mut removed = c.clone();
        removed.remove(3);
        let v = verify(removed.into_iter(), h.clone(), true);
        assert!(
            v.problems[0].starts_with("record 5: records 4..4 are missing"),
            "{v:?}"
        );

        let mut swapped = c.clone();
        swapped.swap(1, 2);
        let v = verify(swapped.into_iter(), h.clone(), true);
        assert!(
            v.problems
                .iter()
                .any(|p| p.starts_with("record 3: does not follow")),
            "{v:?}"
        );

        let cut = c[..4].to_vec();
        let v = verify(cut.into_iter(), h, true);
        assert!(v.problems[0].contains("cut off the end"), "{v:?}");
    }

    #[test]
    fn exports() {
        let c = chain(1);
        let cef = format(&c[0], ExportFormat::Cef);
        assert!(
            cef.starts_with("CEF:0|interceptor|interceptor|") && cef.contains("act=allow"),
            "{cef}"
        );
        let o: Value = serde_json::from_str(&format(&c[0], ExportFormat::Ocsf)).unwrap();
        assert_eq!(o["class_uid"], 4002);
        assert_eq!(o["http_request"]["url"]["path"], "/x/1");
        let j: AuditRecord = serde_json::from_str(&format(&c[0], ExportFormat::Jsonl)).unwrap();
        assert_eq!(j, c[0]);
    }
}
