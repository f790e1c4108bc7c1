//! interceptor: a transparent access gateway for AI agent skills.
//!
//! The daemon and the commands live here; `main.rs` only calls
//! [`cli::main`]. Leaf-first, every edge pointing down:
//! - model and leaves: `units`, `metrics`, `cgroup`, `identity` (the
//!   `Workload`), `audit` (the log), `masking`, `approval`;
//! - `policy` (over masking, identity, approval) and `store` (the index over
//!   the audit log; records decisions);
//! - `proxy`, the data path (accept → attribute → decide → inspect →
//!   inject → forward → mask → record), and `admin`, the control API on an
//!   `AdminState` (store, counters, approvals), neither knowing the other;
//! - `daemon` wires them; `cli` is the command line.
pub mod admin;

/// An error of any kind that crosses tasks (body and transport errors).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reserved_ports;
pub mod state_dir;
pub mod store;
pub mod tls;
pub mod units;
pub mod webhook;
