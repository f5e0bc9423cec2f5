#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Acceptance tests of replication: objects made through libp11ha.so over 3 SoftHSM members are
# looked at on each member token directly (replication_probe on SoftHSM, pkcs11-tool), never
# only through p11ha. One case per run:
#   replication-test.sh probe-selftest   the probe's checks fail when they should (plain SoftHSM)
#   replication-test.sh no-domain        2+ members and no domain key: key creation refused
#   replication-test.sh set              a: RSA, EC, AES, generic, cert, data, unwrap, derive,
#                                           copy on all 3 members; AES across members
#   replication-test.sh java             b: keytool -genkeypair lands on all 3 members
#   replication-test.sh quorum-all       c: quorum "all", a member failing C_UnwrapKey
#   replication-test.sh majority-rejoin  d: quorum "majority", a member down, then sync
#   replication-test.sh destroy-rejoin   e: destroy while a member is down, restart, rejoin
#   replication-test.sh concurrent       f: two processes churning keys at the same time
#   replication-test.sh verify-sync      g: verify finds an object deleted on one member
#   replication-test.sh hidden           h: C_FindObjects never shows the domain key/tombstones
#   replication-test.sh policies         replication.non_extractable: trusted-wrap, refuse, local
# Environment (ctest sets it): P11HA_CLI, P11HA_MODULE, P11HA_REPLICATION_PROBE,
# P11HA_FARM_SCRIPT, P11HA_STAGE_TEST_MEMBERS, P11HA_TEST_MEMBER_SO, P11HA_SOFTHSM_MODULE;
# P11HA_KEEP_TEST_DIR=1 keeps the temp dir. A missing prerequisite is a failure, never a skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${1:-}
say() { echo "replication-test[$name]: $*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}
step() { echo "--- $*"; }

cli=${P11HA_CLI:-}
module=${P11HA_MODULE:-}
probe=${P11HA_REPLICATION_PROBE:-}
farm_script=${P11HA_FARM_SCRIPT:-$here/../../support/make-farm.sh}
softhsm=${P11HA_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -x "$cli" ] || fail "P11HA_CLI ('$cli') must name the built p11ha CLI"
[ -f "$module" ] || fail "P11HA_MODULE ('$module') must name the built libp11ha.so"
[ -x "$probe" ] || fail "P11HA_REPLICATION_PROBE ('$probe') must name replication_probe"
[ -x "$farm_script" ] || fail "make-farm.sh not found at $farm_script"
[ -f "$softhsm" ] || fail "SoftHSM module $softhsm not found (Debian package softhsm2)"
for tool in softhsm2-util:softhsm2 pkcs11-tool:opensc openssl:openssl timeout:coreutils; do
  command -v "${tool%%:*}" >/dev/null || fail "${tool%%:*} not found (Debian package ${tool#*:})"
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-replication.XXXXXX")
# shellcheck disable=SC2317  # reached through the EXIT trap
finish() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    local log
    while IFS= read -r log; do
      echo "--- last lines of $log"
      tail -n 30 "$log"
    done < <(find "$dir" -name p11ha.log 2>/dev/null)
  fi
  if [ "${P11HA_KEEP_TEST_DIR:-0}" = 1 ]; then say "kept $dir"; else rm -rf "$dir"; fi
  exit "$rc"
}
trap finish EXIT

# run EXPECTED_RC CMD...: no stdin (as in CI), stdout+stderr kept in $out and shown indented
# (with quiet=1 only when the exit code is not the expected one).
run_timeout=${REPLICATION_STEP_TIMEOUT:-180}
quiet=0
run() {
  local expected=$1 rc=0
  shift
  # timeout runs programs only: shell functions go through a child bash (they are exported).
  if declare -F "$1" >/dev/null; then set -- bash -c '"$@"' bash "$@"; fi
  out=$(timeout -k 5 "$run_timeout" "$@" </dev/null 2>&1) || rc=$?
  if [ "$quiet" = 0 ] || [ "$rc" != "$expected" ]; then printf '%s\n' "$out" | sed 's/^/    /'; fi
  [ "$rc" != 124 ] || fail "timed out after ${run_timeout}s: $*"
  [ "$rc" = "$expected" ] || fail "exit $rc, expected $expected: $*"
}
expect() { grep -qF -- "$1" <<<"$out" || fail "output lacks '$1'"; }

