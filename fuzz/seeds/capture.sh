#!/usr/bin/env bash
# Regenerates the seed corpora of fuzz/corpus/ from real traffic: starts a chd (target/debug,
# built first), puts socat between it and real clients (chctl; redis-cli, redis-benchmark and
# redis-py on the RESP socket) and records what each side sent, one connection per seed file.
# Worker-link seeds come from the chd library's own encoders (daemon/examples/fuzz_seeds.rs).
#
#   fuzz/seeds/capture.sh        (needs socat, redis-tools and python3-redis; run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p chd -p chctl --bins
cargo run -q -p chd --example fuzz_seeds -- fuzz/corpus
bin=$PWD/target/debug
out=$PWD/fuzz/corpus
mkdir -p "$out"/{resp_request,chd_frame,client_reply,config}

dir=$(mktemp -d /tmp/chd-seeds.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
"$bin/chd" --data-dir "$dir/data" --socket "$dir/chd.sock" --resp-socket "$dir/resp.sock" --nodes 3 \
  --startup-repair false --log-level warn 2>"$dir/chd.log" &
for _ in $(seq 100); do [ -S "$dir/resp.sock" ] && break; sleep 0.1; done

# One connection through socat: $1 the socket to reach, $2 the seed name, the rest the client
# command (with @SOCK@ for the proxy's socket). Writes what the client sent (c2s) and what chd
# answered (s2c).
proxy() {
  local target=$1 name=$2; shift 2
  rm -f "$dir/p.sock" "$dir/c2s" "$dir/s2c"
  socat -r "$dir/c2s" -R "$dir/s2c" UNIX-LISTEN:"$dir/p.sock" UNIX-CONNECT:"$target" &
  local pid=$!
  for _ in $(seq 50); do [ -S "$dir/p.sock" ] && break; sleep 0.05; done
  timeout 20 "${@//@SOCK@/$dir/p.sock}" >/dev/null 2>&1 </dev/null || true
  # socat ends with the connection; one the client never opened is not waited for.
  for _ in $(seq 40); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  touch "$dir/c2s" "$dir/s2c"
}

# chctl <-> chd: the client's frames seed chd_frame; chd's answers (after the id byte the
# client_reply target reads first: chctl's first request has id 1) seed client_reply.
n=0
chctl_seed() {
  proxy "$dir/chd.sock" "chctl-$n" "$bin/chctl" --socket @SOCK@ "$@"
  cp "$dir/c2s" "$out/chd_frame/chctl-$n"
  { printf '\001'; cat "$dir/s2c"; } >"$out/client_reply/chctl-$n"
  n=$((n + 1))
}
chctl_seed set key1 value1
chctl_seed set --hex 6b01ff ''
chctl_seed get key1
chctl_seed get missing
chctl_seed del key1
chctl_seed exists key1
chctl_seed status
chctl_seed ring
chctl_seed ring --plan add --count 1
chctl_seed stats
chctl_seed keys
chctl_seed repair
chctl_seed quarantine list
chctl_seed node restart 9
chctl_seed dump

# Redis clients <-> chd's RESP endpoint. The two bytes before the stream are the
# resp_request target's control bytes: read sizes, and whether the first requests come
# before AUTH.
r=0
resp_seed() {
  proxy "$dir/resp.sock" "resp-$r" "$@"
  { printf '\000\000'; cat "$dir/c2s"; } >"$out/resp_request/resp-$r"
  r=$((r + 1))
}
resp_seed redis-cli -s @SOCK@ ping
resp_seed redis-cli -s @SOCK@ set foo bar
resp_seed redis-cli -s @SOCK@ mset a 1 b 2 c "x y"
resp_seed redis-cli -s @SOCK@ -3 hello 3
resp_seed redis-cli -s @SOCK@ incrby counter -5
resp_seed redis-cli -s @SOCK@ incrbyfloat f 1.5e3
resp_seed redis-cli -s @SOCK@ getrange foo -2 -1
resp_seed redis-cli -s @SOCK@ scan 0 match 'k*[a-c]?' count 10
resp_seed redis-cli -s @SOCK@ keys '*'
resp_seed redis-cli -s @SOCK@ config get '*'
resp_seed redis-cli -s @SOCK@ command info get set
resp_seed redis-cli -s @SOCK@ client setname fuzz
resp_seed redis-cli -s @SOCK@ auth secret
resp_seed redis-cli -s @SOCK@ info
resp_seed redis-benchmark -s @SOCK@ -n 4 -c 1 -t set,get,incr,mset -q
resp_seed redis-benchmark -s @SOCK@ -n 8 -c 1 -P 4 -t set,get -d 100 -q
resp_seed python3 -c 'import redis, sys
r = redis.Redis(unix_socket_path=sys.argv[1], protocol=3)
r.set(b"bin\x00\xff", b"\r\n\x00"); r.get(b"bin\x00\xff"); r.mget(["a", "b"]); r.delete("a", "b")
p = r.pipeline(transaction=False); p.incr("n"); p.append("s", "x"); p.strlen("s"); p.execute()' @SOCK@
# Inline commands, as telnet or nc send them.
resp_seed sh -c 'printf "PING\r\nset \"a b\" '"'"'c\\'"'"'d'"'"' \"\\x41\\n\"\r\nget a\n\r\nQUIT\r\n" | socat - UNIX-CONNECT:@SOCK@'
cp "$out/resp_request/resp-12" "$out/resp_request/resp-auth"
printf '\201' | dd of="$out/resp_request/resp-auth" bs=1 seek=1 conv=notrunc 2>/dev/null

# The config file as shipped, and what check-config renders for it.
cp systemd/chd.toml "$out/config/shipped.toml"
"$bin/chd" --config systemd/chd.toml --data-dir "$dir/data" --socket "$dir/chd.sock" --allowed-group root \
  check-config 2>/dev/null | sed 's/^allowed_group.*/allowed_group = "root"/' >"$out/config/rendered.toml" || true
for f in "$out"/config/*.toml; do { printf '\003\002\004\000'; cat "$f"; } >"${f%.toml}"; rm "$f"; done
echo "seeds: $(find "$out" -type f | wc -l) files, $(du -sh "$out" | cut -f1)"
