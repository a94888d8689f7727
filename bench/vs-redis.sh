#!/usr/bin/env bash
# chd next to Redis, same client, same machine, same run.
#
# Starts three servers, each on its own temporary directory and Unix socket:
#   redis-mem     redis-server with no persistence at all
#   redis-always  redis-server with `appendonly yes`, `appendfsync always` (fsync before reply)
#   chd           this repo's release chd with its defaults (4 nodes, R=3, W=2), on its RESP socket
# prefills each with the same keys (so GETs hit), then runs the same redis-benchmark commands
# against all three in interleaved rounds (a round runs every test on every server, so a slow
# minute of the disk hits all three alike) and prints one table: median throughput over the
# rounds, median p50 and p99 latency, and the ratios that issue 13 targets: chd / redis-always
# for SET, chd / redis-mem for GET. The figures are never asserted: absolute rates drift.
# Last, `chctl bench` (next to the chd executable) measures the disk under it: one fdatasync,
# and 2 of 3 at once, which is what every chd write waits for and so a floor for SET -c 1.
#
# Usage: bench/vs-redis.sh [--seconds S] [--rounds N] [--keys K] [--chd PATH] [--tests LIST]
#                          [--engines LIST] [--chd-args ARGS]
#   --seconds S   time budget of the measured runs, all rounds and servers together (default 240);
#                 each redis-benchmark run gets about S / (rounds * 3 * tests) seconds, its -n
#                 sized from a short calibration pass
#   --rounds N    interleaved rounds (default 3, at least 1)
#   --keys K      key space for -r and the prefill (default 1000000)
#   --chd PATH    chd executable (default target/release/chd of this repo)
#   --tests LIST  comma-separated subset of the test names below (default all)
#   --engines LIST  one chd per storage engine named (chd's --engine), e.g. append,sled: the
#                 first is the column "chd" (and the ratios), the others "chd-ENGINE" (default:
#                 one chd with its default engine)
#   --chd-args ARGS more arguments for every chd, split on spaces (e.g. --read-cache-mib 0, so
#                 that every GET reaches the workers)
# CI runs `bench/vs-redis.sh --seconds 20 --keys 10000` so that the script keeps working.
#
# It installs nothing. Needs: redis-server (Debian: apt-get install redis-server),
# redis-benchmark and redis-cli 7 (apt-get install redis-tools; 7 prints percentiles with
# --csv), and a release chd (cargo build --release -p chd).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=240 rounds=3 keys=1000000 chd="$repo/target/release/chd" only="" engines="" chd_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --chd) chd=$2; shift 2 ;;
    --tests) only=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --chd-args) chd_args=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "vs-redis: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$rounds" -ge 1 ] || { echo "vs-redis: --rounds must be at least 1" >&2; exit 2; }

