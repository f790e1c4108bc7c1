//! `interceptor approvals list | show ID | approve ID | deny ID`, over the
//! admin socket: the daemon takes the approver's identity from the socket's
//! peer credentials.
use crate::approval::Approval;
use anyhow::{Result, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Socket {
    #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "PATH", env = "INTERCEPTOR_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Pending and recent approvals
    List {
        /// Only the pending ones
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: Socket,
    },
    /// One approval
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: Socket,
    },
    /// Let the held request through
    Approve {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
        /// Also let the same workload, user and rule through for this long ("30m")
        #[arg(long)]
        window: Option<String>,
        #[command(flatten)]
        socket: Socket,
    },
    /// Refuse the held request (403 to the skill, with the reason)
    Deny {
        id: u64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        socket: Socket,
    },
}

fn socket_path(s: Socket) -> Result<PathBuf> {
    Ok(s.admin_socket
        .unwrap_or(super::config_or_default(s.config)?.admin_socket))
}

pub fn run(cmd: ApprovalsCmd) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let get = |sock: &PathBuf, path: &str| -> Result<bytes::Bytes> {
        match rt.block_on(crate::admin::get(sock, path))? {
            Some((st, body)) if st.is_success() => Ok(body),
            Some((st, body)) => bail!("{st}: {}", String::from_utf8_lossy(&body)),
            None => bail!(
                "no daemon listens on {} (approvals are decided by the running daemon)",
                sock.display()
            ),
        }
    };
    match cmd {
        ApprovalsCmd::List {
            pending,
            json,
            socket,
        } => {
            let sock = socket_path(socket)?;
            // Pending ones are all listed; decided ones, the newest 1,000.
            let path = if pending {
                "/v1/approvals?state=pending"
            } else {
                "/v1/approvals"
            };
            let list: Vec<Approval> = serde_json::from_slice(&get(&sock, path)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<10} {:<12} {:<28} {:<8} {:<60} {:<18} APPROVER",
                    "ID", "STATE", "WORKLOAD", "METHOD", "URL", "RULE"
                );
                for a in list {
                    println!(
                        "{:<10} {:<12} {:<28} {:<8} {:<60} {:<18} {}",
                        a.id,
                        format!("{:?}", a.state).to_lowercase(),
                        a.workload,
                        a.method,
                        a.url(),
                        a.rule,
                        a.approver.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        ApprovalsCmd::Show { id, json, socket } => {
            let sock = socket_path(socket)?;
            let body = get(&sock, &format!("/v1/approvals/{id}"))?;
            if json {
                let a: serde_json::Value = serde_json::from_slice(&body)?;
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                show(&serde_json::from_slice(&body)?);
            }
        }
        ApprovalsCmd::Approve {
            id,
            reason,
            window,
            socket,
        } => {
            let window_s = window.as_deref().map(parse_window).transpose()?;
            decide(
                &rt,
                socket_path(socket)?,
                id,
                "approve",
                serde_json::json!({"reason": reason, "window_s": window_s}),
            )?;
        }
        ApprovalsCmd::Deny { id, reason, socket } => {
            decide(
                &rt,
                socket_path(socket)?,
                id,
                "deny",
                serde_json::json!({ "reason": reason }),
            )?;
        }
    }
    Ok(())
}

/// One approval as `key: value` lines.
fn show(a: &Approval) {
    let v = serde_json::to_value(a).unwrap_or_default();
    let Some(fields) = v.as_object() else { return };
    println!("{:<12}{}", "url:", a.url());
    for (k, v) in fields {
        let text = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{:<12}{text}", format!("{k}:"));
    }
}

fn decide(
    rt: &tokio::runtime::Runtime,
    sock: PathBuf,
    id: u64,
    verb: &str,
    body: serde_json::Value,
) -> Result<()> {
    match rt.block_on(crate::admin::post(
        &sock,
        &format!("/v1/approvals/{id}/{verb}"),
        body,
    ))? {
        Some((st, body)) if st.is_success() => {
            let a: Approval = serde_json::from_slice(&body)?;
            println!(
                "approval {id}: {:?} by {}",
                a.state,
                a.approver.unwrap_or_default()
            );
            Ok(())
        }
        Some((_, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            bail!(
                "approval {id}: {}",
                v["error"].as_str().unwrap_or("refused")
            )
        }
        None => bail!("no daemon listens on {}", sock.display()),
    }
}

/// The window as the policy writes durations ("30m", "2h", "2d").
fn parse_window(s: &str) -> Result<u64> {
    let d = crate::units::duration(s).map_err(|e| anyhow::anyhow!("--window {e}"))?;
    Ok(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    /// The window reads durations as the policy does: `2d` was refused
    /// while the policy took it (issue 14).
    #[test]
    fn windows_read_as_policy_durations() {
        assert_eq!(super::parse_window("30m").unwrap(), 1800);
        assert_eq!(super::parse_window("2d").unwrap(), 2 * 86400);
        assert_eq!(super::parse_window("1h 30m").unwrap(), 5400);
        assert!(super::parse_window("soon").is_err());
    }
}
