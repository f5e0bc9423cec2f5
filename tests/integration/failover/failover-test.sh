#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Failover acceptance (issue 4) with 3 members that are real `p11-kit server` processes:
#   failover-test.sh remote-sign   A: failover_sign_load, 4 threads for 20 s; member 1's process
#                                     group SIGKILLed at ~4 s and restarted at ~8 s, member 2's
#                                     SIGSTOPped from ~11 s to ~16 s
#   failover-test.sh remote-java   B: the same schedule driven by SunPKCS11 (FailoverSign.java)
#   failover-test.sh all-down      C: every member SIGKILLed at ~3 s, restarted at ~8 s
# Keys cannot be made through remote members (p11-kit 0.24 carries no AES key wrap), so the key
# pair is made first through p11ha with in-process module members over the same token
# directories, and checked on every token directly; then the servers start.
# The servers' provider is a copy of the test member (tests/fakes), whose `served_log=PATH`
# option appends "<CLOCK_REALTIME ms> C_Sign" per served C_Sign: the member's own account of
# when it served again, independent of what p11ha believes.
# Environment (ctest sets it): P11HA_CLI, P11HA_MODULE, P11HA_FAILOVER_LOAD,
# P11HA_STAGE_TEST_MEMBERS, P11HA_TEST_MEMBER_SO; P11HA_KEEP_TEST_DIR=1 keeps the temp dir.
# Prints one "VERDICT <condition>: PASS|FAIL ..." line per condition; exit 1 if any failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case=${1:-}
say() { echo "failover-test[$case]: $*"; }
fail() {
  say "FAIL: $*" >&2
  exit 1
}
case $case in
  remote-sign | remote-java | all-down) ;;
  *) echo "usage: failover-test.sh remote-sign|remote-java|all-down" >&2; exit 2 ;;
esac

cli=${P11HA_CLI:-}
module=${P11HA_MODULE:-}
load=${P11HA_FAILOVER_LOAD:-}
stage=${P11HA_STAGE_TEST_MEMBERS:-$here/../../fakes/stage-test-members.sh}
member_so=${P11HA_TEST_MEMBER_SO:-}
client_so=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
[ -x "$cli" ] || fail "P11HA_CLI ('$cli') must name the built p11ha CLI"
[ -f "$module" ] || fail "P11HA_MODULE ('$module') must name the built libp11ha.so"
[ -x "$load" ] || fail "P11HA_FAILOVER_LOAD ('$load') must name failover_sign_load"
[ -f "$member_so" ] || fail "P11HA_TEST_MEMBER_SO ('$member_so') must name libp11ha-test-member.so"
[ -f "$client_so" ] || fail "$client_so not found (Debian package p11-kit-modules)"
tools=(p11-kit:p11-kit pkcs11-tool:opensc setsid:util-linux timeout:coreutils)
[ "$case" != remote-java ] || tools+=(java:openjdk-17-jdk-headless javac:openjdk-17-jdk-headless)
for tool in "${tools[@]}"; do
  command -v "${tool%%:*}" >/dev/null || fail "${tool%%:*} not found (Debian package ${tool#*:})"
done

call_timeout_ms=1000
probe_interval_ms=500
label=failover-ec
threads=4

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-failover.XXXXXX")
m=$dir/members
declare -A group=()   # member index -> process group id of its `p11-kit server`
load_group=           # the client's `timeout` process group
restart_ms=0          # when the (last) restart began; 0 while the schedule has not got there

# shellcheck disable=SC2317  # reached through the traps
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  # Whole groups: the listener and every per-connection p11-kit-remote it forked. A stopped
  # group is continued first so nothing is left frozen if the KILL were ever refused.
  for i in "${!group[@]}"; do
    kill -CONT -- "-${group[$i]}" 2>/dev/null || true
    kill -KILL -- "-${group[$i]}" "${group[$i]}" 2>/dev/null || true
  done
  [ -z "$load_group" ] || kill -KILL -- "-$load_group" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    for f in "$dir"/p11ha.log "$dir"/server-*.log; do
      [ -s "$f" ] || continue
      echo "--- last lines of $f"
      tail -n 25 "$f"
    done
  fi
  if [ "${P11HA_KEEP_TEST_DIR:-0}" = 1 ]; then say "kept $dir"; else rm -rf "$dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
# at MS: sleeps until MS milliseconds after t0 (the moment the load reported it started);
# fails at once when the load client is gone, so a crash is reported without the schedule.
at() {
  local wait
  while wait=$((t0 + $1 - $(now_ms))) && [ "$wait" -gt 0 ]; do
    kill -0 "$load_group" 2>/dev/null || return 1
    sleep "0.$(printf '%03d' $((wait > 100 ? 100 : wait)))"
  done
  kill -0 "$load_group" 2>/dev/null
}
event() { printf '  t+%5d ms  %s\n' $(($(now_ms) - t0)) "$*"; }

