#!/usr/bin/env bash
# Runs the README's Quick start as written, as a new user would: chd started with the README's
# command (its state and sockets in a scratch $HOME and $XDG_RUNTIME_DIR), then every line of
# the "In another shell" block in one shell, each checked for the exit status the README gives
# it ("# exit status N" in its comment, else 0).
set -euo pipefail
cd "$(dirname "$0")/.."
readme=README.md
scratch=$(mktemp -d)
# The toolchain stays where it is installed; everything of chd's goes to the scratch dirs.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export HOME="$scratch/home" XDG_RUNTIME_DIR="$scratch/run" XDG_STATE_HOME="$scratch/state"
mkdir -p "$HOME" "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
unset CHD_SOCKET XDG_CONFIG_HOME

start=$(awk '/^Start chd with its defaults/{f=1} f && /^    cargo run/{sub(/^    /,""); print; exit}' "$readme")
[ -n "$start" ] || { echo "quickstart: no start command in $readme" >&2; exit 1; }
block=$(awk '/^In another shell, in the checkout:/{f=1; next} f && /^    /{sub(/^    /,""); print; next} f && NF && !/^    /{exit}' "$readme")
[ -n "$block" ] || { echo "quickstart: no command block in $readme" >&2; exit 1; }

echo "\$ $start &"
bash -c "$start" > "$scratch/chd.log" 2>&1 &
chd=$!
trap 'kill $chd 2>/dev/null; wait $chd 2>/dev/null; rm -rf "$scratch"' EXIT
# The first start compiles chd: wait for its socket as long as a build may take.
waited=0
until [ -S "$XDG_RUNTIME_DIR/chd.sock" ]; do
  kill -0 $chd 2>/dev/null || { cat "$scratch/chd.log"; echo "quickstart: chd exited" >&2; exit 1; }
  [ $waited -lt 2400 ] || { tail "$scratch/chd.log"; echo "quickstart: no socket after ${waited}s" >&2; exit 1; }
  sleep 1
  waited=$((waited + 1))
done
echo "(chd serving after ${waited}s)"

failed=0
script="$scratch/block.sh"
{
  echo 'fail=0'
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    want=0
    if [[ $line =~ exit\ status\ ([0-9]+) ]]; then want=${BASH_REMATCH[1]}; fi
    cmd=${line%%#*}
    printf 'echo %q\n' "\$ $cmd"
    printf '%s\nrc=$?\n' "$cmd"
    printf 'if [ $rc != %s ]; then echo "quickstart: exit $rc, the README says %s: %s" >&2; fail=1; fi\n' "$want" "$want" "${cmd//\"/\\\"}"
  done <<< "$block"
  echo 'exit $fail'
} > "$script"
bash "$script" > "$scratch/out.log" 2>&1 || failed=1
cat "$scratch/out.log" | head -c 20000 | tr -c '[:print:]\n' '.'
echo
if [ $failed != 0 ]; then
  echo "quickstart: FAILED; chd's log:" >&2
  tail -30 "$scratch/chd.log" >&2
  exit 1
fi
echo "quickstart: every command of the README's Quick start behaved as written"
