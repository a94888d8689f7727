#!/bin/bash
# Real-systemd test of chd.service, for hosts whose PID 1 is NOT systemd (CI, containers).
#
# Boots Debian 12 with systemd as PID 1 inside systemd-nspawn, installs chd, chctl, the unit,
# the sysusers entry and the example config into that root, and checks that:
#   - the unit passes `systemd-analyze verify` with no output at all, and
#     `systemd-analyze security --offline=yes` rates it at most $MAX_EXPOSURE;
#   - chd reaches `active` under Type=notify (READY=1 arrived) as user chd;
#   - a member of group chd (alice) can set and get keys; a stranger (mallory) gets
#     "permission denied";
#   - kill -9 of the main PID: systemd restarts chd and every key reads back;
#   - SIGSTOP of the main PID: WatchdogSec= trips, chd restarts, every key reads back;
#   - `systemctl stop`: unit ends inactive with Result=success, no chd process is left,
#     the socket is gone; it starts again with every key;
#   - after a poweroff and a new boot of the container every key reads back, and a healthy
#     chd is not restarted by the watchdog.
#
#
# With CHD_DEB=path/chd_*.deb (from packaging/build-deb.sh) the same checks run against the
# installed Debian package instead: the .deb is installed with apt-get inside the booted
# container, which must create user and group chd (sysusers) and /var/lib/chd (tmpfiles),
# install the unit in /lib/systemd/system, the binaries in /usr/bin, /etc/chd/chd.toml as a
# conffile, man pages and completions, and enable and start nothing; then
# `systemctl enable --now chd` starts it and every check above runs; last, `apt-get remove`
# stops chd and keeps its data.
#
# Usage (as root, from anywhere):
#   CHD_BIN=path/chd CHCTL_BIN=path/chctl bash systemd/test-nspawn.sh
#   CHD_DEB=target/debian/chd_0.1.0-1_amd64.deb bash systemd/test-nspawn.sh
# CHD_BIN/CHCTL_BIN default to target/release/{chd,chctl} under the repository root (the
# parent of this script's folder). The Debian root is cached in ${WORK:-/var/tmp/chd-nspawn}/root
# and reused by later runs (delete it to rebuild); chd's state in it is wiped on every run.
# Needs: root, apt (installs systemd-container debootstrap bc if missing), a Debian mirror.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
WORK=${WORK:-/var/tmp/chd-nspawn}
ROOT=${ROOT:-$WORK/root}
MACHINE=${MACHINE:-chdtest}
UNIT=chd
NKEYS=${NKEYS:-50}
MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
SOCK=/run/chd/chd.sock
CG=chd-nspawn-$MACHINE
ROOT_INCLUDE=systemd,dbus     # minbase already has util-linux (runuser), passwd (useradd), libgcc-s1
abspath() { case "$1" in /*) echo "$1";; *) echo "$PWD/$1";; esac; }
CHD_BIN=$(abspath "${CHD_BIN:-$REPO/target/release/chd}")
CHCTL_BIN=$(abspath "${CHCTL_BIN:-$REPO/target/release/chctl}")
CHD_DEB=${CHD_DEB:+$(abspath "$CHD_DEB")}
if [ -n "$CHD_DEB" ]; then
  BINDIR=/usr/bin; UNIT_FILE=/lib/systemd/system/$UNIT.service; MODE="the Debian package"
else
  BINDIR=/usr/local/bin; UNIT_FILE=/etc/systemd/system/$UNIT.service; MODE="loose files"
fi

T0=$(date +%s.%N)
ts() { date +%s.%N; }
el() { echo "$(ts) - $1" | bc; }
step() { STEP_T=$(ts); echo "== $*"; }
done_() { printf '   (%.1fs)\n' "$(el "$STEP_T")"; }
SUMMARY=()
ok() { SUMMARY+=("$*"); }
NSPAWN_PID=
LEADER=
die() {
  echo "FAIL: $*" >&2
  if [ -n "$LEADER" ] && [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    echo "--- systemctl status $UNIT" >&2
    E systemctl status "$UNIT" --no-pager -l >&2 2>&1 || true
    echo "--- journalctl -u $UNIT (last 40 lines)" >&2
    E journalctl -u "$UNIT" --no-pager -o short-monotonic 2>&1 | tail -40 >&2 || true
  fi
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root"
if [ -n "$CHD_DEB" ]; then
  [ -f "$CHD_DEB" ] || die "CHD_DEB=$CHD_DEB is not a file (build with: bash packaging/build-deb.sh)"
else
  [ -x "$CHD_BIN" ] || die "CHD_BIN=$CHD_BIN is not an executable (build with: cargo build --release -p chd -p chctl)"
  [ -x "$CHCTL_BIN" ] || die "CHCTL_BIN=$CHCTL_BIN is not an executable"
fi
for f in chd.service chd.sysusers chd.toml; do [ -f "$HERE/$f" ] || die "missing $HERE/$f"; done
mkdir -p "$WORK"

step "host tools: systemd-container debootstrap bc"
export DEBIAN_FRONTEND=noninteractive
need=0
for c in systemd-nspawn systemd-analyze debootstrap bc nsenter chroot; do command -v "$c" >/dev/null || need=1; done
if [ "$need" = 1 ]; then
  apt-get install -y -qq systemd-container debootstrap bc util-linux >/dev/null 2>&1 || {
    apt-get update -qq; apt-get install -y -qq systemd-container debootstrap bc util-linux >/dev/null; }
fi
done_

if [ ! -x "$ROOT/usr/lib/systemd/systemd" ] || [ "$(cat "$ROOT/.chd-nspawn-include" 2>/dev/null)" != "$ROOT_INCLUDE" ]; then
  step "debootstrap bookworm minbase + $ROOT_INCLUDE into $ROOT"
  MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  rm -rf "$ROOT.new" "$ROOT"
  debootstrap --variant=minbase --include="$ROOT_INCLUDE" bookworm "$ROOT.new" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; die "debootstrap (log: $WORK/debootstrap.log)"; }
  echo "$ROOT_INCLUDE" > "$ROOT.new/.chd-nspawn-include"
  mv "$ROOT.new" "$ROOT"          # only a complete root is ever reused
  done_
else
  echo "== reusing Debian root $ROOT"
fi
for t in runuser useradd usermod; do
  [ -x "$ROOT/usr/sbin/$t" ] || [ -x "$ROOT/usr/bin/$t" ] || [ -x "$ROOT/sbin/$t" ] || die "$t missing in $ROOT"
done

# The root is reused: first remove what an earlier run in either mode left in it.
if chroot "$ROOT" dpkg-query -W chd >/dev/null 2>&1; then chroot "$ROOT" dpkg --purge chd >/dev/null; fi
rm -f "$ROOT"/usr/local/bin/{chd,chctl} "$ROOT/etc/systemd/system/$UNIT.service" \
      "$ROOT/etc/systemd/system/multi-user.target.wants/$UNIT.service" "$ROOT/usr/lib/sysusers.d/chd.conf" \
      "$ROOT/etc/chd/chd.toml" "$ROOT/var/tmp/chd.deb"
rm -rf "$ROOT/var/lib/chd" "$ROOT/var/lib/private/chd" "$ROOT/run/chd"   # fresh state every run
rm -rf "$ROOT/var/log/journal/"* "$ROOT/etc/systemd/system/chd.service.d"  # journal of this run only
echo "$MACHINE" > "$ROOT/etc/hostname"
grep -q '^alice:' "$ROOT/etc/passwd" || chroot "$ROOT" useradd -m -s /bin/sh alice
grep -q '^mallory:' "$ROOT/etc/passwd" || chroot "$ROOT" useradd -m -s /bin/sh mallory
if [ -n "$CHD_DEB" ]; then
  step "copy the .deb into the root; no user chd until the package makes it"
  cp "$CHD_DEB" "$ROOT/var/tmp/chd.deb"
  chroot "$ROOT" userdel chd >/dev/null 2>&1 || true
  chroot "$ROOT" groupdel chd >/dev/null 2>&1 || true
  ! grep -q '^chd:' "$ROOT/etc/passwd" "$ROOT/etc/group" || die "could not remove user/group chd of an earlier run"
  done_
else
step "install chd, chctl, unit, sysusers, config into the root; users alice (in chd) and mallory"
install -D -m755 "$CHD_BIN" "$ROOT/usr/local/bin/chd"
install -D -m755 "$CHCTL_BIN" "$ROOT/usr/local/bin/chctl"
install -D -m644 "$HERE/chd.service" "$ROOT/etc/systemd/system/$UNIT.service"
install -D -m644 "$HERE/chd.sysusers" "$ROOT/usr/lib/sysusers.d/chd.conf"
install -D -m644 "$HERE/chd.toml" "$ROOT/etc/chd/chd.toml"
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sfn "/etc/systemd/system/$UNIT.service" "$ROOT/etc/systemd/system/multi-user.target.wants/$UNIT.service"
for b in chd chctl; do                     # every shared library must exist in the root
  libs=$(chroot "$ROOT" ldd "/usr/local/bin/$b" 2>&1 || true)
  ! grep -q 'not found' <<<"$libs" || die "$b needs libraries missing in the root (add to ROOT_INCLUDE):
$libs"
done
# Create user/group chd as a package would, so alice can join group chd before boot.
if command -v systemd-sysusers >/dev/null; then
  systemd-sysusers --root="$ROOT" "$ROOT/usr/lib/sysusers.d/chd.conf"
else
  chroot "$ROOT" systemd-sysusers /usr/lib/sysusers.d/chd.conf
fi
grep -q '^chd:' "$ROOT/etc/passwd" && grep -q '^chd:' "$ROOT/etc/group" || die "sysusers did not create user+group chd"
chroot "$ROOT" usermod -aG chd alice
chroot "$ROOT" gpasswd -d mallory chd >/dev/null 2>&1 || true
done_
fi

static_checks() {
step "static checks on the host: systemd-analyze verify (any output fails) + security"
out=$(systemd-analyze --root="$ROOT" verify "$UNIT.service" 2>&1) || die "verify: $out"
[ -z "$out" ] || die "verify printed warnings: $out"
sec=$(systemd-analyze security --offline=yes --root="$ROOT" "$UNIT.service" 2>&1) || die "security: $sec"
EXPOSURE=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$sec")
[ -n "$EXPOSURE" ] || die "no exposure figure in: $sec"
echo "   systemd-analyze security --offline=yes: overall exposure $EXPOSURE (limit $MAX_EXPOSURE)"
grep -E '[0-9]\.[0-9] *$' <<<"$sec" | grep -v 'Overall' | sed 's/  */ /g; s/^/     /' || true
[ "$(echo "$EXPOSURE <= $MAX_EXPOSURE" | bc)" = 1 ] || die "exposure $EXPOSURE > $MAX_EXPOSURE"
ok "unit: systemd-analyze verify clean; security exposure $EXPOSURE (<= $MAX_EXPOSURE)"
done_
}
[ -n "$CHD_DEB" ] || static_checks

