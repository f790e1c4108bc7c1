//! Builds `interceptor-ebpf` for bpfel-unknown-none.
//!
//! rustup's toolchains on our machines ship no rust-src, so `core` is built
//! with Debian's rustc (rustc-web, LLVM 22) and its library source
//! (rust-web-src), linked by bpf-linker built against the same LLVM.
use crate::{run_cmd, workspace_root};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const APT_PACKAGES: &str = "rustc-web cargo-web rust-web-src llvm-22-dev libpolly-22-dev";
const BPF_LINKER_INSTALL: &str = "LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
     cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22";

/// Where `interceptor/build.rs` looks for the object.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/bpf/interceptor.bpf.o")
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
        .join("bin")
}

/// Says exactly what is missing and how to install it.
fn check_toolchain() -> Result<()> {
    let mut missing = Vec::new();
    let src_ok = Command::new(DEBIAN_RUSTC)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        });
    match src_ok {
        None => missing.push(format!("Debian's rustc at {DEBIAN_RUSTC}")),
        Some(false) => missing.push("Debian's Rust library source (rust-web-src)".to_string()),
        Some(true) => {}
    }
    if !Path::new(DEBIAN_CARGO).is_file() {
        missing.push(format!("Debian's cargo at {DEBIAN_CARGO}"));
    }
    let linker = cargo_bin_dir().join("bpf-linker");
    if !linker.is_file() && crate::which("bpf-linker").is_none() {
        missing.push("bpf-linker".to_string());
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "cannot build the eBPF programs: missing {}.\n\
         Install with:\n  apt-get install -y {APT_PACKAGES}\n  {BPF_LINKER_INSTALL}\n\
         (`bash .ci/run` does both.)",
        missing.join(", ")
    )
}

pub fn run() -> Result<()> {
    check_toolchain()?;
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    let path = format!(
        "{}:{}",
        cargo_bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(root.join("interceptor-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("PATH", path)
        // rustup's proxies would otherwise pick its own toolchain.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC_WRAPPER");
    run_cmd(&mut cmd)?;
    let built = target_dir.join("bpfel-unknown-none/release/interceptor-ebpf");
    let out = object_path();
    std::fs::create_dir_all(out.parent().unwrap())?;
    // Copy only when changed, so the interceptor build is not redone needlessly.
    let new = std::fs::read(&built)?;
    if std::fs::read(&out).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(&out, &new)?;
    }
    eprintln!("eBPF object: {} ({} bytes)", out.display(), new.len());
    Ok(())
}
