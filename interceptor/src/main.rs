//! interceptor: a transparent access gateway for AI agent skills.
mod admin;
mod approval;
mod audit;
mod bpf;
mod cgroup;
mod cli;
mod config;
mod credentials;
mod daemon;
mod hostcheck;
mod identity;
mod inbound;
mod masking;
mod memory_budget;
mod policy;
mod proxy;
mod reserved_ports;
mod state_dir;
mod store;
mod tls;
mod units;
mod webhook;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::dispatch(cli) {
        eprintln!("interceptor: error: {e:#}");
        std::process::exit(cli::exit::code(&e));
    }
}