# The instrumented (ASan) build of the test member can only live in a process whose first
# library is the ASan runtime; p11-kit server is not built with it, so preload it there.
server_env=()
if asan=$(ldd "$member_so" 2>/dev/null | awk '/libasan/ {print $3; exit}') && [ -n "$asan" ]; then
  server_env=(env "LD_PRELOAD=$asan" "ASAN_OPTIONS=detect_leaks=0")
fi

# --- keys: made through p11ha over in-process members, checked on every token directly
echo "--- staging 3 tokens, domain key, key pair '$label' through p11ha (module members)"
"$stage" "$m" 3 "$member_so" --domain "$cli" || fail "stage-test-members.sh"
printf '\n[log]\nlevel = "warn"\nfile = "%s/keygen-p11ha.log"\n' "$dir" >>"$m/domain.toml"
P11HA_CONFIG=$m/domain.toml timeout -k 5 60 "$load" --keygen "$module" "$m/user.pin" "$label" ||
  fail "key generation through p11ha"
for i in 1 2 3; do
  direct=(env "SOFTHSM2_CONF=$m/softhsm2-$i.conf" pkcs11-tool --module "$m/softhsm-$i.so"
    --token-label "m$i" --login --pin 1234)
  objects=$("${direct[@]}" --list-objects 2>/dev/null | awk -v l="$label" '
    /Object;/ { type = $1 } /^ *label: / { sub(/^ *label: +/, ""); if ($0 == l) print type }' |
    sort | tr '\n' ' ')
  [ "$objects" = "Certificate Private Public " ] ||
    fail "token m$i should hold the private key, public key and certificate '$label'; has: $objects"
  "${direct[@]}" --read-object --type pubkey --label "$label" --output-file "$dir/pub-$i.der" \
    >/dev/null 2>&1 || fail "cannot read public key '$label' on token m$i"
  cmp -s "$dir/pub-1.der" "$dir/pub-$i.der" || fail "token m$i holds a different public key"
done
say "all 3 tokens hold '$label' (same public key), checked with pkcs11-tool on each token"

# From here on every served C_Sign is logged by the member itself.
for i in 1 2 3; do echo "served_log=$dir/served-$i.log" >>"$m/member-$i.so.conf"; done

# --- remote members
# start_member I: its own session and process group (setsid does not fork here, as a child of
# a script is never a group leader), so the group id is the listener's pid.
start_member() {
  local i=$1 pid waited=0
  # The listener replaces a stale socket file itself; removing it makes "socket exists" mean
  # "this listener is up".
  rm -f "$dir/m$i.sock"
  setsid "${server_env[@]}" p11-kit server -f --provider "$m/member-$i.so" -n "$dir/m$i.sock" \
    "pkcs11:token=m$i" >>"$dir/server-$i.log" 2>&1 &
  pid=$!
  group[$i]=$pid
  # Disowned: bash would otherwise print "Killed" for every member the test kills.
  disown "$pid"
  # The child calls setsid() a moment after the fork; until then it is in our group.
  until [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; do
    [ $((waited += 1)) -le 100 ] || fail "p11-kit server for m$i (pid $pid) is not its own process group"
    sleep 0.01
  done
  waited=0
  until [ -S "$dir/m$i.sock" ]; do
    kill -0 "$pid" 2>/dev/null || fail "p11-kit server for m$i exited (see $dir/server-$i.log)"
    [ $((waited += 1)) -le 500 ] || fail "p11-kit server for m$i made no socket in 5 s"
    sleep 0.01
  done
}
group_size() { ps -eo pgid= | awk -v g="$1" '$1 == g' | wc -l; }
kill_members() {  # I...: each listener and all its connection processes, members together
  local i sizes=()
  for i in "$@"; do sizes+=("$(group_size "${group[$i]}")"); done
  for i in "$@"; do kill -KILL -- "-${group[$i]}"; done
  for i in "$@"; do
    event "SIGKILLed member $i's process group ${group[$i]} (${sizes[0]} processes)"
    sizes=("${sizes[@]:1}")
    unset "group[$i]"
  done
}

echo "--- starting 3 p11-kit servers over the same tokens"
for i in 1 2 3; do start_member "$i"; done
{
  printf '[cluster]\nlabel = "ha-test"\nslot_id = 0\n\n'
  for i in 1 2 3; do
    printf '[[member]]\nname = "hsm-%s"\nremote = "unix:path=%s/m%s.sock"\ntoken = "pkcs11:token=m%s"\n\n' \
      "$i" "$dir" "$i" "$i"
  done
  printf '[auth]\npin_file = "%s/user.pin"\n\n' "$m"
  printf '[health]\nprobe_interval_ms = %s\ncall_timeout_ms = %s\n\n' "$probe_interval_ms" "$call_timeout_ms"
  printf '[log]\nlevel = "info"\nfile = "%s/p11ha.log"\n' "$dir"
} >"$dir/p11ha.toml"
export P11HA_CONFIG=$dir/p11ha.toml

# start_load SECONDS CMD...: the client under a hard timeout; t0 is when it says it started.
start_load() {
  local seconds=$1 waited=0
  shift
  # The clients give up on stuck calls 10 s after the end and then report; this is the backstop.
  timeout -k 5 $((seconds + 25)) "$@" >"$dir/load.out" 2>&1 &
  load_group=$!  # timeout makes itself a process group leader
  until grep -q 'load:' "$dir/load.out" 2>/dev/null; do
    if ! kill -0 "$load_group" 2>/dev/null; then
      cat "$dir/load.out"
      fail "the load client exited before it started signing"
    fi
    [ $((waited += 1)) -le 3000 ] || fail "the load client did not start signing within 30 s"
    sleep 0.01
  done
  t0=$(now_ms)
  event "load started: $(grep -m1 'load:' "$dir/load.out")"
}
finish_load() {
  local rc=0
  wait "$load_group" || rc=$?
  load_group=
  event "load finished (exit $rc)"
  sed 's/^/    /' "$dir/load.out"
  [ -s "$dir/summary" ] || fail "the client wrote no summary (exit $rc$([ "$rc" -gt 128 ] &&
    echo ", killed by signal $((rc - 128))$([ "$rc" = 141 ] && echo ': SIGPIPE')"))"
}
value() { sed -n "s/^$1=//p" "$dir/summary" | head -n 1; }

