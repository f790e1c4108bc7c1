//! interceptor: a transparent access gateway for AI agent skills.
//!
//! The daemon and the commands live here; `main.rs` only calls
//! [`cli::main`]. Leaf-first: `audit`, `units`, `policy` and `masking` know
//! nothing of the proxy; `store` keeps records; `proxy` runs the data path
//! (accept → attribute → decide → inspect → inject → forward → mask →
//! record); `daemon` wires them; `cli` is the command line.
pub mod admin;
pub mod approval;
pub mod audit;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod hostcheck;
pub mod identity;
pub mod inbound;
pub mod masking;
pub mod memory_budget;
pub mod policy;
pub mod proxy;
pub mod reserved_ports;
pub mod state_dir;
pub mod store;
pub mod tls;
pub mod units;
pub mod webhook;
