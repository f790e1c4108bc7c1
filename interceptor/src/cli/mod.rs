//! Command line: `run` starts the daemon; the other commands talk to it or
//! to its state.
mod approvals;
mod audit;
mod diag;
mod doctor;
pub mod exit;
mod policy;
mod sessions;

use crate::config::{Config, DEFAULT_CONFIG, Overrides};
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// `interceptor --version`: the release and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("INTERCEPTOR_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "interceptor",
    version = VERSION,
    about = "Transparent access gateway for AI agent skills"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: attach the kernel hooks and proxy the workload's connections
    Run(Overrides),
    /// Remove the kernel hooks (the daemon must be stopped); connects from the workload cgroups go direct again
    Detach {
        /// Configuration file (for `bpffs_dir` and the ports to release)
        #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
        config: Option<PathBuf>,
        /// bpffs directory of the pins
        #[arg(long, value_name = "DIR", env = "INTERCEPTOR_BPFFS_DIR")]
        bpffs_dir: Option<PathBuf>,
        /// Detach even though a daemon answers on the admin socket (it would
        /// re-attach what it finds missing: stop it first)
        #[arg(long)]
        force: bool,
    },
    /// Create missing `*.slice` workload cgroups, so the daemon can attach before systemd starts the slice (the unit's ExecStartPre)
    PrepareCgroups {
        #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Exit 0 only when every workload cgroup has all hooks attached (gates skills.slice at boot); 1 when one misses some
    CheckHooks {
        #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Recorded sessions
    #[command(subcommand)]
    Sessions(sessions::SessionsCmd),
    /// Policy files
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Held requests waiting for a human
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// The hash-chained audit log
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Measurements for `cargo xtask bench`
    #[command(subcommand, hide = true)]
    Diag(diag::DiagCmd),
    /// The local CA that signs intercepted TLS
    #[command(subcommand)]
    Ca(CaCmd),
    /// Check the host preconditions; exit 1 when a check fails, 2 when it cannot check
    Doctor(doctor::Doctor),
}

#[derive(Subcommand)]
enum CaCmd {
    /// Print the CA certificate (PEM) for skill runtimes to trust; creates the CA on first use
    Export {
        #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR", env = "INTERCEPTOR_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy directory; exit 1 with every error as file:line:col
    Check {
        /// Directory [default: the configured one]
        dir: Option<PathBuf>,
        /// Configuration file (for the policy directory and credentials)
        #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show the decision and the deciding rule for one request
    Explain(policy::Explain),
}

/// Parses the command line and runs it; exits 1 or 2 on an error (see
/// `exit`), saying why on stderr.
pub fn main() {
    use clap::Parser;
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        eprintln!("interceptor: error: {e:#}");
        std::process::exit(exit::code(&e));
    }
}

pub fn dispatch(cli: Cli) -> Result<()> {
    if !matches!(cli.cmd, Cmd::Run(_)) {
        // A command's output piped into `head` ends it quietly, as any
        // Unix tool (Rust ignores SIGPIPE, and `println!` then panics on
        // the closed pipe). Not the daemon: a peer that closes a socket
        // must never stop it.
        // SAFETY: setting a signal's disposition to the default has no
        // preconditions; no other thread runs yet.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.cmd {
        Cmd::Run(o) => crate::daemon::run(o),
        Cmd::Detach {
            config,
            bpffs_dir,
            force,
        } => {
            let cfg = config_or_default(config)?;
            if !force && std::os::unix::net::UnixStream::connect(&cfg.admin_socket).is_ok() {
                bail!(
                    "a daemon is running (it answers on {}): stop it first (systemctl stop interceptor), then detach",
                    cfg.admin_socket.display()
                );
            }
            let dir = bpffs_dir.unwrap_or(cfg.bpffs_dir);
            let n = crate::bpf::detach_all(&dir)?;
            crate::reserved_ports::release(&[cfg.listen_port, cfg.admin_listen.port()])?;
            println!("detached {n} pinned link(s) under {}", dir.display());
            Ok(())
        }
        Cmd::PrepareCgroups { config } => {
            let cfg = config_or_default(config)?;
            let mount = crate::cgroup::cgroup2_mount()?;
            for c in &cfg.cgroups {
                crate::cgroup::create_missing_slices(&mount, c)?;
            }
            // The sandboxed daemon cannot write sysctls: reserve its ports here.
            crate::reserved_ports::reserve(&[cfg.listen_port, cfg.admin_listen.port()])?;
            Ok(())
        }
        Cmd::CheckHooks { config, json } => {
            let cfg = config_or_default(config)?;
            let mount = crate::cgroup::cgroup2_mount()?;
            let mut report = Vec::new();
            for c in &cfg.cgroups {
                let cg = crate::cgroup::resolve(&mount, c)?;
                let missing = crate::bpf::missing_hooks(&cfg.bpffs_dir, &cg)?;
                if !json {
                    if missing.is_empty() {
                        println!("{}: all hooks attached", cg.rel);
                    } else {
                        eprintln!(
                            "the hooks are not attached to {} (missing: {}); is interceptor.service running?",
                            cg.abs.display(),
                            missing.join(", ")
                        );
                    }
                }
                report.push(serde_json::json!({"cgroup": cg.rel, "missing": missing}));
            }
            let short = report
                .iter()
                .filter(|r| r["missing"] != serde_json::json!([]))
                .count();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": short == 0, "cgroups": report})
                );
            }
            match short {
                0 => Ok(()),
                n => Err(exit::found(format!("{n} workload cgroup(s) miss hooks"))),
            }
        }
        Cmd::Sessions(c) => sessions::run(c),
        Cmd::Audit(c) => audit::run(c),
        Cmd::Diag(c) => diag::run(c),
        Cmd::Approvals(c) => approvals::run(c),
        Cmd::Doctor(d) => doctor::run(d),
        Cmd::Ca(CaCmd::Export { config, state_dir }) => {
            let dir = match state_dir {
                Some(d) => d,
                None => config_or_default(config)?.state_dir,
            };
            let tls = crate::tls::Tls::load_or_create(&dir, &[])?;
            print!("{}", tls.ca_pem());
            Ok(())
        }
        Cmd::Policy(PolicyCmd::Explain(e)) => policy::explain(e),
        Cmd::Policy(PolicyCmd::Check { dir, config, json }) => policy::check(dir, config, json),
    }
}

/// Where a command finds recorded data: the running daemon's admin socket,
/// or the store itself when no daemon runs (sled allows one process).
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Configuration file (for the admin socket and state paths)
    #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin socket of the running daemon
    #[arg(long, value_name = "PATH", env = "INTERCEPTOR_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// State directory, read when no daemon runs
    #[arg(long, value_name = "DIR", env = "INTERCEPTOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Used by subcommands that only need paths from the config file.
pub fn config_or_default(config: Option<PathBuf>) -> Result<Config> {
    match config {
        Some(_) => Config::load(&Overrides {
            config,
            ..Default::default()
        }),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(&Overrides::default())
        }
        None => Ok(Config::default()),
    }
}