verdicts=()
verdict() {  # NAME OK(0|1) TEXT
  local result=FAIL
  [ "$2" = 0 ] && result=PASS
  echo "VERDICT $1: $result - $3"
  [ "$result" = PASS ] || verdicts+=("$1")
}

# first_served I SINCE_MS: the earliest C_Sign member I logged at or after SINCE_MS.
first_served() {
  [ -f "$dir/served-$1.log" ] || return 0
  awk -v s="$2" '$2 == "C_Sign" && $1 >= s && (min == "" || $1 < min) { min = $1 } END { print min }' \
    "$dir/served-$1.log"
}
member_side() {  # GATING(0|1): was member 1 serving again within 3 x probe_interval_ms?
  local limit=$((3 * probe_interval_ms)) first note=
  first=$(first_served 1 "$restart_ms")
  if ! ls "$dir"/served-*.log >/dev/null 2>&1; then
    note=" (no member wrote a served_log at all: the test member lacks the served_log option)"
  fi
  local name=A3-member-1-serving ok=1 text
  if [ "$restart_ms" = 0 ]; then
    text="member 1 was never restarted: the load ended first"
  elif [ -n "$first" ]; then
    text="member 1 served its first C_Sign $((first - restart_ms)) ms after its restart (limit $limit ms)"
    [ $((first - restart_ms)) -le "$limit" ] && ok=0
  else
    text="member 1 logged no C_Sign after its restart (limit $limit ms)$note"
  fi
  if [ "$1" = 1 ]; then verdict "$name" "$ok" "$text"; else echo "INFO $text"; fi
}

# gap_verdict NAME GATING(0|1): no stretch without a success longer than call_timeout_ms +
# 500 ms, over all threads merged (as the issue words it) and within each thread: merged, a
# thread stuck in a frozen member hides behind the threads that still succeed.
gap_verdict() {
  local limit=$((call_timeout_ms + 500)) merged own ok=1 text
  merged=$(value max_gap_ms) own=$(value thread_max_gap_ms)
  [ "$merged" -le "$limit" ] && [ "$own" -le "$limit" ] && ok=0
  text="longest gap between successes: merged $merged ms (t+$(($(value max_gap_from_ms) - t0))..t+$(($(value max_gap_to_ms) - t0)) ms), within one thread $own ms (thread $(value thread_max_gap_thread), t+$(($(value thread_max_gap_from_ms) - t0))..t+$(($(value thread_max_gap_to_ms) - t0)) ms), slowest successful signature $(value slowest_success_ms) ms; limit $limit ms"
  if [ "$2" = 1 ]; then verdict "$1" "$ok" "$text"; else echo "INFO $text"; fi
}

kill_stop_schedule() {
  local size
  at 4000 || return 0
  kill_members 1
  at 8000 || return 0
  restart_ms=$(now_ms)
  start_member 1
  event "restarted member 1 (listening $(($(now_ms) - restart_ms)) ms after the start)"
  at 11000 || return 0
  size=$(group_size "${group[2]}")
  kill -STOP -- "-${group[2]}"
  event "SIGSTOP member 2's process group ${group[2]} ($size processes)"
  at 16000 || return 0
  kill -CONT -- "-${group[2]}"
  event "SIGCONT member 2"
}

