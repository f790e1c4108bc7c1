//! `interceptor doctor`: the host preconditions, one line per check (or
//! one JSON document). Reads only: it opens no store and creates nothing.
use crate::hostcheck::{self, Report, Status};
use anyhow::Result;
use std::path::PathBuf;

/// Exit codes: 0 all checks ok or warn, 1 a check failed, 2 could not check.
use super::exit::{COULD_NOT as EXIT_CANNOT_CHECK, FOUND as EXIT_FAILED};

#[derive(clap::Args)]
pub struct Doctor {
    /// Configuration file [default: /etc/interceptor/interceptor.toml if present]
    #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
    config: Option<PathBuf>,
    /// One JSON document: {"ok": bool, "checks": [...]}
    #[arg(long)]
    json: bool,
}

pub fn run(d: Doctor) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        cannot_check(
            "doctor needs root: it reads every process's /proc entries and the pinned hooks",
        );
    }
    let cfg = match super::config_or_default(d.config) {
        Ok(c) => c,
        Err(e) => cannot_check(&format!("{e:#}")),
    };
    let report = hostcheck::run_all(&cfg);
    if d.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    if report.failed() {
        std::process::exit(EXIT_FAILED);
    }
    if !report.errors.is_empty() {
        std::process::exit(EXIT_CANNOT_CHECK);
    }
    Ok(())
}

fn cannot_check(why: &str) -> ! {
    eprintln!("interceptor doctor: cannot check: {why}");
    std::process::exit(EXIT_CANNOT_CHECK);
}

fn print_human(r: &Report) {
    let width = r.checks.iter().map(|f| f.check.len()).max().unwrap_or(0);
    for f in &r.checks {
        let status = match f.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        println!("{status:<4}  {:<width$}  {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            println!("      {:<width$}  fix: {fix}", "");
        }
    }
    for e in &r.errors {
        println!("ERROR {:<width$}  could not check: {}", e.check, e.error);
    }
}
