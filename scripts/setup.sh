#!/usr/bin/env bash
# Installs what building and testing interceptor needs on a fresh Debian 12
# machine (run as root). Idempotent: a second run installs nothing.
#
# rustup's toolchains here ship no rust-src, so the eBPF crate is built with
# Debian's rustc (rustc-web, LLVM 22) and its library source (rust-web-src),
# linked by bpf-linker built against the same LLVM.
set -euo pipefail

APT_PACKAGES=(rustc-web cargo-web rust-web-src llvm-22-dev libpolly-22-dev
              curl python3 iproute2 ca-certificates systemd util-linux binutils dpkg
              nginx)
BPF_LINKER_VERSION=0.13.0
# The dependency gate in scripts/test.sh (licenses, bans, sources).
CARGO_DENY_VERSION=0.20.2

if [ "$(id -u)" != 0 ]; then
    echo "scripts/setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# Real HTTP clients the end-to-end tests run inside the workload cgroup,
# (websockets: a real WebSocket client), and Flask/werkzeug as an upstream
# that normalises paths its own way.
if ! python3 -c "import requests, httpx, flask, websockets, h2, anthropic, openai" 2>/dev/null; then
    echo "==> pip install requests httpx flask websockets h2 anthropic openai"
    python3 -m pip install -q requests httpx flask websockets h2 anthropic openai
fi
if ! command -v node >/dev/null; then
    echo "==> apt-get install nodejs"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs
fi
# Node's openai SDK, for the token-stream masking test.
if ! command -v npm >/dev/null; then
    echo "==> apt-get install npm"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm
fi
if [ ! -d "$(npm root -g 2>/dev/null)/openai" ]; then
    echo "==> npm install -g openai@4"
    npm install -g --silent openai@4
fi

# The VM suite (cargo xtask vm-test): qemu and mmdebstrap from Debian 12.
# Some machines come with qemu-utils 10 from backports, which breaks Debian
# 12's qemu-system-x86 7.2: install the qemu-utils of the same version,
# replacing it (the suite itself needs neither; apt refuses the mix).
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v mmdebstrap >/dev/null \
        || ! command -v mkfs.ext4 >/dev/null; then
    apt-get update -q
    qemu=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
    echo "==> apt-get install qemu-system-x86 qemu-utils=$qemu mmdebstrap e2fsprogs"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        --allow-downgrades qemu-system-x86 "qemu-utils=$qemu" mmdebstrap e2fsprogs
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
    echo "scripts/setup.sh: no cargo on PATH; install Rust with rustup (stable >= 1.95)" >&2
    exit 1
fi
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    echo "==> cargo install bpf-linker $BPF_LINKER_VERSION (about 2 minutes)"
    LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
        cargo install bpf-linker --version "$BPF_LINKER_VERSION" \
        --no-default-features --features llvm-22
fi
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
    echo "==> cargo install cargo-deny $CARGO_DENY_VERSION (about 3 minutes)"
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi
echo "==> toolchain ready: $(cargo --version), $(/usr/bin/rustc --version) for eBPF, $(bpf-linker --version)"