# The current farm: new_farm sets farm, sources its env (SOFTHSM2_CONF, P11HA_CONFIG).
farm=
new_farm() {  # NAME MEMBERS [--no-domain]
  farm=$dir/$1
  "$farm_script" "$farm" "$2" --log-level info >/dev/null || fail "make-farm.sh $farm $2"
  # shellcheck source=/dev/null
  . "$farm/env"
  if [ "${3:-}" != --no-domain ]; then
    step "p11ha domain create on $1 ($2 members, 5 shares, threshold 3)"
    run 0 "$cli" domain create --shares 5 --threshold 3 --out "$farm/shares" --so-pin-file "$farm/so.pin" \
      --pin-file "$farm/user.pin" --config "$P11HA_CONFIG"
  fi
}

# set_quorum CONFIG VALUE: VALUE is TOML ("\"all\"", "\"majority\"", 2).
set_quorum() {
  sed -i '/^quorum *=/d' "$1"
  grep -q '^\[replication\]' "$1" || printf '\n[replication]\n' >>"$1"
  sed -i "/^\[replication\]/a quorum = $2" "$1"
}

# Through p11ha (the config in P11HA_CONFIG), and on one member token directly.
through() { "$probe" "$1" "$module" ha-test 1234 "${@:2}"; }
direct() { "$probe" "$1" "$softhsm" "$2" 1234 "${@:3}"; }
admin() { "$cli" "$1" "${@:2}" --config "$P11HA_CONFIG" --pin-file "$farm/user.pin"; }
export -f through direct admin
export cli module probe softhsm farm

# listing TOKEN: "CLASS LABEL" lines of the member token, read directly (into $objects).
listing() {
  quiet=1 run 0 direct list "$1"
  objects=$out
}
# count_in LISTING CLASS LABEL
count_in() { grep -cxF -- "$2 $3" <<<"$1" || true; }
must_hold() {  # TOKEN CLASS LABEL: exactly once
  listing "$1"
  [ "$(count_in "$objects" "$2" "$3")" = 1 ] || fail "$1 should hold $2 '$3' exactly once"
}
must_lack() {  # TOKEN LABEL...: no object of any class with these labels
  local label
  listing "$1"
  for label in "${@:2}"; do
    ! grep -qE -- "^[a-z]+ $label\$" <<<"$objects" || fail "$1 still holds '$label': $(grep -E " $label\$" <<<"$objects")"
  done
}

