//! `interceptor sessions list`: through the daemon's admin socket when it
//! runs (it holds the store's lock), from the store itself when it does not.
use super::StoreArgs;
use crate::policy::Action;
use crate::store::{Session, SessionDetail, SessionFilter, Store};
use anyhow::{Result, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// List recorded sessions, oldest first
    List {
        /// Print JSON (one array) instead of a table
        #[arg(long)]
        json: bool,
        /// Show at most this many (the newest)
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
        /// Only workloads matching this cgroup glob ("skills.slice/**")
        #[arg(long, value_parser = cgroup_glob)]
        workload: Option<String>,
        /// Only sessions with a request by this OIDC user
        #[arg(long)]
        user: Option<String>,
        /// Only destinations (address or TLS name) containing this
        #[arg(long)]
        destination: Option<String>,
        /// Only this decision
        #[arg(long, value_parser = ["allow", "deny"])]
        decision: Option<String>,
        /// Started at or after (RFC 3339)
        #[arg(long)]
        since: Option<String>,
        /// Started at or before (RFC 3339)
        #[arg(long)]
        until: Option<String>,
    },
    /// Play a session back in order, with its original timing (terminal transcript)
    Replay {
        id: u64,
        /// Faster (2 = twice as fast) or slower (0.5); 0 = no waiting
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One session with its HTTP requests
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// A glob that does not parse is a usage error, not an empty list.
fn cgroup_glob(s: &str) -> Result<String, String> {
    globset::GlobBuilder::new(s)
        .literal_separator(true)
        .build()
        .map(|_| s.to_string())
        .map_err(|e| format!("not a cgroup glob: {e}"))
}

pub fn run(cmd: SessionsCmd) -> Result<()> {
    match cmd {
        SessionsCmd::List {
            json,
            limit,
            store,
            workload,
            user,
            destination,
            decision,
            since,
            until,
        } => {
            let time = |t: Option<String>, flag: &str| -> Result<Option<u64>> {
                t.map(|t| {
                    let ts: jiff::Timestamp = t.parse().map_err(|e| {
                        anyhow::anyhow!("--{flag} {t:?}: {e} (RFC 3339, e.g. 2026-11-23T10:00:00Z)")
                    })?;
                    Ok(ts.as_millisecond().max(0) as u64)
                })
                .transpose()
            };
            let filter = SessionFilter {
                workload,
                user,
                destination,
                decision: decision.map(|d| {
                    if d == "allow" {
                        Action::Allow
                    } else {
                        Action::Deny
                    }
                }),
                since_ms: time(since, "since")?,
                until_ms: time(until, "until")?,
            };
            list(json, limit, &filter, store)
        }
        SessionsCmd::Replay { id, speed, store } => replay(&session_detail(id, store)?, speed),
        SessionsCmd::Show { id, json, store } => show(&session_detail(id, store)?, json),
    }
}

/// One session and its requests, or an error naming the id.
fn session_detail(id: u64, store: StoreArgs) -> Result<SessionDetail> {
    let detail: Option<SessionDetail> = fetch(store, &format!("/v1/sessions/{id}"), |s| {
        s.session_with_requests(id)
    })?;
    detail.ok_or_else(|| anyhow::anyhow!("no session {id}"))
}

fn show(detail: &SessionDetail, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(detail)?);
        return Ok(());
    }
    let s = &detail.session;
    let sni = s
        .sni
        .as_deref()
        .map(|n| format!(", sni {n}"))
        .unwrap_or_default();
    println!(
        "session {}  {}  {} -> {} ({}{sni})",
        s.id,
        format_ms(s.started_ms),
        s.workload.cgroup,
        s.destination,
        s.protocol
    );
    println!(
        "  pid {}  exe {}  uid {}  decision {:?}  rule {}  up {}  down {}  {}",
        s.workload.pid,
        s.workload.exe,
        s.workload.uid,
        s.decision,
        s.rule.as_deref().unwrap_or("-"),
        s.bytes_up,
        s.bytes_down,
        s.error.as_deref().unwrap_or("")
    );
    for r in &detail.requests {
        println!(
            "  #{:<3} {} {} {}{} -> {}  {:?} {}  user {}  inject {}  {} ms  up {}  down {}  {}",
            r.seq,
            format_ms(r.started_ms),
            r.method,
            r.host,
            r.path,
            r.status,
            r.decision,
            r.rule.as_deref().unwrap_or("-"),
            r.user.as_deref().unwrap_or("-"),
            r.injected.as_deref().unwrap_or("-"),
            r.duration_ms,
            r.bytes_up,
            r.bytes_down,
            r.error.as_deref().unwrap_or("")
        );
        // Recorded bodies are masked already (the store holds no unmasked
        // data).
        for (mark, body) in [(">", &r.request_body), ("<", &r.response_body)] {
            for line in body.iter().flat_map(|b| b.lines()) {
                println!("       {mark} {line}");
            }
        }
    }
    Ok(())
}

