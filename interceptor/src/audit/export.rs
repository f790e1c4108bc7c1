//! Records for a SIEM: JSON lines, ArcSight CEF, OCSF.
use super::AuditRecord;
use serde_json::Value;

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
    use super::super::{Frame, GENESIS};
    use super::*;
    use serde_json::json;

    #[test]
    fn exports() {
        let data = json!({"path": "/x/1", "decision": "allow"});
        let r = Frame::new(1, 1001, "request", &data, GENESIS)
            .unwrap()
            .record()
            .unwrap();
        let cef = format(&r, ExportFormat::Cef);
        assert!(
            cef.starts_with("CEF:0|interceptor|interceptor|") && cef.contains("act=allow"),
            "{cef}"
        );
        let o: Value = serde_json::from_str(&format(&r, ExportFormat::Ocsf)).unwrap();
        assert_eq!(o["class_uid"], 4002);
        assert_eq!(o["http_request"]["url"]["path"], "/x/1");
        let j: AuditRecord = serde_json::from_str(&format(&r, ExportFormat::Jsonl)).unwrap();
        assert_eq!(j, r);
    }
}
