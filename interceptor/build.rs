//! Locates the eBPF object built by `cargo xtask build-ebpf` so `main.rs` can
//! embed it: the result is one self-contained binary.
use std::path::PathBuf;

fn main() {
    git_commit();
    println!("cargo:rerun-if-env-changed=INTERCEPTOR_BPF_OBJECT");
    let path = match std::env::var_os("INTERCEPTOR_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/bpf/interceptor.bpf.o")
        }
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        panic!(
            "\n\nthe eBPF object {} does not exist.\n\
             Build it first with `cargo xtask build-ebpf` (it also tells which toolchain \
             packages are missing), or point INTERCEPTOR_BPF_OBJECT at a built object.\n",
            path.display()
        );
    }
    let path = path.canonicalize().unwrap();
    println!(
        "cargo:rustc-env=INTERCEPTOR_BPF_OBJECT_PATH={}",
        path.display()
    );
}

/// The commit the binary is built from, for `--version`: what an operator
/// quotes in a bug report. "unknown" outside a git checkout (a source
/// tarball).
fn git_commit() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&manifest)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=INTERCEPTOR_GIT_COMMIT={commit}");
    // A new commit moves HEAD or the branch it names.
    let git = manifest.join("../.git");
    for watched in ["HEAD", "refs/heads"] {
        if git.join(watched).exists() {
            println!("cargo:rerun-if-changed={}", git.join(watched).display());
        }
    }
}