/// Prints the exchange as it happened: each request at its offset from the
/// session's start, its response when it completed (scaled by `speed`).
fn replay(d: &SessionDetail, speed: f64) -> Result<()> {
    use std::io::Write;
    let s = &d.session;
    let start = std::time::Instant::now();
    let wait_until = |offset_ms: u64| {
        if speed > 0.0 {
            let at = std::time::Duration::from_secs_f64(offset_ms as f64 / 1000.0 / speed);
            if let Some(left) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(left);
            }
        }
    };
    let stamp = |offset_ms: u64| format!("[+{:>8.3}s]", offset_ms as f64 / 1000.0);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} session {}: {} (pid {}, {}) -> {} ({}{})",
        stamp(0),
        s.id,
        s.workload.cgroup,
        s.workload.pid,
        s.workload.exe,
        s.destination,
        s.protocol,
        s.sni
            .as_deref()
            .map(|n| format!(", {n}"))
            .unwrap_or_default()
    )?;
    // Events in time order: each request, then its response.
    let mut events: Vec<(u64, bool, &crate::store::RequestRecord)> = Vec::new();
    for r in &d.requests {
        let at = r.started_ms.saturating_sub(s.started_ms);
        events.push((at, false, r));
        events.push((at + r.duration_ms, true, r));
    }
    events.sort_by_key(|(at, is_resp, r)| (*at, *is_resp, r.seq));
    for (at, is_resp, r) in events {
        wait_until(at);
        if !is_resp {
            writeln!(
                out,
                "{} -> #{} {} {}{}  user {}  {:?} by {}",
                stamp(at),
                r.seq,
                r.method,
                r.host,
                r.path,
                r.user.as_deref().unwrap_or("-"),
                r.decision,
                r.rule.as_deref().unwrap_or("default")
            )?;
        } else {
            let masked: Vec<String> = r.masked.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            writeln!(
                out,
                "{} <- #{} {}  {} bytes{}{}",
                stamp(at),
                r.seq,
                r.status,
                r.bytes_down,
                if masked.is_empty() {
                    String::new()
                } else {
                    format!("  masked: {}", masked.join(", "))
                },
                r.error
                    .as_deref()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            )?;
            // The request body (what went upstream) with ">", the response with "|".
            for (mark, body) in [(">", &r.request_body), ("|", &r.response_body)] {
                for line in body.iter().flat_map(|b| b.lines().take(40)) {
                    writeln!(
                        out,
                        "             {mark} {}",
                        line.chars().take(200).collect::<String>()
                    )?;
                }
            }
        }
        out.flush()?;
    }
    let end = s
        .ended_ms
        .unwrap_or(s.started_ms)
        .saturating_sub(s.started_ms);
    wait_until(end);
    writeln!(
        out,
        "{} session {} {:?}: up {} bytes, down {} bytes",
        stamp(end),
        s.id,
        s.state,
        s.bytes_up,
        s.bytes_down
    )?;
    Ok(())
}

/// Asks the running daemon (it holds the store's lock); reads the store
/// itself when no daemon listens on the admin socket.
fn fetch<T: serde::de::DeserializeOwned>(
    store: StoreArgs,
    path: &str,
    from_store: impl FnOnce(&Store) -> Result<T>,
) -> Result<T> {
    let StoreArgs {
        config,
        admin_socket,
        state_dir,
    } = store;
    let cfg = super::config_or_default(config)?;
    let socket = admin_socket.unwrap_or(cfg.admin_socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(crate::admin::get(&socket, path))? {
        Some((status, body)) if status.is_success() => Ok(serde_json::from_slice(&body)?),
        Some((status, _)) if status == hyper::StatusCode::NOT_FOUND => {
            Ok(serde_json::from_str("null")?)
        }
        Some((status, body)) => bail!(
            "admin socket answered {status}: {}",
            String::from_utf8_lossy(&body)
        ),
        None => from_store(&Store::open_existing(&state_dir.unwrap_or(cfg.state_dir))?),
    }
}

fn list(json: bool, limit: usize, filter: &SessionFilter, store: StoreArgs) -> Result<()> {
    let sessions: Vec<Session> = fetch(
        store,
        &format!(
            "/v1/sessions?limit={limit}&filter={}",
            crate::admin::pct_encode(&serde_json::to_string(filter)?)
        ),
        |store| store.find(filter, limit),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
    } else {
        print!("{}", table(&sessions));
    }
    Ok(())
}

fn table(sessions: &[Session]) -> String {
    let header = [
        "ID",
        "STARTED (UTC)",
        "CGROUP",
        "PID",
        "EXE",
        "UID",
        "DESTINATION",
        "PROTO",
        "REQS",
        "DECISION",
        "RULE",
        "UP",
        "DOWN",
        "STATE",
    ];
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                format_ms(s.started_ms),
                s.workload.cgroup.clone(),
                s.workload.pid.to_string(),
                s.workload.exe.clone(),
                s.workload.uid.to_string(),
                s.destination.clone(),
                s.protocol.clone(),
                s.requests.to_string(),
                format!("{:?}", s.decision).to_lowercase(),
                match (&s.rule, s.protocol.as_str()) {
                    (Some(r), _) => r.clone(),
                    (None, "http" | "tls") if s.decision == crate::policy::Action::Allow => {
                        "(per request)".into()
                    }
                    (None, _) => "-".into(),
                },
                s.bytes_up.to_string(),
                s.bytes_down.to_string(),
                match (&s.state, &s.error) {
                    (_, Some(_)) => "error".into(),
                    (st, None) => format!("{st:?}").to_lowercase(),
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        out += &line(r);
    }
    out
}

fn format_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&f).unwrap_or_default()
}
