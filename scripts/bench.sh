#!/usr/bin/env bash
# The benchmarks, on a fresh machine, as root: installs the toolchain, then
# `cargo xtask bench` (it installs nginx, wrk and mitmproxy itself when
# missing) and writes BENCHMARKS.md. Pass --quick for the short run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo xtask bench "$@"