# nspawn without a systemd PID 1 on the host needs --register=no --keep-unit; it then makes
# payload/ + supervisor/ cgroups under its *own* cgroup, so give it a private one.
cg_dirs() { if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then echo "/sys/fs/cgroup/$CG";
            else for h in systemd unified; do [ -d "/sys/fs/cgroup/$h" ] && echo "/sys/fs/cgroup/$h/$CG"; done; fi; }
cleanup() {
  set +e
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID"                     # nspawn turns this into a clean poweroff
    for _ in $(seq 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null
    wait "$NSPAWN_PID" 2>/dev/null
  fi
  for d in $(cg_dirs); do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null; done
  printf 'total time %.1fs\n' "$(el "$T0")"
}
trap cleanup EXIT

# Run a command inside the container, with a clean environment (no host RUST_LOG, CHD_SOCKET...).
E() { nsenter -t "$LEADER" -a env -i DEBIAN_FRONTEND=noninteractive PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C "$@"; }
prop() { E systemctl show -P "$1" "$UNIT"; }
as() { local u=$1; shift; E runuser -u "$u" -- "$@"; }

boot() {
  step "boot container (systemd as PID 1)"
  for d in $(cg_dirs); do mkdir -p "$d"; done
  sh -c 'for d in '"$(cg_dirs | tr '\n' ' ')"'; do echo $$ > $d/cgroup.procs; done
         exec systemd-nspawn -D "$0" --boot --register=no --keep-unit --private-network \
              --console=read-only --machine="$1" --hostname="$1"' "$ROOT" "$MACHINE" \
     > "$WORK/nspawn.log" 2>&1 < /dev/null &
  NSPAWN_PID=$!
  LEADER=
  for _ in $(seq 300); do
    LEADER=$(cat /proc/"$NSPAWN_PID"/task/*/children 2>/dev/null | awk '{print $1}' | head -1 || true)
    [ -n "$LEADER" ] && nsenter -t "$LEADER" -a test -S /run/systemd/private 2>/dev/null && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/nspawn.log"; LEADER=; die "nspawn exited"; }
    LEADER=
    sleep 0.1
  done
  [ -n "$LEADER" ] || { cat "$WORK/nspawn.log"; die "container's systemd did not come up"; }
  state=$(timeout 120 nsenter -t "$LEADER" -a systemctl is-system-running --wait 2>&1 || true)
  echo "   system state: $state (nspawn pid $NSPAWN_PID, container init = host pid $LEADER)"
  [ "$state" = running ] || { E systemctl --failed --no-pager || true; echo "   (degraded is tolerated)"; }
  done_
}
poweroff() {
  step "poweroff container"
  E systemctl poweroff --no-block || true
  for _ in $(seq 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$NSPAWN_PID" 2>/dev/null && die "container did not power off"
  wait "$NSPAWN_PID" || true; NSPAWN_PID=; LEADER=
  done_
}
# Wait until chd is active/running (for Type=notify: READY=1 arrived). Fails on failed/timeout.
wait_active() {
  local st sub
  for _ in $(seq "${2:-300}"); do
    st=$(prop ActiveState); sub=$(prop SubState)
    [ "$st" = active ] && [ "$sub" = running ] && return 0
    [ "$st" = failed ] && die "$1: unit failed (Result=$(prop Result))"
    sleep 0.1
  done
  die "$1: unit not active after $(( ${2:-300} / 10 ))s (ActiveState=$st SubState=$sub)"
}
# Every process running $BINDIR/chd in the container, as "pid ppid".
chd_procs() {
  E sh -c 'for d in /proc/[0-9]*; do
             [ "$(readlink "$d/exe" 2>/dev/null)" = "$1/chd" ] || continue
             echo "${d#/proc/} $(sed -n "s/^PPid:[[:space:]]*//p" "$d/status" 2>/dev/null)"
           done' sh "$BINDIR"
}
# All chd processes are the main PID or its direct children (no orphaned workers).
check_procs() {
  local main; main=$(prop MainPID)
  local bad; bad=$(chd_procs | awk -v m="$main" '$1 != m && $2 != m')
  [ -z "$bad" ] || die "$1: chd processes that are neither MainPID $main nor its children: $bad"
  echo "   chd processes (pid ppid): $(chd_procs | tr '\n' ';')"
}
write_keys() {
  as alice sh -c 'i=1; while [ $i -le $2 ]; do chctl --socket "$1" set "k$i" "v$i" || { echo "set k$i failed" >&2; exit 1; }; i=$((i+1)); done' \
     sh "$SOCK" "$NKEYS" || die "alice could not set $NKEYS keys"
}
# Every key k1..kN reads back as v1..vN (as alice, through chctl).
check_keys() {
  local bad
  bad=$(as alice sh -c 'i=1; while [ $i -le $2 ]; do v=$(chctl --socket "$1" get "k$i" 2>&1); [ "$v" = "v$i" ] || echo "k$i -> [$v]"; i=$((i+1)); done' \
        sh "$SOCK" "$NKEYS" 2>&1) || true
  [ -z "$bad" ] || die "$1: keys did not read back:
$(head -5 <<<"$bad")"
  echo "   all $NKEYS keys read back ($1)"
}

boot

if [ -n "$CHD_DEB" ]; then
  step "apt-get install the .deb in the container: user, dirs, unit, files; nothing enabled or started"
  t=$(ts)
  out=$(E apt-get install -y -q --no-install-recommends /var/tmp/chd.deb 2>&1) || die "apt-get install of the .deb: $out"
  echo "   installed in $(printf '%.1f' "$(el "$t")")s: $(E dpkg-query -W -f='${Package} ${Version} ${Architecture}' chd)"
  E getent passwd chd >/dev/null && E getent group chd >/dev/null || die "the package did not create user and group chd"
  echo "   user: $(E getent passwd chd)"
  dirperm=$(E stat -c '%a %U:%G' /var/lib/chd 2>&1) || die "no /var/lib/chd after install (tmpfiles): $dirperm"
  [ "$dirperm" = "750 chd:chd" ] || die "/var/lib/chd is '$dirperm', expected '750 chd:chd'"
  E test -f "$UNIT_FILE" || die "no unit at $UNIT_FILE"
  [ "$(prop FragmentPath)" = "$UNIT_FILE" ] || [ "$(E readlink -f "$(prop FragmentPath)")" = "$(E readlink -f "$UNIT_FILE")" ] \
    || die "systemd loads chd from $(prop FragmentPath), not $UNIT_FILE"
  grep -q "path=$BINDIR/chd " <<<"$(prop ExecStart)" || die "packaged unit does not run $BINDIR/chd: $(prop ExecStart)"
  en=$(E systemctl is-enabled "$UNIT" 2>&1 || true)
  [ "$en" = disabled ] || die "after install chd is '$en', expected disabled"
  [ "$(prop ActiveState)" = inactive ] || die "the package started chd (ActiveState=$(prop ActiveState))"
  [ -z "$(chd_procs)" ] || die "chd processes after install: $(chd_procs)"
  E dpkg-query -W -f='${Conffiles}' chd | grep -q ' /etc/chd/chd.toml ' || die "/etc/chd/chd.toml is not a conffile"
  files=$(E dpkg -L chd)
  for f in /usr/bin/chd /usr/bin/chctl /usr/lib/sysusers.d/chd.conf /usr/lib/tmpfiles.d/chd.conf /etc/chd/chd.toml \
           /usr/share/man/man1/chd.1.gz /usr/share/man/man1/chctl.1.gz /usr/share/man/man1/chctl-set.1.gz \
           /usr/share/bash-completion/completions/chctl /usr/share/zsh/vendor-completions/_chctl \
           /usr/share/fish/vendor_completions.d/chctl.fish; do
    grep -qx "$f" <<<"$files" || die "the package lacks $f"
    E test -s "$f" || die "$f is missing or empty after install"
  done
  E sh -c 'zcat /usr/share/man/man1/chctl.1.gz | grep -q "^\.SH SUBCOMMANDS"' || die "chctl.1.gz is not a man page with its subcommands"
  E bash -c '. /usr/share/bash-completion/completions/chctl && complete -p chctl' >/dev/null || die "bash completion does not load"
  E usermod -aG chd alice
  E gpasswd -d mallory chd >/dev/null 2>&1 || true
  ok "package installed with apt-get: user+group chd, /var/lib/chd $dirperm, unit $UNIT_FILE running $BINDIR/chd, conffile /etc/chd/chd.toml, man pages, completions; chd $en and inactive"
  done_
  static_checks
  step "systemctl enable --now chd"
  E systemctl enable --now "$UNIT" >/dev/null 2>&1 || die "systemctl enable --now chd failed"
  done_
fi
step "chd active under Type=notify; socket + users"
wait_active "first start"
[ "$(prop Type)" = notify ] || die "unit is not Type=notify"
[ "$(prop NRestarts)" = 0 ] || die "chd restarted $(prop NRestarts) times before the test began"
echo "   MainPID=$(prop MainPID) User=$(prop User) Status='$(prop StatusText)' Watchdog=$(prop WatchdogUSec)"
out=$(E systemd-analyze verify "$UNIT_FILE" 2>&1) || die "in-container verify: $out"
[ -z "$out" ] || die "in-container verify printed warnings: $out"
muser=$(E stat -c %U "/proc/$(prop MainPID)") ; [ "$muser" = chd ] || die "chd runs as $muser, not chd"
# The sandbox really applies inside the container: seccomp filter, no_new_privs, no capabilities.
pst=$(E cat "/proc/$(prop MainPID)/status")
for kv in 'Seccomp:2' 'NoNewPrivs:1' 'CapEff:0000000000000000' 'CapBnd:0000000000000000'; do
  k=${kv%%:*}; v=${kv#*:}
  got=$(sed -n "s/^$k:[[:space:]]*//p" <<<"$pst")
  [ "$got" = "$v" ] || die "chd's /proc status has $k=$got, expected $v (hardening not applied?)"
done
echo "   sandbox applied: Seccomp=2 NoNewPrivs=1 CapEff=0 CapBnd=0"
E test -S "$SOCK" || die "no socket at $SOCK"
sockperm=$(E stat -c '%a %U:%G' "$SOCK"); echo "   socket $SOCK: $sockperm; state dir: $(E stat -c '%a %U:%G' /var/lib/chd)"
[ "$sockperm" = "660 chd:chd" ] || die "socket is '$sockperm', expected '660 chd:chd' (socket_mode=0660, group chd)"
grep -qw chd <<<"$(E id -nG alice)" || die "alice is not in group chd"
! grep -qw chd <<<"$(E id -nG mallory)" || die "mallory is in group chd"
check_procs "first start"
ok "Type=notify: chd reached active (READY=1) as user chd; socket $SOCK is $sockperm"
done_

step "alice (group chd) sets and gets $NKEYS keys; mallory is refused"
write_keys
check_keys "after writing"
[ "$(as alice env CHD_SOCKET="$SOCK" chctl get k1)" = v1 ] || die "CHD_SOCKET did not select the socket"
as alice chctl --socket "$SOCK" set kdel gone || die "set kdel"
as alice chctl --socket "$SOCK" del kdel || die "del kdel"
rc=0; out=$(as alice chctl --socket "$SOCK" get kdel 2>&1) || rc=$?
[ "$rc" = 1 ] || die "get of a deleted key: exit $rc (want 1): $out"
echo "   chctl status: $(as alice chctl --socket "$SOCK" status 2>&1 | head -5 | tr '\n' ' ')"
rc=0; out=$(as mallory chctl --socket "$SOCK" get k1 2>&1) || rc=$?
[ "$rc" != 0 ] || die "mallory (not in group chd) read k1: '$out'"
grep -qi 'permission denied' <<<"$out" || die "mallory's error does not say 'permission denied': '$out'"
echo "   mallory: exit $rc: $out"
ok "alice (group chd) set+get $NKEYS keys, del works, CHD_SOCKET works; mallory refused: $(head -1 <<<"$out")"
done_

# With socket_mode 0660 the kernel already refuses mallory at connect(). Open the socket to
# everyone (--socket-mode 0666, a runtime drop-in) to check chd's own check of SO_PEERCRED
# under the real sandbox: alice is let in by group (ProtectProc=invisible hides her /proc entry
# from chd, so this goes through getgrouplist), mallory is refused by chd itself.
step "chd's own peer check (socket opened to 0666): alice allowed, mallory refused by chd"
E mkdir -p /run/systemd/system/chd.service.d
E sh -c 'printf "[Service]\nExecStart=\nExecStart=%s/chd --config /etc/chd/chd.toml --socket-mode 0666\n" "$1" > /run/systemd/system/chd.service.d/50-test-open-socket.conf' sh "$BINDIR"
E systemctl daemon-reload
E systemctl restart "$UNIT" || die "restart with --socket-mode 0666"
wait_active "restart with --socket-mode 0666"
sockperm=$(E stat -c '%a' "$SOCK"); [ "$sockperm" = 666 ] || die "--socket-mode 0666 gave a socket of mode $sockperm"
[ "$(as alice chctl --socket "$SOCK" get k1)" = v1 ] || die "alice (group chd) refused by chd's peer check"
rc=0; out=$(as mallory chctl --socket "$SOCK" get k1 2>&1) || rc=$?
[ "$rc" != 0 ] || die "chd let mallory (not in group chd) read k1 through a 0666 socket: '$out'"
grep -qi 'permission denied' <<<"$out" || die "chd's refusal of mallory does not say 'permission denied': '$out'"
echo "   mallory: exit $rc: $out"
E rm -f /run/systemd/system/chd.service.d/50-test-open-socket.conf
E systemctl daemon-reload
E systemctl restart "$UNIT" || die "restart without the drop-in"
wait_active "restart without the drop-in"
[ "$(E stat -c '%a' "$SOCK")" = 660 ] || die "socket mode not back to 660"
ok "chd's own peer check (socket 0666): alice allowed via group chd; mallory refused by chd: $(head -1 <<<"$out")"
done_

step "kill -9 of MainPID: systemd restarts chd (Restart=on-failure), keys survive"
OLD=$(prop MainPID); N0=$(prop NRestarts)
E sh -c "kill -9 $OLD"
for _ in $(seq 300); do
  [ "$(prop NRestarts)" -gt "$N0" ] && [ "$(prop MainPID)" != "$OLD" ] && [ "$(prop MainPID)" != 0 ] && break; sleep 0.1
done
[ "$(prop NRestarts)" -gt "$N0" ] || die "no restart after kill -9"
wait_active "after kill -9"
echo "   MainPID $OLD -> $(prop MainPID), NRestarts $N0 -> $(prop NRestarts)"
E journalctl -b -u "$UNIT" --no-pager | grep -E 'status=9/KILL' | tail -1 | sed 's/^/   /' || true
check_procs "after kill -9"
check_keys "after kill -9"
ok "kill -9: restarted (NRestarts $N0 -> $(prop NRestarts)), all $NKEYS keys back, no orphaned workers"
done_

step "systemctl kill -s KILL chd (chd and every worker at once): restarted, keys survive"
OLD=$(prop MainPID); N0=$(prop NRestarts)
E systemctl kill -s KILL "$UNIT" || die "systemctl kill failed"
for _ in $(seq 300); do
  [ "$(prop NRestarts)" -gt "$N0" ] && [ "$(prop MainPID)" != "$OLD" ] && [ "$(prop MainPID)" != 0 ] && break; sleep 0.1
done
[ "$(prop NRestarts)" -gt "$N0" ] || die "no restart after systemctl kill -s KILL"
wait_active "after systemctl kill -s KILL"
check_procs "after systemctl kill -s KILL"
check_keys "after systemctl kill -s KILL"
# chctl finds the service's socket without --socket or CHD_SOCKET (the packaged setup).
as alice chctl set after-kill yes || die "chctl set without --socket failed"
[ "$(as alice chctl get after-kill)" = yes ] || die "chctl get without --socket did not read back"
ok "systemctl kill -s KILL: restarted (NRestarts $N0 -> $(prop NRestarts)), all $NKEYS keys back; chctl set/get without --socket"
done_

step "SIGSTOP of MainPID: WatchdogSec= trips, chd restarts, keys survive"
WD=$(prop WatchdogUSec)
[ "$WD" != 0 ] && [ "$WD" != infinity ] || die "WatchdogSec= is not set (WatchdogUSec=$WD)"
OLD=$(prop MainPID); N0=$(prop NRestarts)
E sh -c "kill -STOP $OLD"
for _ in $(seq 600); do
  [ "$(prop NRestarts)" -gt "$N0" ] && [ "$(prop MainPID)" != "$OLD" ] && [ "$(prop MainPID)" != 0 ] && break; sleep 0.1
done
[ "$(prop NRestarts)" -gt "$N0" ] || die "watchdog ($WD) did not restart the stopped chd within 60s"
wait_active "after watchdog"
wdline=$(E journalctl -b -u "$UNIT" --no-pager | grep -E 'Watchdog timeout' | tail -1 || true)
[ -n "$wdline" ] || die "no 'Watchdog timeout' in the journal"
echo "   $wdline"
echo "   MainPID $OLD -> $(prop MainPID), NRestarts $N0 -> $(prop NRestarts)"
check_procs "after watchdog"
check_keys "after watchdog restart"
ok "SIGSTOP: watchdog ($WD) timeout logged, restarted, all $NKEYS keys back"
done_

step "systemctl stop: inactive (not failed), Result=success, nothing left, socket gone; start again"
t=$(ts)
E systemctl stop "$UNIT" || die "systemctl stop failed"
stop_s=$(printf '%.2f' "$(el "$t")")
st=$(prop ActiveState); res=$(prop Result)
echo "   stopped in ${stop_s}s: ActiveState=$st Result=$res"
[ "$st" = inactive ] || die "after stop ActiveState=$st (want inactive)"
[ "$res" = success ] || die "after stop Result=$res (want success)"
left=$(chd_procs); [ -z "$left" ] || die "chd processes left after stop: $left"
! E test -e "$SOCK" || die "socket $SOCK still exists after stop"
E systemctl start "$UNIT" || die "systemctl start failed"
wait_active "after start"
check_keys "after stop + start"
ok "systemctl stop: inactive, Result=success in ${stop_s}s, no chd process left, socket gone; start: all keys back"
done_

poweroff
boot
step "after poweroff + boot: keys survive; healthy chd is not restarted by the watchdog"
wait_active "after reboot"
check_keys "after reboot"
OLD=$(prop MainPID); N0=$(prop NRestarts)
wd_s=$(sed -n 's/^\([0-9]*\)s$/\1/p' <<<"$(prop WatchdogUSec)"); wd_s=$(( ${wd_s:-10} + 2 ))
echo "   waiting ${wd_s}s (> WatchdogSec) to see chd ping the watchdog..."
sleep "$wd_s"
[ "$(prop MainPID)" = "$OLD" ] && [ "$(prop NRestarts)" = "$N0" ] && [ "$(prop ActiveState)" = active ] \
  || die "chd was restarted without cause (watchdog pings missing?): MainPID $OLD -> $(prop MainPID), NRestarts $N0 -> $(prop NRestarts)"
! grep -q 'Watchdog timeout' <<<"$(E journalctl -b -u "$UNIT" --no-pager)" || die "watchdog timeout in a healthy boot"
check_keys "after ${wd_s}s idle"
ok "poweroff + boot: all $NKEYS keys back; chd kept alive by its own WATCHDOG=1 pings over ${wd_s}s"
done_
E journalctl -u "$UNIT" --no-pager -o short-monotonic > "$WORK/journal-chd.txt" 2>&1 || true
if [ -n "$CHD_DEB" ]; then
  step "apt-get remove chd: chd stopped, binaries and unit gone, data kept"
  out=$(E apt-get remove -y -q chd 2>&1) || die "apt-get remove: $out"
  [ -z "$(chd_procs)" ] || die "chd processes left after apt-get remove: $(chd_procs)"
  ! E test -e /usr/bin/chd && ! E test -e "$UNIT_FILE" || die "binary or unit left after apt-get remove"
  E test -f /var/lib/chd/cluster.json || die "apt-get remove deleted chd's data"
  ok "apt-get remove: chd stopped, binaries and unit gone, /var/lib/chd kept"
  done_
fi
poweroff

echo
echo "== summary: chd.service from $MODE under real systemd 252 (Debian 12, PID 1 in systemd-nspawn)"
for s in "${SUMMARY[@]}"; do echo " - $s"; done
echo "ALL OK (chd journal: $WORK/journal-chd.txt)"
