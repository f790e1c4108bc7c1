//! Locates the eBPF object built by `cargo xtask build-ebpf` so `main.rs` can
//! embed it: the result is one self-contained binary.
use std::path::PathBuf;

fn main() {
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