# A member outage that every process sees: the member's token directory leaves the SoftHSM
# store, as when an HSM partition is unreachable; p11ha finds no token and counts it down.
token_dir() {
  local d pad
  pad=$(printf '%-32s' "$1")
  for d in "$farm"/tokens/*/; do
    if LC_ALL=C grep -qaF -- "$pad" "$d/token.object"; then
      echo "${d%/}"
      return
    fi
  done
  fail "no token directory for $1 in $farm/tokens"
}
take_down() {
  local d
  d=$(token_dir "$1")
  mkdir -p "$farm/away-$1"
  mv "$d" "$farm/away-$1/"
  ! direct list "$1" >/dev/null 2>&1 || fail "$1 is still visible after its token left the store"
}
bring_back() {
  mv "$farm/away-$1"/* "$farm/tokens/"
  rmdir "$farm/away-$1"
}

# fps_of TEXT: the sorted "fp NAME HEX" lines. same_fps A B WHAT fails when they differ.
fps_of() { grep '^fp ' <<<"$1" | sort; }
same_fps() {
  [ -n "$1" ] || fail "no fingerprints from p11ha to compare with"
  [ "$1" = "$2" ] || fail "$3: fingerprints differ from p11ha's:
$(diff <(echo "$1") <(echo "$2") || true)"
}
# check_member TOKEN PREFIX EXPECTED_FPS: the whole set, directly, same keys as p11ha made.
check_member() {
  step "$1 holds set $2, every key usable, same material as made through p11ha"
  run 0 direct check "$1" "$2"
  same_fps "$3" "$(fps_of "$out")" "$1"
}
aes_labels() { printf '%s ' "$1-aes" "$1-kek" "$1-unwrapped" "$1-derived" "$1-copied"; }
# set_objects PREFIX: the "CLASS LABEL" lines of the set, sorted as `list` prints them.
set_objects() {
  local p=$1
  printf '%s\n' "cert $p-cert" "data $p-data" "priv $p-p256" "priv $p-p384" "priv $p-rsa" "pub $p-p256" \
    "pub $p-p384" "pub $p-rsa" "secret $p-aes" "secret $p-copied" "secret $p-derived" "secret $p-generic" \
    "secret $p-kek" "secret $p-unwrapped" | LC_ALL=C sort
}

case_probe_selftest() {
  # The probe must fail on what the replication cases rely on it to catch.
  new_farm s 3
  step "a set made directly on m1 with the birth policy passes check on m1"
  run 0 direct create m1 s --explicit-policy
  local made
  made=$(fps_of "$out")
  run 0 direct check m1 s
  same_fps "$made" "$(fps_of "$out")" m1
  step "check fails on a token without the set"
  run 1 direct check m2 s
  expect "s-rsa: expected 2 object(s) exactly once, found none"
  step "check fails on keys born without CKA_EXTRACTABLE/CKA_WRAP_WITH_TRUSTED"
  run 0 direct create m2 s
  run 1 direct check m2 s
  expect "s-p256: CKA_WRAP_WITH_TRUSTED is FALSE, expected TRUE"
  expect "s-aes: CKA_EXTRACTABLE is FALSE, expected TRUE"
  step "other keys under the same labels give other fingerprints"
  [ "$made" != "$(fps_of "$out")" ] || fail "m1 and m2 hold different keys but the same fingerprints"
  # kek, unwrapped, derived, copied, data hold known values: those must agree.
  [ "$(grep -E 'fp (kek|unwrapped|derived|copied|data) ' <<<"$made")" = \
    "$(fps_of "$out" | grep -E 'fp (kek|unwrapped|derived|copied|data) ')" ] ||
    fail "known-value objects differ between m1 and m2"
  step "AES across tokens: the same known key works, different keys do not"
  run 0 direct aes-cross m1 m2 s-kek s-unwrapped s-derived s-copied
  run 1 direct aes-cross m1 m2 s-aes
  step "a private key deleted, an object duplicated, a foreign public key: check fails"
  pkcs11-tool --module "$softhsm" --token-label m1 --login --pin 1234 --delete-object --type privkey \
    --label s-p256 >/dev/null 2>&1 || fail "pkcs11-tool --delete-object"
  run 1 direct check m1 s
  expect "s-p256: expected 2 object(s) exactly once, found pubx1"
  echo other >"$dir/other"
  pkcs11-tool --module "$softhsm" --token-label m1 --login --pin 1234 --write-object "$dir/other" \
    --type data --label s-data --private >/dev/null 2>&1 || fail "pkcs11-tool --write-object"
  run 1 direct check m1 s
  expect "s-data: expected 1 object(s) exactly once, found datax2"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/foreign.pem"
  openssl ec -in "$dir/foreign.pem" -pubout -outform DER -out "$dir/foreign.der" 2>/dev/null
  pkcs11-tool --module "$softhsm" --token-label m3 --login --pin 1234 --keypairgen --key-type EC:prime256v1 \
    --label s-p256 --id 02 >/dev/null 2>&1 || fail "pkcs11-tool --keypairgen"
  pkcs11-tool --module "$softhsm" --token-label m3 --login --pin 1234 --delete-object --type pubkey \
    --label s-p256 >/dev/null 2>&1 || fail "pkcs11-tool --delete-object pubkey"
  pkcs11-tool --module "$softhsm" --token-label m3 --login --pin 1234 --write-object "$dir/foreign.der" \
    --type pubkey --label s-p256 >/dev/null 2>&1 || fail "pkcs11-tool --write-object pubkey"
  run 1 direct check m3 s
  expect "s-p256: the ECDSA signature does not verify under the public key (OpenSSL)"
  step "p11ha's own objects, seen directly, are reported as leaks"
  run 1 direct hidden m1
  expect "LEAK: query 'label p11ha-domain' found 1 object(s)"
  step "the member outage is real: a token taken away is not found, and comes back"
  take_down m2
  bring_back m2
  run 0 direct list m2
}

case_no_domain() {
  new_farm n 3 --no-domain
  step "3 members, no domain key: key creation through p11ha is refused"
  run 3 through gen ec n-ec
  expect "rv CKR_FUNCTION_FAILED"
  run 3 through gen aes n-aes
  expect "rv CKR_FUNCTION_FAILED"
  grep -qF "p11ha domain create" "$farm/p11ha.log" || fail "p11ha.log does not name 'p11ha domain create'"
  for t in m1 m2 m3; do must_lack "$t" n-ec n-aes; done
  step "one member needs no domain key"
  new_farm n1 1 --no-domain
  run 0 through gen ec n1-ec
  must_hold m1 priv n1-ec
}

case_set() {
  new_farm a 3
  step "the set made through p11ha (RSA-2048, P-256, P-384, AES-256, generic secret, certificate," \
    "data, imported, unwrapped, derived and copied AES keys)"
  run 0 through create a
  local made
  made=$(fps_of "$out")
  for t in m1 m2 m3; do check_member "$t" a "$made"; done
  step "each member holds the set and its domain key, nothing else (no staging or session leftovers)"
  local expected
  expected=$( (set_objects a; echo "secret p11ha-domain") | LC_ALL=C sort)
  for t in m1 m2 m3; do
    listing "$t"
    [ "$(LC_ALL=C sort <<<"$objects")" = "$expected" ] || fail "$t holds other objects than expected:
$(diff <(echo "$expected") <(LC_ALL=C sort <<<"$objects") || true)"
  done
  step "what one member encrypts another decrypts, for every AES key of the set"
  # shellcheck disable=SC2046  # one argument per label
  run 0 direct aes-cross m1 m2 $(aes_labels a)
  # shellcheck disable=SC2046
  run 0 direct aes-cross m2 m3 $(aes_labels a)
  # shellcheck disable=SC2046
  run 0 direct aes-cross m3 m1 $(aes_labels a)
}

case_java() {
  local tool
  for tool in java keytool; do
    command -v "$tool" >/dev/null || fail "$tool not found (Debian package openjdk-17-jdk-headless)"
  done
  new_farm b 3
  # The virtual slot's id is [cluster] slot_id = 0 (make-farm.sh).
  printf 'name = p11haReplication\nlibrary = %s\nslot = 0\n' "$module" >"$dir/sunpkcs11.cfg"
  local keystore=(-keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11
    -providerArg "$dir/sunpkcs11.cfg" -storepass 1234)
  local alias
  for alias in java-ec java-rsa; do
    step "keytool -genkeypair $alias through p11ha"
    if [ "$alias" = java-ec ]; then
      run 0 keytool -genkeypair -alias "$alias" -keyalg EC -groupname secp256r1 -dname "CN=$alias" "${keystore[@]}"
    else
      run 0 keytool -genkeypair -alias "$alias" -keyalg RSA -keysize 2048 -dname "CN=$alias" "${keystore[@]}"
    fi
    run 0 keytool -exportcert -rfc -alias "$alias" -file "$dir/$alias.pem" "${keystore[@]}"
    openssl x509 -in "$dir/$alias.pem" -pubkey -noout >"$dir/$alias.pub" || fail "openssl x509 -pubkey"
  done
  run 0 keytool -list "${keystore[@]}"
  expect "java-ec, "
  expect "java-rsa, "
  for t in m1 m2 m3; do
    for alias in java-ec java-rsa; do
      step "$t holds $alias: its certificate once, its private key (CKA_ID = alias) signs for it"
      must_hold "$t" cert "$alias"
      # SunPKCS11 names the private key by CKA_ID only.
      run 0 direct key-check "$t" "id=$alias" "$dir/$alias.pub"
    done
  done
}

case_quorum_all() {
  [ -x "${P11HA_STAGE_TEST_MEMBERS:-}" ] || fail "P11HA_STAGE_TEST_MEMBERS must name stage-test-members.sh"
  [ -f "${P11HA_TEST_MEMBER_SO:-}" ] || fail "P11HA_TEST_MEMBER_SO must name the test member library"
  farm=$dir/c
  "$P11HA_STAGE_TEST_MEMBERS" "$farm" 3 "$P11HA_TEST_MEMBER_SO" || fail "stage-test-members.sh"
  printf '1234' >"$farm/user.pin"
  printf '12345678' >"$farm/so.pin"
  chmod 600 "$farm/user.pin" "$farm/so.pin"
  # "priority": hsm-1 makes every key, so tm-3 is always a copy target and meets C_UnwrapKey.
  {
    printf '[cluster]\nlabel = "ha-test"\nslot_id = 0\n\n'
    for i in 1 2 3; do
      printf '[[member]]\nname = "tm-%s"\nmodule = "%s/member-%s.so"\ntoken = "pkcs11:token=m%s"\n\n' \
        "$i" "$farm" "$i" "$i"
    done
    printf '[auth]\npin_file = "%s/user.pin"\n\n[balancing]\npolicy = "priority"\n\n' "$farm"
    printf '[replication]\nquorum = "all"\n\n[log]\nlevel = "info"\nfile = "%s/p11ha.log"\n' "$farm"
  } >"$farm/p11ha.toml"
  export P11HA_CONFIG=$farm/p11ha.toml
  step "p11ha domain create through the test members"
  run 0 "$cli" domain create --shares 5 --threshold 3 --out "$farm/shares" --so-pin-file "$farm/so.pin" \
    --pin-file "$farm/user.pin" --config "$P11HA_CONFIG"
  member_list() {  # I: member i's token, directly, with its own SoftHSM store
    quiet=1 run 0 env SOFTHSM2_CONF="$farm/softhsm2-$1.conf" "$probe" list "$softhsm" "m$1" 1234
    objects=$out
  }

  step "tm-3 fails C_UnwrapKey: with quorum \"all\" creating keys fails with CKR_DEVICE_ERROR"
  echo "fail C_UnwrapKey CKR_DEVICE_ERROR" >"$farm/member-3.so.ctl"
  # The member writes its call counts at C_Finalize: proof that the refusal came from the fault.
  rm -f "$farm/member-3.so.counts"
  run 3 through gen ec c-ec
  expect "rv CKR_DEVICE_ERROR"
  [ -f "$farm/member-3.so.counts" ] || fail "tm-3 wrote no call counts: p11ha never finalized it"
  local unwraps
  unwraps=$(sed -n 's/^C_UnwrapKey \([0-9]*\)$/\1/p' "$farm/member-3.so.counts")
  [ "${unwraps:-0}" -ge 1 ] || fail "tm-3 never saw C_UnwrapKey, so the fault was not what refused the key"
  run 3 through gen aes c-aes
  expect "rv CKR_DEVICE_ERROR"
  run 3 through gen rsa c-rsa
  expect "rv CKR_DEVICE_ERROR"
  step "no member keeps a copy (private, public or secret), checked directly"
  for i in 1 2 3; do
    member_list "$i"
    ! grep -qE ' c-(ec|aes|rsa)$' <<<"$objects" || fail "tm-$i keeps a copy: $(grep -E ' c-' <<<"$objects")"
  done
  run 0 through list
  ! grep -qE ' c-(ec|aes|rsa)$' <<<"$out" || fail "p11ha still lists a refused key"

  step "the fault cleared: the same create succeeds and reaches all 3"
  echo "clear" >"$farm/member-3.so.ctl"
  run 0 through gen ec c-ok
  for i in 1 2 3; do
    member_list "$i"
    [ "$(count_in "$objects" priv c-ok)" = 1 ] || fail "tm-$i lacks the private key c-ok"
    [ "$(count_in "$objects" pub c-ok)" = 1 ] || fail "tm-$i lacks the public key c-ok"
  done
}

case_majority_rejoin() {
  new_farm d 3
  take_down m3
  step "m3 down, quorum \"all\": the create fails and m1, m2 keep nothing"
  set_quorum "$P11HA_CONFIG" '"all"'
  run 3 through gen ec d-all
  expect "rv CKR_DEVICE_ERROR"
  for t in m1 m2; do must_lack "$t" d-all; done
  step "m3 down, quorum \"majority\": the set is made and lands on m1 and m2"
  set_quorum "$P11HA_CONFIG" '"majority"'
  run 0 through create d
  local made
  made=$(fps_of "$out")
  for t in m1 m2; do check_member "$t" d "$made"; done
  step "m3 returns without the set; verify reports the drift"
  bring_back m3
  run 1 direct check m3 d
  must_lack m3 d-all
  run 1 admin verify
  step "p11ha sync copies the set to m3"
  run 0 admin sync
  check_member m3 d "$made"
  # shellcheck disable=SC2046
  run 0 direct aes-cross m1 m3 $(aes_labels d)
  must_lack m3 d-all
  run 0 admin verify
}

case_destroy_rejoin() {
  new_farm e 3
  step "keys on all 3 members"
  run 0 through gen ec e-ec
  run 0 through gen aes e-aes
  run 0 through gen ec e-keep
  for t in m1 m2 m3; do
    must_hold "$t" priv e-ec
    must_hold "$t" secret e-aes
  done
  take_down m3
  step "m3 down: destroy through p11ha succeeds and leaves tombstones on m1 and m2"
  run 0 through destroy e-ec
  expect "destroyed 2"
  run 0 through destroy e-aes
  for t in m1 m2; do
    must_lack "$t" e-ec e-aes
    [ "$(count_in "$objects" data p11ha-tombstone)" -ge 1 ] || fail "$t has no p11ha-tombstone"
    must_hold "$t" priv e-keep
  done
  step "a new process (restart), m3 still down: the destroyed keys stay gone"
  run 0 through list
  ! grep -qE ' e-(ec|aes)$' <<<"$out" || fail "p11ha lists a destroyed key after a restart"
  run 0 through gen ec e-after
  step "m3 returns, still holding the keys it missed the destroy of"
  bring_back m3
  must_hold m3 priv e-ec
  must_hold m3 secret e-aes
  local pass
  for pass in 1 2; do
    step "p11ha sync (pass $pass): the keys are gone from all 3 and stay gone"
    run 0 admin sync
    for t in m1 m2 m3; do
      must_lack "$t" e-ec e-aes
      [ "$(count_in "$objects" priv e-keep)" = 1 ] || fail "$t lost e-keep"
      [ "$(count_in "$objects" priv e-after)" = 1 ] || fail "$t lacks e-after after sync"
    done
  done
  run 0 through list
  ! grep -qE ' e-(ec|aes)$' <<<"$out" || fail "a destroyed key reappeared through p11ha"
  step "every member applied the deletion, so no tombstone is left (DESIGN.md \"Hidden objects\")"
  for t in m1 m2 m3; do
    must_lack "$t" e-ec e-aes p11ha-tombstone
  done
}

case_concurrent() {
  new_farm f 3
  local n=${REPLICATION_CHURN:-100}
  step "two processes each create $n EC key pairs through p11ha and delete every other one, at once"
  local who
  declare -A pid rc
  # b starts once a has logged in. Every C_Login rewrites SoftHSM 2.6.1's token.object, and a
  # process that reads that file mid-rewrite can lose the token (README "Behaviour notes"): two
  # processes starting at the same moment sometimes did, and one then failed every key creation.
  # p11ha now takes such a member down and its reconnect gets the token back, but a member down
  # when its process ends would miss that process's last keys, which this test counts as drift.
  for who in a b; do
    timeout -k 5 600 "$probe" churn "$module" ha-test 1234 "$n" "f-$who" >"$dir/churn-$who.out" 2>&1 </dev/null &
    pid[$who]=$!
    [ "$who" = b ] && break
    for _ in $(seq 1 600); do
      grep -q '^started ' "$dir/churn-a.out" && break
      kill -0 "${pid[a]}" 2>/dev/null || break
      sleep 0.1
    done
  done
  # Both are waited for before judging either: a failed one must not leave the other running.
  for who in a b; do
    rc[$who]=0
    wait "${pid[$who]}" || rc[$who]=$?
  done
  for who in a b; do
    grep -v '^\(kept\|deleted\|started\|finished\) ' "$dir/churn-$who.out" | sed 's/^/    /' || true
    [ "${rc[$who]}" = 0 ] || fail "churn process f-$who exited ${rc[$who]}"
  done
  local a0 a1 b0 b1
  a0=$(sed -n 's/^started //p' "$dir/churn-a.out"); a1=$(sed -n 's/^finished //p' "$dir/churn-a.out")
  b0=$(sed -n 's/^started //p' "$dir/churn-b.out"); b1=$(sed -n 's/^finished //p' "$dir/churn-b.out")
  if [ "$a0" -ge "$b1" ] || [ "$b0" -ge "$a1" ]; then
    fail "the two processes did not overlap (a: $a0..$a1 ms, b: $b0..$b1 ms)"
  fi
  say "the processes overlapped for $(( (a1 < b1 ? a1 : b1) - (a0 > b0 ? a0 : b0) )) ms"
  local kept deleted expected label
  kept=$(sed -n 's/^kept //p' "$dir"/churn-a.out "$dir"/churn-b.out | sort)
  deleted=$(sed -n 's/^deleted //p' "$dir"/churn-a.out "$dir"/churn-b.out | sort)
  [ "$(wc -l <<<"$kept")" = "$n" ] || fail "expected $n kept keys in all, got $(wc -l <<<"$kept")"
  [ "$(wc -l <<<"$deleted")" = "$n" ] || fail "expected $n deleted keys in all, got $(wc -l <<<"$deleted")"
  expected=$(while read -r label; do printf 'priv %s\npub %s\n' "$label" "$label"; done <<<"$kept" | sort)
  for t in m1 m2 m3; do
    step "$t holds every kept key exactly once and none of the deleted ones"
    listing "$t"
    local actual
    actual=$(grep -E '^(priv|pub) f-[ab]-[0-9]+$' <<<"$objects" | sort || true)
    [ "$actual" = "$expected" ] || fail "$t differs from what the processes saw:
$(diff <(echo "$expected") <(echo "$actual") | head -n 20 || true)"
  done
  step "through p11ha, too, every kept key shows once and no deleted one shows"
  quiet=1 run 0 through list
  [ "$(grep -E '^(priv|pub) f-[ab]-[0-9]+$' <<<"$out" | sort || true)" = "$expected" ] ||
    fail "p11ha lists other keys than the processes kept"
  step "p11ha verify finds no drift"
  run 0 admin verify
}

case_verify_sync() {
  new_farm g 3
  run 0 through create g
  local made
  made=$(fps_of "$out")
  step "no drift after a create"
  run 0 admin verify
  step "objects deleted on m2 directly, outside p11ha (pkcs11-tool --delete-object)"
  local type label
  for type in privkey:g-p256 secrkey:g-aes cert:g-cert data:g-data; do
    label=${type#*:}
    pkcs11-tool --module "$softhsm" --token-label m2 --login --pin 1234 --delete-object --type "${type%%:*}" \
      --label "$label" </dev/null >/dev/null 2>&1 || fail "pkcs11-tool could not delete $type on m2"
  done
  run 1 direct check m2 g
  step "p11ha verify exits 1 and names the member"
  run 1 admin verify
  expect "hsm-2"
  step "p11ha sync --dry-run changes nothing"
  # Exit 1: the drift is still there, a dry run repairs nothing (docs/cli-sync.md).
  run 1 admin sync --dry-run
  run 1 direct check m2 g
  run 1 admin verify
  step "p11ha sync repairs m2; verify then exits 0"
  run 0 admin sync
  for t in m1 m2 m3; do check_member "$t" g "$made"; done
  run 0 admin verify
}

case_hidden() {
  new_farm h 3
  run 0 through create h
  take_down m3
  step "a destroy while m3 is down leaves a tombstone on m1 (checked directly)"
  run 0 through destroy h-data
  listing m1
  [ "$(count_in "$objects" data p11ha-tombstone)" -ge 1 ] || fail "m1 holds no tombstone"
  [ "$(count_in "$objects" secret p11ha-domain)" = 1 ] || fail "m1 holds no domain key"
  step "no C_FindObjects through p11ha returns the domain key or a tombstone"
  run 0 through hidden
  run 0 through list
  local expected
  expected=$(set_objects h | grep -vx 'data h-data')
  [ "$(LC_ALL=C sort <<<"$out")" = "$expected" ] || fail "p11ha lists other objects than the set minus h-data:
$(diff <(echo "$expected") <(LC_ALL=C sort <<<"$out") || true)"
  listing m1
  [ "$(count_in "$objects" data p11ha-tombstone)" -ge 1 ] || fail "the tombstone vanished during the check"
  bring_back m3
}

# replication.non_extractable, driven with pkcs11-tool, which asks for CKA_PRIVATE,
# CKA_SENSITIVE and CKA_EXTRACTABLE = FALSE on a secret key unless told otherwise.
case_policies() {
  new_farm p 3
  set_policy() {
    sed -i '/^non_extractable *=/d' "$P11HA_CONFIG"
    grep -q '^\[replication\]' "$P11HA_CONFIG" || printf '\n[replication]\n' >>"$P11HA_CONFIG"
    sed -i "/^\[replication\]/a non_extractable = \"$1\"" "$P11HA_CONFIG"
  }
  tool() { pkcs11-tool --module "$module" --login --pin 1234 "$@"; }
  export -f tool
  access_on() {  # TOKEN LABEL: the "Access:" line of that secret key, read directly
    pkcs11-tool --module "$softhsm" --token-label "$1" --login --pin 1234 --list-objects --type secrkey \
      --label "$2" 2>&1 | sed -n 's/^ *Access: *//p'
  }
  step "trusted-wrap (default): the FALSEs are replaced, the key is on all 3, sensitive and extractable"
  run 0 tool --keygen --key-type AES:32 --label p-tw
  for t in m1 m2 m3; do
    must_hold "$t" secret p-tw
    grep -q 'sensitive' <<<"$(access_on "$t" p-tw)" || fail "$t: p-tw is not sensitive: $(access_on "$t" p-tw)"
    grep -q 'extractable' <<<"$(access_on "$t" p-tw)" || fail "$t: p-tw is not extractable"
  done
  step "trusted-wrap: an Ed25519 key cannot be wrapped, so it is refused and no member keeps it"
  run 1 tool --keypairgen --key-type EC:edwards25519 --label p-ed
  for t in m1 m2 m3; do must_lack "$t" p-ed; done
  grep -q 'cannot be wrapped by the domain key' "$farm/p11ha.log" || fail "no log line says why Ed25519 was refused"

  set_policy refuse
  step "refuse: the same request fails and no member keeps anything"
  run 1 tool --keygen --key-type AES:32 --label p-refused
  expect CKR_ATTRIBUTE_VALUE_INVALID
  for t in m1 m2 m3; do must_lack "$t" p-refused; done

  set_policy local
  step "local: the key is made as asked on one member only; status and verify say so, not as drift"
  run 0 tool --keygen --key-type AES:32 --label p-local
  must_hold m1 secret p-local
  for t in m2 m3; do must_lack "$t" p-local; done
  run 0 tool --keypairgen --key-type EC:edwards25519 --label p-ed-local
  must_hold m1 priv p-ed-local
  for t in m1 m2 m3; do must_hold "$t" pub p-ed-local; done
  listing m2
  [ "$(count_in "$objects" priv p-ed-local)" = 0 ] || fail "m2 holds the local Ed25519 private key"
  run 0 "$cli" status --config "$P11HA_CONFIG"
  expect "p-local"
  expect "p-ed-local"
  run 0 admin verify
  expect 'local: AES secret key "p-local"'
}

case $name in
  probe-selftest) case_probe_selftest ;;
  no-domain) case_no_domain ;;
  set) case_set ;;
  java) case_java ;;
  quorum-all) case_quorum_all ;;
  majority-rejoin) case_majority_rejoin ;;
  destroy-rejoin) case_destroy_rejoin ;;
  concurrent) case_concurrent ;;
  verify-sync) case_verify_sync ;;
  hidden) case_hidden ;;
  policies) case_policies ;;
  *)
    echo "usage: replication-test.sh probe-selftest|no-domain|set|java|quorum-all|majority-rejoin|" \
      "destroy-rejoin|concurrent|verify-sync|hidden|policies" >&2
    exit 2 ;;
esac
say OK
