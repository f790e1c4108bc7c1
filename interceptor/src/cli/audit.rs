//! `interceptor audit verify | export`: through the running daemon's admin
//! socket, or from the store when no daemon runs.
use super::StoreArgs;
use crate::audit::{AuditRecord, ExportFormat, Verification};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; exit 1 naming every changed, removed or reordered record.
    /// Prints the head as an anchor to keep: checking against it later
    /// proves nothing up to it was rewritten since (even as a new chain)
    Verify {
        /// An anchor printed by an earlier check (`SEQ:HASH`)
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Option<String>,
        /// One JSON object: records, problems, head
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: StoreArgs,
    },
    /// Stream records for a SIEM (one per line)
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Start after this record number, or at this time (RFC 3339)
        #[arg(long)]
        since: Option<String>,
        /// Keep running and print new records as they are written
        #[arg(long)]
        follow: bool,
        /// Once records are written out (stdout flushed), tell the daemon
        /// they were exported, so `audit_retention_days` may remove them (root)
        #[arg(long)]
        mark_exported: bool,
        #[command(flatten)]
        target: StoreArgs,
    },
}

/// Where the audit log is read from.
enum Source {
    Daemon(PathBuf),
    Store(Box<Store>),
}

impl Source {
    fn open(t: StoreArgs, rt: &tokio::runtime::Runtime) -> Result<Source> {
        let cfg = super::config_or_default(t.config)?;
        let socket = t.admin_socket.unwrap_or(cfg.admin_socket);
        if rt
            .block_on(crate::admin::get(&socket, "/healthz"))?
            .is_some()
        {
            return Ok(Source::Daemon(socket));
        }
        Ok(Source::Store(Box::new(Store::open_existing(
            &t.state_dir.unwrap_or(cfg.state_dir),
        )?)))
    }

    /// At most `limit` records after record `after`, from `since_ms` on.
    fn records(
        &self,
        rt: &tokio::runtime::Runtime,
        after: u64,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        match self {
            Source::Store(s) => s.audit_records(after, since_ms, limit),
            Source::Daemon(sock) => daemon_json(
                rt,
                sock,
                &format!("/v1/audit?after={after}&since_ms={since_ms}&limit={limit}"),
            ),
        }
    }

    fn verify(&self, rt: &tokio::runtime::Runtime) -> Result<Verification> {
        match self {
            Source::Store(s) => s.audit_verify(),
            Source::Daemon(sock) => daemon_json(rt, sock, "/v1/audit/verify"),
        }
    }
}

/// GET `path` from the daemon that answered at start, as JSON.
fn daemon_json<T: serde::de::DeserializeOwned>(
    rt: &tokio::runtime::Runtime,
    sock: &std::path::Path,
    path: &str,
) -> Result<T> {
    let (status, body) = rt
        .block_on(crate::admin::get(sock, path))?
        .context("the daemon went away")?;
    if !status.is_success() {
        bail!(
            "admin socket answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Records fetched at a time by `export`.
const BATCH: usize = 10_000;

pub fn run(cmd: AuditCmd) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        AuditCmd::Verify {
            anchor,
            json,
            target,
        } => {
            let anchor = anchor
                .map(|a| {
                    let (seq, hash) = a.split_once(':')?;
                    let seq: u64 = seq.parse().ok().filter(|&n| n > 0)?;
                    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| (seq, hash.to_ascii_lowercase()))
                })
                .map(|a| a.context("--anchor: SEQ:HASH as `audit verify` prints it"))
                .transpose()?;
            let src = Source::open(target, &rt)?;
            let mut v = src.verify(&rt)?;
            if let Some((seq, hash)) = &anchor {
                let at = src.records(&rt, seq - 1, 0, 1)?;
                v.check_anchor(*seq, hash, at.first());
            }
            let verdict = match v.problems.len() {
                0 => Ok(()),
                n => Err(super::exit::found(format!(
                    "audit log check failed: {n} problem(s) in {} record(s)",
                    v.records
                ))),
            };
            if json {
                let head = v.head.as_ref().map(|(seq, hash)| format!("{seq}:{hash}"));
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": v.problems.is_empty(),
                        "records": v.records,
                        "problems": v.problems,
                        "head": head,
                        "anchor": anchor.as_ref().map(|(seq, hash)| format!("{seq}:{hash}")),
                    })
                );
                return verdict;
            }
            if v.problems.is_empty() {
                println!(
                    "audit log intact: {} record(s), hash chain verified",
                    v.records
                );
                if let Some((seq, _)) = &anchor {
                    println!("anchor: record {seq} unchanged since it was taken");
                }
                if let Some((seq, hash)) = &v.head {
                    println!("head (keep it, then check with --anchor): {seq}:{hash}");
                }
            }
            for p in &v.problems {
                eprintln!("{p}");
            }
            verdict
        }
        AuditCmd::Export {
            format,
            since,
            follow,
            mark_exported,
            target,
        } => {
            let src = Source::open(target, &rt)?;
            let mark = |through: u64| -> Result<()> {
                let Source::Daemon(sock) = &src else {
                    bail!("--mark-exported needs the running daemon (its admin socket)");
                };
                let (status, body) = rt
                    .block_on(crate::admin::post(
                        sock,
                        "/v1/audit/exported",
                        serde_json::json!({ "through": through }),
                    ))?
                    .context("the daemon went away")?;
                if !status.is_success() {
                    bail!(
                        "marking records up to {through} exported: {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                Ok(())
            };
            if mark_exported && !matches!(src, Source::Daemon(_)) {
                bail!("--mark-exported needs the running daemon (its admin socket)");
            }
            let (mut after, since_ms) = match since.as_deref() {
                None => (0, 0),
                Some(s) => match s.parse::<u64>() {
                    Ok(seq) => (seq, 0),
                    Err(_) => {
                        let t: jiff::Timestamp = s.parse().with_context(|| {
                            format!("--since {s:?}: a record number or an RFC 3339 time")
                        })?;
                        (0, t.as_millisecond().max(0) as u64)
                    }
                },
            };
            let out = std::io::stdout();
            loop {
                let batch = src.records(&rt, after, since_ms, BATCH)?;
                let mut lock = out.lock();
                let before = after;
                for r in &batch {
                    // A closed pipe (`| head`) ends the export quietly.
                    if writeln!(lock, "{}", crate::audit::format(r, format)).is_err() {
                        return Ok(());
                    }
                    after = r.seq;
                }
                // Only what reached the reader counts as exported.
                if lock.flush().is_err() {
                    return Ok(());
                }
                drop(lock);
                if mark_exported && after > before {
                    mark(after)?;
                }
                if batch.len() < BATCH {
                    if !follow {
                        return Ok(());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
        }
    }
}