case $case in
  remote-sign)
    echo "--- A: failover_sign_load, $threads threads for 20 s through 3 remote members"
    start_load 20 "$load" --successes "$dir/successes" "$module" "$m/user.pin" "$label" \
      "$threads" 20 "$dir/summary"
    kill_stop_schedule
    finish_load
    ops=$(value ops) errors=$(value errors) unverified=$(value unverified) hung=$(value hung)
    ok=1
    [ "$ops" -gt 0 ] && [ "$errors" = 0 ] && [ "$unverified" = 0 ] && [ "$hung" = 0 ] && ok=0
    verdict A1-no-errors-all-verified "$ok" \
      "ops=$ops errors=$errors unverified=$unverified hung=$hung$(sed -n 's/^error_kind=/; /p' "$dir/summary" | tr '\n' ' ')"
    gap_verdict A2-max-gap 1
    member_side 1
    ;;
  remote-java)
    echo "--- B: SunPKCS11 (FailoverSign.java), $threads threads for 20 s through 3 remote members"
    mkdir -p "$dir/java"
    javac -d "$dir/java" "$here/FailoverSign.java" || fail "javac FailoverSign.java"
    # The virtual slot's id is fixed by [cluster] slot_id.
    printf 'name = p11haFailover\nlibrary = %s\nslot = 0\n' "$module" >"$dir/sunpkcs11.cfg"
    start_load 20 java -cp "$dir/java" FailoverSign "$dir/sunpkcs11.cfg" 1234 "$label" \
      "$threads" 20 "$dir/summary" "$dir/signatures"
    kill_stop_schedule
    finish_load
    ops=$(value ops) errors=$(value errors) hung=$(value hung)
    ok=1
    [ "$errors" = 0 ] && [ "$hung" = 0 ] && ok=0
    verdict B1-no-exceptions "$ok" "exceptions=$errors hung=$hung (ops=$ops)"
    # Against the public key as read from token m1 directly, not through p11ha.
    checked=$("$load" --verify "$dir/signatures" "$dir/pub-1.der" || true)
    verified=$(sed -n 's/^verified=//p' <<<"$checked") unverified=$(sed -n 's/^unverified=//p' <<<"$checked")
    ok=1
    [ "${verified:-0}" -gt 0 ] && [ "$verified" = "$ops" ] && [ "$unverified" = 0 ] && ok=0
    verdict B2-all-verified "$ok" "ops=$ops verified=${verified:-?} unverified=${unverified:-?} (OpenSSL)"
    gap_verdict B-max-gap 0
    member_side 0
    ;;
  all-down)
    echo "--- C: every member down for 5 s under load ($threads threads, 14 s)"
    start_load 14 "$load" --expect-outage --successes "$dir/successes" "$module" "$m/user.pin" \
      "$label" "$threads" 14 "$dir/summary"
    if at 3000; then
      kill_members 1 2 3
      if at 8000; then
        restart_ms=$(now_ms)
        for i in 1 2 3; do start_member "$i"; done
        event "restarted all 3 members"
      fi
    fi
    finish_load
    errors=$(value errors) hung=$(value hung) slowest=$(value error_max_ms)
    ok=1
    [ "$errors" -gt 0 ] && [ "$hung" = 0 ] &&
      awk -v s="$slowest" -v l="$call_timeout_ms" 'BEGIN { exit !(s <= l) }' && ok=0
    verdict C1-outage-fails-fast "$ok" \
      "errors=$errors, slowest failed call ${slowest} ms (limit $call_timeout_ms ms), hung=$hung$(sed -n 's/^error_kind=/; /p' "$dir/summary" | tr '\n' ' ')"
    first=$(awk -v s="$restart_ms" '$1 >= s && (min == "" || $1 < min) { min = $1 } END { print min }' \
      "$dir/successes")
    recovered=$(awk -v s="$restart_ms" '$1 >= s { seen[$2] = 1 } END { print length(seen) }' \
      "$dir/successes")
    ok=1
    [ "$restart_ms" != 0 ] && [ "$recovered" = "$threads" ] && [ "$(value unverified)" = 0 ] && ok=0
    verdict C2-recovers-same-handles "$ok" \
      "$recovered of $threads threads signed again after the restart with the key handle and session they started with (first success $([ -n "$first" ] && echo "$((first - restart_ms)) ms after the restart" || echo never)); unverified=$(value unverified); one C_Initialize"
    ;;
esac

if [ ${#verdicts[@]} -gt 0 ]; then
  say "FAIL (${verdicts[*]})"
  exit 1
fi
say "PASS"