missing=()
command -v redis-server >/dev/null || missing+=("redis-server (apt-get install redis-server)")
command -v redis-benchmark >/dev/null || missing+=("redis-benchmark (apt-get install redis-tools)")
command -v redis-cli >/dev/null || missing+=("redis-cli (apt-get install redis-tools)")
[ -x "$chd" ] || missing+=("$chd (cargo build --release -p chd)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'vs-redis: missing %s\n' "${missing[@]}" >&2
  exit 3
fi
major=$(redis-benchmark --version | sed -n 's/^redis-benchmark \([0-9]*\)\..*/\1/p')
if [ "${major:-0}" -lt 7 ]; then
  echo "vs-redis: redis-benchmark ${major:-?} prints no latency percentiles with --csv; install redis-tools 7" >&2
  exit 3
fi

# Short paths: a Unix socket's path must fit in 108 bytes.
tmp=$(mktemp -d /tmp/vs-redis.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    # chd stops its workers on SIGTERM; give it a moment, then make sure.
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

servers=(redis-mem redis-always)
declare -A sock
start_redis() { # name, extra args...
  local name=$1; shift
  mkdir -p "$tmp/$name"
  sock[$name]=$tmp/$name/redis.sock
  redis-server --port 0 --unixsocket "${sock[$name]}" --unixsocketperm 700 --dir "$tmp/$name" \
    --save '' --daemonize no --logfile "$tmp/$name/log" "$@" &
  pids+=($!)
}
start_redis redis-mem --appendonly no
start_redis redis-always --appendonly yes --appendfsync always
declare -A chd_pid
start_chd() { # name, engine (empty: chd's default)
  local name=$1
  mkdir -p "$tmp/$name"
  sock[$name]=$tmp/$name/chd-resp.sock
  # $chd_args is split on spaces on purpose.
  # shellcheck disable=SC2086
  "$chd" ${2:+--engine "$2"} --data-dir "$tmp/$name/data" --socket "$tmp/$name/chd.sock" --log-level warn $chd_args >"$tmp/$name/log" 2>&1 &
  pids+=($!)
  chd_pid[$name]=$!
  servers+=("$name")
}
if [ -z "$engines" ]; then
  start_chd chd ""
else
  first=1
  for e in ${engines//,/ }; do
    if [ $first = 1 ]; then start_chd chd "$e"; first=0; else start_chd "chd-$e" "$e"; fi
  done
fi

for s in "${servers[@]}"; do
  for _ in $(seq 300); do
    [ "$(redis-cli -s "${sock[$s]}" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  if [ "$(redis-cli -s "${sock[$s]}" ping 2>/dev/null)" != PONG ]; then
    echo "vs-redis: $s did not answer on ${sock[$s]} within 30 s; its log:" >&2
    cat "$tmp/$s/log" >&2 || true
    exit 4
  fi
done

# name|redis-benchmark arguments. Random keys over the key space, 100-byte values.
all_tests=(
  "SET c1|-t set -c 1"
  "SET c16|-t set -c 16"
  "SET c50|-t set -c 50"
  "SET c50 P16|-t set -c 50 -P 16"
  "GET c1|-t get -c 1"
  "GET c16|-t get -c 16"
  "GET c50|-t get -c 50"
)
tests=()
for t in "${all_tests[@]}"; do
  name=${t%%|*}
  if [ -z "$only" ] || [[ ",$only," == *",$name,"* ]]; then tests+=("$t"); fi
done
[ ${#tests[@]} -gt 0 ] || { echo "vs-redis: --tests matched nothing" >&2; exit 2; }

# Prefill: SET key:%012d (the names redis-benchmark's __rand_int__ gives with -r) for every key
# of the key space, pipelined, so that every GET hits.
echo "vs-redis: prefilling $keys keys of 100 bytes into each server" >&2
value=$(printf 'v%.0s' $(seq 100))
awk -v n="$keys" -v v="$value" 'BEGIN { for (i = 0; i < n; i++) printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$100\r\n%s\r\n", i, v }' \
  >"$tmp/prefill.resp"
for s in "${servers[@]}"; do
  t0=$(date +%s.%N)
  redis-cli -s "${sock[$s]}" --pipe <"$tmp/prefill.resp" >"$tmp/$s/prefill.log" 2>&1 ||
    { echo "vs-redis: prefill of $s failed:" >&2; cat "$tmp/$s/prefill.log" >&2; exit 4; }
  echo "vs-redis:   $s: $(awk -v t0="$t0" -v t1="$(date +%s.%N)" -v n="$keys" 'BEGIN { printf "%.1f s, %.0f keys/s", t1 - t0, n / (t1 - t0) }')" >&2
done
rm -f "$tmp/prefill.resp"

# One redis-benchmark run: prints "rps p50 p99" (latencies in ms).
run() { # server, n, args...
  local s=$1 n=$2; shift 2
  # shellcheck disable=SC2068
  redis-benchmark -s "${sock[$s]}" -n "$n" -r "$keys" -d 100 --csv $@ 2>/dev/null |
    awk -F'"' 'NR > 1 && NF > 1 { print $4, $10, $14; exit }'
}

# Calibration: a short run of each test on each server gives its rate, from which -n is sized
# so that one run takes about its share of --seconds.
share=$(awk -v s="$seconds" -v r="$rounds" -v t="${#tests[@]}" -v n="${#servers[@]}" 'BEGIN { printf "%.3f", s / (r * n * t) }')
declare -A nreq
echo "vs-redis: calibrating (about $share s per run, $rounds rounds)" >&2
for t in "${tests[@]}"; do
  name=${t%%|*} args=${t#*|}
  for s in "${servers[@]}"; do
    probe=500
    [[ $args == *-P* ]] && probe=8000
    read -r rps _ <<<"$(run "$s" "$probe" "$args")"
    [ -n "${rps:-}" ] || { echo "vs-redis: redis-benchmark printed nothing for $s $name" >&2; exit 4; }
    nreq[$s/$name]=$(awk -v r="$rps" -v s="$share" 'BEGIN { n = int(r * s); if (n < 200) n = 200; print n }')
  done
done

declare -A res
for round in $(seq "$rounds"); do
  echo "vs-redis: round $round of $rounds" >&2
  for t in "${tests[@]}"; do
    name=${t%%|*} args=${t#*|}
    for s in "${servers[@]}"; do
      res[$s/$name/$round]=$(run "$s" "${nreq[$s/$name]}" "$args")
    done
  done
done

# chd's footprint with the key space stored (R copies): resident memory of chd and its workers
# and bytes of its data dir.
declare -A rss_kib disk_kib
for s in "${!chd_pid[@]}"; do
  rss_kib[$s]=$(ps -o rss= --pid "${chd_pid[$s]}" --ppid "${chd_pid[$s]}" | awk '{ s += $1 } END { print s }')
  disk_kib[$s]=$(du -sk "$tmp/$s/data" | cut -f1)
done

# The floor of one client's durable write on this disk, measured by `chctl bench` (next to the
# chd executable) after the rounds: one fdatasync alone, and R files fdatasynced at once until
# W are done, which is what every chd write waits for.
chctl="$(dirname "$chd")/chctl"
floor=""
if [ -x "$chctl" ]; then
  floor=$("$chctl" --socket "$tmp/chd/chd.sock" --json bench --writes-only --seconds 2 2>/dev/null | tail -1 || true)
fi
json_num() { echo "$floor" | grep -o "\"$1\":[0-9.e+-]*" | head -1 | cut -d: -f2 || true; }

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { # server, test, field (1 rps, 2 p50, 3 p99): the median over rounds
  local r
  for r in $(seq "$rounds"); do echo "${res[$1/$2/$r]:-}" | awk -v f="$3" '{ print $f }'; done | median
}

echo
echo "chd vs Redis: redis-benchmark over Unix sockets, -r $keys -d 100, median of $rounds interleaved rounds"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), $(redis-server --version | awk '{ print $1, $2, $3 }' | sed 's/v=//')"
echo "chd: R=3 W=2, 4 nodes${engines:+; engines $engines}${chd_args:+; $chd_args}; redis-always: appendonly yes, appendfsync always; redis-mem: no persistence"
echo
line=$(printf '%-12s' test)
for s in "${servers[@]}"; do line+=$(printf ' | %-24s' "$s rps p50 p99"); done
echo "$line | ratio"
printf -- '-%.0s' $(seq $((27 * ${#servers[@]} + 30))); echo
for t in "${tests[@]}"; do
  name=${t%%|*}
  declare -A m=()
  line=$(printf '%-12s' "$name")
  for s in "${servers[@]}"; do
    rps=$(col "$s" "$name" 1) p50=$(col "$s" "$name" 2) p99=$(col "$s" "$name" 3)
    m[$s]=$rps
    line+=$(printf ' | %8.0f %6.3f %7.3f ms' "$rps" "$p50" "$p99")
  done
  case "$name" in
    SET*) ratio=$(awk -v a="${m[chd]}" -v b="${m[redis-always]}" 'BEGIN { printf "%.2fx chd/always", a / b }') ;;
    *) ratio=$(awk -v a="${m[chd]}" -v b="${m[redis-mem]}" 'BEGIN { printf "%.2fx chd/mem", a / b }') ;;
  esac
  for s in "${servers[@]}"; do
    [[ $s == chd-* ]] || continue
    ratio+=$(awk -v a="${m[$s]}" -v b="${m[chd]}" -v s="$s" 'BEGIN { printf ", %.2fx %s/chd", a / b, s }')
  done
  echo "$line | $ratio"
done
echo
for s in "${servers[@]}"; do
  [ -n "${chd_pid[$s]:-}" ] || continue
  echo "$s with the $keys keys stored (R copies): RSS of chd and its workers $(awk -v k="${rss_kib[$s]}" 'BEGIN { printf "%.0f MiB", k / 1024 }'), data dir $(awk -v k="${disk_kib[$s]}" 'BEGIN { printf "%.0f MiB", k / 1024 }')"
done
one=$(json_num fdatasync_per_s) quorum=$(json_num quorum_fdatasync_per_s)
if [ -n "$one" ] && [ -n "$quorum" ]; then
  always=$(col redis-always "SET c1" 1)
  awk -v o="$one" -v q="$quorum" -v a="$always" 'BEGIN {
    printf "disk (chctl bench): one fdatasync %.0f/s; 2 of 3 at once %.0f/s, the floor of chd SET -c 1", o, q
    if (a + 0 > 0) printf " = %.2fx redis-always SET c1", q / a
    printf "\n" }'
else
  echo "disk: no floor measured (chctl bench needs $chctl: cargo build --release -p chctl)"
fi
