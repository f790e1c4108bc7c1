//! Developer tasks: `cargo xtask build-ebpf | deb | demo | vm-test | bench`.
mod bench;
mod bench_https;
mod build_ebpf;
mod deb;
mod demo;
mod lab;
mod vm_test;

use anyhow::{Result, bail};
use std::path::PathBuf;

fn usage() -> &'static str {
    "usage: cargo xtask <command>\n\n\
     commands:\n  \
     build-ebpf        build the kernel programs into target/bpf/interceptor.bpf.o\n  \
     deb               build the Debian package into target/debian/\n  \
     demo              build everything and run the end-to-end demo (root)\n  \
     vm-test           the package and the end-to-end suite in a booted Debian 12 VM (root)
       bench [--quick]   proxy vs direct (TCP) and vs nginx/mitmproxy (HTTPS), writes BENCHMARKS.md (root)\n"
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{}", usage());
        std::process::exit(2);
    };
    match cmd.as_str() {
        "build-ebpf" => build_ebpf::run(),
        "deb" => deb::run().map(|_| ()),
        "demo" => demo::run(),
        "vm-test" => vm_test::run(),
        "bench" => bench::run(&args[1..]),
        // Internal: the benchmark's client, started inside or outside the cgroup.
        "bench-client" => bench::client(&args[1..]),
        "-h" | "--help" | "help" => {
            print!("{}", usage());
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{}", usage()),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command, failing with its name when it does not succeed.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start {cmd:?}: {e}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Where `tool` is: on PATH, or in the sbin and bin directories a non-login
/// PATH may lack (nginx and mkfs.ext4 live in /usr/sbin).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
