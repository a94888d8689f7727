#!/usr/bin/env bash
# Differential run of chd against Debian's redis-server: builds chd and chd-difftest (release),
# starts a private redis-server (Unix socket in a temp dir, no persistence, port 0) and a private
# chd (temp data dir), compares at least 1 M commands, prints commands/s and the result, stops
# both. Extra arguments go to chd-difftest (--seed N, --commands N, --no-huge, ...).
# Exit status: 0 no unexplained divergence, 1 divergence (printed with its seed and a minimal
# sequence), 2 the run itself failed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt install redis-server)" >&2; exit 2; }
cargo build --release -q -p chd --bin chd -p chd-difftest --bin chd-difftest
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
exec "$target/release/chd-difftest" --chd "$target/release/chd" --commands 1000000 "$@"
