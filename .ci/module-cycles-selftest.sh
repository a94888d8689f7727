#!/usr/bin/env bash
# The circle check must fail on a planted circle: two modules of a scratch crate that import
# each other (and pass once the circle is gone).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/b"
printf 'pub mod a;\npub mod b;\n' > "$tmp/src/lib.rs"
printf 'use crate::b::B;\npub struct A(pub B);\n' > "$tmp/src/a.rs"
printf 'pub struct B;\npub fn f() -> Option<crate::a::A> { None }\n' > "$tmp/src/b/mod.rs"
if python3 "$here/module-cycles.py" "$tmp" >/dev/null; then
  echo "module-cycles.py passed a planted circle (a <-> b)" >&2
  exit 1
fi
printf 'pub struct B;\n' > "$tmp/src/b/mod.rs"
python3 "$here/module-cycles.py" "$tmp" >/dev/null
echo "module-cycles.py fails on a planted circle and passes without it"
