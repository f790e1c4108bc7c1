#!/usr/bin/env bash
# The main job, on a fresh machine, as root: installs the toolchain, builds
# the daemon, and runs the demo (daemon + a skill in a cgroup + a local upstream).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo xtask demo
