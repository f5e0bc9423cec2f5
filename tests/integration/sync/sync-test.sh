#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `p11ha verify` and `p11ha sync` end to end on a 3-member SoftHSM farm with a domain key. Drift
# is made with pkcs11-tool directly on member tokens (objects on one member only, an object
# deleted from one member, a tombstone, a duplicate, a conflict, keys that cannot be copied, a
# member down), and every result is checked on the member tokens directly, never through p11ha.
# Environment: P11HA_CLI, P11HA_FARM_SCRIPT, P11HA_SOFTHSM_MODULE; P11HA_KEEP_TEST_DIR=1 keeps
# the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cli=${P11HA_CLI:?P11HA_CLI must name the p11ha CLI}
farm_script=${P11HA_FARM_SCRIPT:-$here/../../support/make-farm.sh}
softhsm=${P11HA_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-sync.XXXXXX")
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
  if [ "${P11HA_KEEP_TEST_DIR:-0}" = 1 ]; then echo "sync-test: kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

fail() {
  echo "sync-test: FAIL: $*" >&2
  exit 1
}
step() { echo "--- $*"; }

# run EXPECTED_RC CMD...: runs with no stdin (as in CI), keeps stdout+stderr in $out.
run() {
  local expected=$1 rc=0
  shift
  out=$(timeout -k 5 120 "$@" </dev/null 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/    /'
  [ "$rc" = "$expected" ] || fail "exit $rc, expected $expected: $*"
}
expect() { grep -qF -- "$1" <<<"$out" || fail "output lacks '$1'"; }
expect_not() { ! grep -qF -- "$1" <<<"$out" || fail "output has '$1'"; }
# expect_line MEMBER TEXT: TEXT appears in MEMBER's block of the text report.
expect_line() {
  awk -v m="$1:" '$1 == m {on = 1; next} /^[^ ]/ {on = 0} on' <<<"$out" | grep -qF -- "$2" ||
    fail "$1's report lacks '$2'"
}

# Direct access to one member token.
p11() {
  local token=$1
  shift
  pkcs11-tool --module "$softhsm" --token-label "$token" --login --pin 1234 "$@" 2>/dev/null
}
# count TOKEN TYPE LABEL: objects of that pkcs11-tool type and label on the token.
count() {
  p11 "$1" --list-objects --type "$2" | sed -n "s/^ *label: *'\{0,1\}\([^']*\)'\{0,1\}\$/\1/p" |
    grep -cx -- "$3" || true
}
# everywhere TYPE LABEL N: every member holds N such objects.
everywhere() {
  for m in m1 m2 m3; do
    [ "$(count "$m" "$1" "$2")" = "$3" ] || fail "$m holds $(count "$m" "$1" "$2") $1 '$2', expected $3"
  done
}
# identity OBJECT-TEXT: the full identity of an object that `verify --json` reports.
identity() {
  local json
  json=$("$cli" verify --json </dev/null 2>/dev/null) || true
  grep -F -- "\"object\": \"$1\"" <<<"$json" | head -1 | sed -n 's/.*"identity": "\([0-9a-f]\{64\}\)".*/\1/p'
}
# tombstone TOKEN IDENTITY: what p11ha writes when a deletion could not reach every member.
tombstone() {
  printf 'p11ha-tombstone v1 %s\n' "$2" >"$dir/tombstone.bin"
  p11 "$1" --write-object "$dir/tombstone.bin" --type data --label p11ha-tombstone --application-label p11ha \
    --private >/dev/null || fail "writing a tombstone on $1"
}
certificate() {  # NAME: a self-signed DER certificate in $dir/NAME.der
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/$1.key" -out "$dir/$1.pem" \
    -subj "/CN=$1" -days 30 2>/dev/null
  openssl x509 -in "$dir/$1.pem" -outform der -out "$dir/$1.der"
}

step "a 3-member farm with a domain key has no drift"
"$farm_script" "$dir" 3 >/dev/null
# shellcheck source=/dev/null
. "$dir/env"
conf=$dir/p11ha.toml
run 0 "$cli" domain create --shares 3 --threshold 2 --out "$dir/shares" --so-pin-file "$dir/so.pin" --config "$conf"
domain=$(sed -n 's/^domain check value \([0-9a-f]\{16\}\)$/\1/p' <<<"$out")
run 0 "$cli" verify
expect "domain $domain"
expect "verify: no drift"

step "objects made on one member only are reported, not changed, by verify and sync --dry-run"
certificate web
p11 m1 --write-object "$dir/web.der" --type cert --label web --id 0a01 >/dev/null || fail "writing the certificate"
printf 'release notes' >"$dir/notes.bin"
p11 m2 --write-object "$dir/notes.bin" --type data --label notes --private >/dev/null || fail "writing the data object"
# pkcs11-tool makes the private key CKA_EXTRACTABLE=FALSE: it stays on m1; its public key travels.
# Under replication.non_extractable = "local" that is expected (no drift); the default policy
# counts it as drift (the "outside" key below).
printf '\n[replication]\nnon_extractable = "local"\n' >>"$conf"
p11 m1 --keypairgen --key-type EC:prime256v1 --label eckey --id 0b01 >/dev/null || fail "generating an EC key"
run 1 "$cli" verify
expect_line hsm-2 'missing: certificate "web" id 0a01'
expect_line hsm-3 'missing: certificate "web" id 0a01'
expect_line hsm-1 'missing: data object "notes"'
expect_line hsm-2 'missing: EC public key "eckey" id 0b01'
expect_line hsm-1 'local: EC private key "eckey" id 0b01'
expect "verify: 6 drift entries on hsm-1, hsm-2, hsm-3"
run 1 "$cli" sync --dry-run
expect "would copy it from hsm-1"
[ "$(count m2 cert web)" = 0 ] || fail "a dry run copied the certificate"
[ "$(count m1 data notes)" = 0 ] || fail "a dry run copied the data object"

step "sync copies them; verify then finds no drift"
run 0 "$cli" sync
expect "sync: 6 drift entries, 6 repaired, 0 left"
expect "after sync: consistent"
run 0 "$cli" verify
expect "verify: no drift"
everywhere cert web 1
everywhere data notes 1
everywhere pubkey eckey 1
for m in m1 m2 m3; do
  expected=0
  [ "$m" = m1 ] && expected=1
  [ "$(count "$m" privkey eckey)" = "$expected" ] || fail "the non-extractable EC private key left m1 (for $m)"
done
p11 m3 --read-object --type cert --label web --output-file "$dir/web-m3.der" >/dev/null || fail "reading m3's copy"
cmp -s "$dir/web.der" "$dir/web-m3.der" || fail "m3's certificate differs from the original"

step "an object deleted from one member is named by verify and put back by sync"
p11 m2 --delete-object --type cert --label web >/dev/null || fail "deleting the certificate on m2"
run 1 "$cli" verify
expect_line hsm-2 'missing: certificate "web" id 0a01'
expect "verify: 1 drift entries on hsm-2"
run 0 "$cli" sync
run 0 "$cli" verify
everywhere cert web 1

step "a tombstone deletes the object everywhere, then is retired"
p11 m3 --delete-object --type cert --label web >/dev/null || fail "deleting the certificate on m3"
web_identity=$(identity 'certificate \"web\" id 0a01')
[ -n "$web_identity" ] || fail "verify --json gave no identity for the certificate"
tombstone m1 "$web_identity"
run 1 "$cli" verify
expect_line hsm-1 'deleted: certificate "web" id 0a01'
expect_line hsm-2 'deleted: certificate "web" id 0a01'
expect_not "missing: certificate"
run 0 "$cli" sync
expect "remove the tombstone: done"
everywhere cert web 0
everywhere data p11ha-tombstone 0
everywhere data notes 1

step "while a member is down the tombstone spreads instead of retiring"
certificate old
for m in m1 m2 m3; do p11 "$m" --write-object "$dir/old.der" --type cert --label old --id 0c01 >/dev/null; done
p11 m1 --delete-object --type cert --label old >/dev/null
old_identity=$(identity 'certificate \"old\" id 0c01')
[ -n "$old_identity" ] || fail "verify --json gave no identity for 'old'"
tombstone m1 "$old_identity"
down=$dir/down.toml
sed 's/token=m3"/token=m9"/' "$conf" >"$down"
run 1 "$cli" sync --config "$down"
expect_line hsm-3 "unreachable: down"
expect_line hsm-2 "tombstone-missing: tombstone"
[ "$(count m2 cert old)" = 0 ] || fail "m2 kept the deleted certificate"
[ "$(count m2 data p11ha-tombstone)" = 1 ] || fail "m2 did not receive the tombstone"
[ "$(count m3 cert old)" = 1 ] || fail "the down member was touched"
run 0 "$cli" sync
everywhere cert old 0
everywhere data p11ha-tombstone 0

step "a duplicate is removed while another member holds the object"
printf 'twice' >"$dir/twice.bin"
p11 m3 --write-object "$dir/twice.bin" --type data --label twice --private >/dev/null
p11 m3 --write-object "$dir/twice.bin" --type data --label twice --private >/dev/null
run 1 "$cli" verify
expect_line hsm-3 'duplicate: data object "twice"'
run 0 "$cli" sync
everywhere data twice 1

step "same label and id but different objects: a conflict, reported and left alone"
certificate a
certificate b
p11 m1 --write-object "$dir/a.der" --type cert --label api --id 0d01 >/dev/null
p11 m2 --write-object "$dir/a.der" --type cert --label api --id 0d01 >/dev/null
p11 m3 --write-object "$dir/b.der" --type cert --label api --id 0d01 >/dev/null
run 1 "$cli" verify
expect_line hsm-3 'conflict: certificate "api" id 0d01'
run 1 "$cli" sync
expect "after sync: 3 drift entries remain"
everywhere cert api 1
p11 m3 --read-object --type cert --label api --output-file "$dir/api-m3.der" >/dev/null
cmp -s "$dir/b.der" "$dir/api-m3.der" || fail "the conflicting certificate on m3 was replaced"
for m in m1 m2 m3; do p11 "$m" --delete-object --type cert --label api >/dev/null; done

step "a key made outside p11ha (not CKA_WRAP_WITH_TRUSTED), default policy: drift, reported, not copied"
sed -i '/^non_extractable = "local"$/d' "$conf"
p11 m1 --delete-object --type privkey --label eckey >/dev/null
p11 m2 --keygen --key-type AES:32 --label outside --id 0e01 --extractable >/dev/null || fail "generating an AES key"
run 1 "$cli" verify
expect_line hsm-2 'local: AES secret key "outside" id 0e01'
expect 'replication.non_extractable is not "local"'
run 1 "$cli" sync
[ "$(count m1 secrkey outside)" = 0 ] || fail "the key was copied"
p11 m2 --delete-object --type secrkey --label outside >/dev/null
run 0 "$cli" verify

step "three syncs at once lose nothing, and one more leaves one copy per member"
for i in 1 2 3; do
  certificate "race-$i"
  p11 "m$i" --write-object "$dir/race-$i.der" --type cert --label "race-$i" --id "0f0$i" >/dev/null
done
pids=()
for i in 1 2 3; do
  "$cli" sync </dev/null >"$dir/race-$i.out" 2>&1 &
  pids+=($!)
done
codes=""
for pid in "${pids[@]}"; do
  rc=0
  wait "$pid" || rc=$?
  codes="$codes $rc"
  [ "$rc" -le 1 ] || fail "a concurrent sync crashed (exit $rc): $(cat "$dir"/race-*.out)"
done
echo "    concurrent syncs exited$codes"
run 0 "$cli" sync
run 0 "$cli" verify
for i in 1 2 3; do everywhere cert "race-$i" 1; done

step "a member down makes verify exit 1"
run 1 "$cli" verify --config "$down"
expect_line hsm-3 "unreachable: down: no token matches 'pkcs11:token=m9'"
expect "verify: 1 drift entries on hsm-3"

step "no PIN file and no terminal: exit 2 at once"
nopin=$dir/nopin.toml
sed 's|^pin_file = .*|pin_file = ""|' "$conf" >"$nopin"
run 2 "$cli" verify --config "$nopin"
expect "no terminal"
run 2 "$cli" sync --config "$nopin"
run 0 "$cli" verify --config "$nopin" --pin-file "$dir/user.pin"
printf '9999' >"$dir/wrong.pin"
run 1 "$cli" verify --config "$nopin" --pin-file "$dir/wrong.pin"
expect "CKR_PIN_INCORRECT"
expect "login not tried: hsm-1 refused the PIN"
expect_not "9999"
run 2 "$cli" verify --config "$dir/missing.toml"

echo "sync-test: OK"
