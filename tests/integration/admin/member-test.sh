#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `p11ha member check|add NAME` end to end on a 3-member SoftHSM farm with a domain key and keys
# made through libp11ha.so. Refusals (another domain key, another user PIN, no mechanisms in
# common, a non-empty token) must leave the candidate token untouched; a good token receives
# the cluster's keys and then signs alone through p11ha; --preserve-existing spreads a token's
# own objects; a copy that fails half-way is undone. Every token is checked directly with
# pkcs11-tool, never only through p11ha.
# Environment: P11HA_CLI, P11HA_MODULE (libp11ha.so), P11HA_REPLICATION_PROBE, P11HA_FARM_SCRIPT,
# P11HA_SOFTHSM_MODULE, P11HA_STAGE_TEST_MEMBERS + P11HA_TEST_MEMBER_SO (members that filter
# their mechanisms or fail on demand); P11HA_KEEP_TEST_DIR=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cli=${P11HA_CLI:?P11HA_CLI must name the p11ha CLI}
module=${P11HA_MODULE:?P11HA_MODULE must name libp11ha.so}
probe=${P11HA_REPLICATION_PROBE:?P11HA_REPLICATION_PROBE must name replication_probe}
stage=${P11HA_STAGE_TEST_MEMBERS:?P11HA_STAGE_TEST_MEMBERS must name stage-test-members.sh}
test_member=${P11HA_TEST_MEMBER_SO:?P11HA_TEST_MEMBER_SO must name the test member module}
farm_script=${P11HA_FARM_SCRIPT:-$here/../../support/make-farm.sh}
softhsm=${P11HA_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
for tool in softhsm2-util:softhsm2 pkcs11-tool:opensc openssl:openssl timeout:coreutils; do
  command -v "${tool%%:*}" >/dev/null || { echo "member-test: ${tool%%:*} not found (Debian package ${tool#*:})" >&2; exit 1; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-member.XXXXXX")
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
  if [ "${P11HA_KEEP_TEST_DIR:-0}" = 1 ]; then echo "member-test: kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

fail() {
  echo "member-test: FAIL: $*" >&2
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

# p11 TOKEN ARGS...: pkcs11-tool on one member token, directly (SOFTHSM2_CONF and PIN overridable).
p11() {
  local token=$1
  shift
  pkcs11-tool --module "$softhsm" --token-label "$token" --login --pin "${PIN:-1234}" "$@" 2>/dev/null
}
# objects TOKEN: every object on the token (pkcs11-tool prints one unindented line per object).
objects() { p11 "$1" --list-objects | grep -c '^[A-Z]' || true; }
# count TOKEN TYPE LABEL: objects of that pkcs11-tool type and label.
count() {
  p11 "$1" --list-objects --type "$2" | sed -n "s/^ *label: *'\{0,1\}\([^']*\)'\{0,1\}\$/\1/p" |
    grep -cx -- "$3" || true
}
# with_member BASE NEW NAME MODULE TOKEN: NEW is BASE with one more member before [auth].
with_member() {
  cp "$1" "$2"
  sed -i "/^\[auth\]/i [[member]]\nname = \"$3\"\nmodule = \"$4\"\ntoken = \"pkcs11:token=$5\"\n" "$2"
}
new_token() {  # LABEL [USER_PIN]
  softhsm2-util --init-token --free --label "$1" --so-pin 12345678 --pin "${2:-1234}" >/dev/null
}
install_domain() {  # CONFIG NAME
  run 0 "$cli" domain install --member "$2" --share "$dir/shares/share-1" --share "$dir/shares/share-2" \
    --so-pin-file "$dir/so.pin" --config "$1"
  expect "$2: installed domain key $domain"
}

step "a 3-member farm with a domain key, and keys made through p11ha (born wrappable)"
"$farm_script" "$dir" 3 --domain "$cli" >/dev/null
# shellcheck source=/dev/null
. "$dir/env"
conf=$dir/p11ha.toml
run 0 "$cli" verify
domain=$(sed -n 's/^cluster "ha-test", 3 members, domain \([0-9a-f]\{16\}\),.*/\1/p' <<<"$out")
[ -n "$domain" ] || fail "verify named no domain"
# The probe, not pkcs11-tool, makes them: on the sanitizer build only instrumented programs
# may load libp11ha.so.
for key in "ec ec-a" "rsa rsa-a" "aes aes-a"; do
  # shellcheck disable=SC2086  # "KIND LABEL"
  run 0 "$probe" gen "$module" ha-test 1234 $key
done
run 0 "$cli" verify
expect "verify: no drift"
cluster_objects=$(objects m1)
[ "$cluster_objects" = 6 ] || fail "m1 holds $cluster_objects objects, expected 6 (domain key, 2 pairs, AES key)"
# pkcs11-tool --sign and --read-object choose keys by --id (--sign ignores --label).
ec_id=$(p11 m1 --list-objects --type privkey | awk '/^ *label: *ec-a$/ {on = 1; next} on && /^ *ID:/ {print $2; exit}')
[ -n "$ec_id" ] || fail "no CKA_ID for ec-a on m1"
p11 m1 --read-object --type pubkey --id "$ec_id" -o "$dir/ec-a.der" >/dev/null || fail "exporting ec-a's public key"
openssl pkey -pubin -inform DER -in "$dir/ec-a.der" -out "$dir/ec-a.pem"

step "an unknown member (exit 2), a member that is down (exit 1), no PIN source (exit 2)"
run 2 "$cli" member check hsm-9
expect "no member named 'hsm-9'"
run 2 "$cli" member add hsm-9
with_member "$conf" "$dir/gone.toml" hsm-gone "$softhsm" m99
run 1 "$cli" member add hsm-gone --config "$dir/gone.toml"
expect "FAIL  reachable: hsm-gone is down (no token matches 'pkcs11:token=m99')"
expect "member add hsm-gone refused: 1 check failed"
sed 's|^pin_file = .*|pin_file = ""|' "$conf" >"$dir/nopin.toml"
run 2 "$cli" member check hsm-1 --config "$dir/nopin.toml"
expect "no terminal"
run 0 "$cli" member check hsm-1 --config "$dir/nopin.toml" --pin-file "$dir/user.pin"
expect "warn  objects: hsm-1 holds 5 application objects; member add keeps them only with --preserve-existing"

step "a token of another domain is refused, and nothing is written to it"
new_token m5
printf '[cluster]\nlabel = "other"\n\n[[member]]\nname = "x"\nmodule = "%s"\ntoken = "pkcs11:token=m5"\n\n[auth]\npin_file = "%s"\n' \
  "$softhsm" "$dir/user.pin" >"$dir/other.toml"
run 0 "$cli" domain create --shares 2 --threshold 2 --out "$dir/other-shares" --so-pin-file "$dir/so.pin" \
  --config "$dir/other.toml"
other=$(sed -n 's/^domain check value \([0-9a-f]\{16\}\)$/\1/p' <<<"$out")
if [ -z "$other" ] || [ "$other" = "$domain" ]; then fail "no second domain ('$other')"; fi
with_member "$conf" "$dir/c5.toml" hsm-5 "$softhsm" m5
before=$(objects m5)
run 1 "$cli" member check hsm-5 --config "$dir/c5.toml"
expect "FAIL  domain key: hsm-5 holds domain key $other, the cluster's is $domain"
run 1 "$cli" member add hsm-5 --config "$dir/c5.toml"
expect "FAIL  domain key: hsm-5 holds domain key $other, the cluster's is $domain"
expect "member add hsm-5 refused: 1 check failed (see above); nothing was written"
expect_not "copying"
[ "$(objects m5)" = "$before" ] || fail "m5 holds $(objects m5) objects after the refusal, had $before"

step "a token whose user PIN differs is refused, named with its fix, and left alone"
new_token m6 4321
with_member "$conf" "$dir/c6.toml" hsm-6 "$softhsm" m6
before=$(PIN=4321 objects m6)
run 1 "$cli" member add hsm-6 --config "$dir/c6.toml"
expect "FAIL  user PIN: hsm-6 refused the cluster's user PIN (C_Login failed: CKR_PIN_INCORRECT)"
expect "fix: set hsm-6's user PIN to the cluster's (C_SetPIN / softhsm2-util) or correct [auth] pin_file"
expect "nothing was written"
[ "$(PIN=4321 objects m6)" = "$before" ] || fail "m6 changed after the refusal"
# Listed first, it refuses the PIN before the others are asked: their retries are not spent.
{
  printf '[cluster]\nlabel = "ha-test"\n\n'
  printf '[[member]]\nname = "hsm-6"\nmodule = "%s"\ntoken = "pkcs11:token=m6"\n\n' "$softhsm"
  for i in 1 2 3; do printf '[[member]]\nname = "hsm-%s"\nmodule = "%s"\ntoken = "pkcs11:token=m%s"\n\n' "$i" "$softhsm" "$i"; done
  printf '[auth]\npin_file = "%s"\n' "$dir/user.pin"
} >"$dir/c6-first.toml"
run 1 "$cli" member check hsm-6 --config "$dir/c6-first.toml"
expect "FAIL  user PIN: hsm-6 refused the cluster's user PIN"
expect "login not tried: hsm-6 refused the PIN"

step "a token with no mechanism in common is refused, and left alone"
t=$dir/t
"$stage" "$t" 2 "$test_member"
echo "mechanisms=0x80000001" >>"$t/member-1.so.conf"  # a vendor mechanism only: nothing the others offer
with_member "$conf" "$dir/c7.toml" hsm-7 "$t/member-1.so" m1
install_domain "$dir/c7.toml" hsm-7
t1() { SOFTHSM2_CONF=$t/softhsm2-1.conf objects m1; }
before=$(t1)
[ "$before" = 1 ] || fail "the test member holds $before objects, expected its domain key only"
run 1 "$cli" member add hsm-7 --config "$dir/c7.toml"
expect "ok    domain key: $domain"
expect "FAIL  replication mechanism: hsm-7 does not offer CKM_AES_KEY_WRAP_PAD"
expect "FAIL  mechanisms: hsm-7 lacks "
expect " mechanisms every other member offers: "
expect "CKM_ECDSA, "
expect "CKM_SHA256_RSA_PKCS, "
expect "member add hsm-7 refused: 2 checks failed"
[ "$(t1)" = "$before" ] || fail "the test member changed after the refusal"

step "a good empty token: member check passes, member add copies the cluster's keys"
new_token m4
with_member "$conf" "$dir/c4.toml" hsm-4 "$softhsm" m4
run 1 "$cli" member check hsm-4 --config "$dir/c4.toml"
expect "FAIL  domain key: hsm-4 holds no domain key (the cluster's is $domain); fix: p11ha domain install --member hsm-4"
install_domain "$dir/c4.toml" hsm-4
run 0 "$cli" member check hsm-4 --config "$dir/c4.toml"
for check in "reachable" "user PIN" "domain key" "replication mechanism" "mechanisms" "token flags" "free memory" "objects"; do
  expect "  ok    $check: "
done
expect "hsm-4: all checks passed"
[ "$(objects m4)" = 1 ] || fail "member check wrote to m4"
run 0 "$cli" member add hsm-4 --config "$dir/c4.toml"
expect "hsm-4: copied 5 objects from the cluster"
expect "verify: no drift"
expect "hsm-4 is in the config: running processes use it from their next C_Initialize"
[ "$(objects m4)" = "$cluster_objects" ] || fail "m4 holds $(objects m4) objects, the cluster's members $cluster_objects"
for object in "privkey ec-a" "pubkey ec-a" "privkey rsa-a" "pubkey rsa-a" "secrkey aes-a"; do
  # shellcheck disable=SC2086  # "TYPE LABEL"
  [ "$(count m4 $object)" = 1 ] || fail "m4 does not hold $object exactly once"
done
run 0 "$cli" verify --config "$dir/c4.toml"
expect "verify: no drift"

step "the new member alone serves signatures through p11ha that verify under the cluster's public key"
{
  printf '[cluster]\nlabel = "ha-test"\n\n[[member]]\nname = "hsm-4"\nmodule = "%s"\ntoken = "pkcs11:token=m4"\n\n' "$softhsm"
  printf '[auth]\npin_file = "%s"\n' "$dir/user.pin"
} >"$dir/only-4.toml"
printf 'signed by the new member' >"$dir/msg.txt"
openssl dgst -sha256 -binary -out "$dir/msg.sha256" "$dir/msg.txt"
if ldd "$module" 2>/dev/null | grep -q 'libasan\|libclang_rt.asan'; then
  # pkcs11-tool is not instrumented and cannot load the sanitizer build: the probe signs instead.
  run 0 env P11HA_CONFIG="$dir/only-4.toml" "$probe" key-check "$module" ha-test 1234 ec-a "$dir/ec-a.pem"
  expect "signature verifies"
else
  run 0 env P11HA_CONFIG="$dir/only-4.toml" pkcs11-tool --module "$module" --token-label ha-test --login --pin 1234 \
    --sign --id "$ec_id" -m ECDSA --signature-format openssl -i "$dir/msg.sha256" -o "$dir/msg.sig"
  run 0 openssl dgst -sha256 -verify "$dir/ec-a.pem" -signature "$dir/msg.sig" "$dir/msg.txt"
  expect "Verified OK"
fi

step "a non-empty token is refused without --preserve-existing, and left alone"
new_token m8
with_member "$conf" "$dir/c8.toml" hsm-8 "$softhsm" m8
printf '\n[replication]\nnon_extractable = "local"\n' >>"$dir/c8.toml"
install_domain "$dir/c8.toml" hsm-8
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/web.key" -out "$dir/web.pem" \
  -subj "/CN=web" -days 30 2>/dev/null
openssl x509 -in "$dir/web.pem" -outform der -out "$dir/web.der"
p11 m8 --write-object "$dir/web.der" --type cert --label web --id 0a01 >/dev/null || fail "writing the certificate"
printf 'release notes' >"$dir/notes.bin"
p11 m8 --write-object "$dir/notes.bin" --type data --label notes --private >/dev/null || fail "writing the data object"
# Made directly, the private key is not CKA_EXTRACTABLE: it can live on m8 only.
p11 m8 --keypairgen --key-type EC:prime256v1 --label own --id 0b01 >/dev/null || fail "generating a key on m8"
before=$(objects m8)
run 1 "$cli" member add hsm-8 --config "$dir/c8.toml"
expect "FAIL  objects: hsm-8 holds 4 application objects (1 cannot be replicated and would stay on it); fix: --preserve-existing"
expect "nothing was written"
[ "$(objects m8)" = "$before" ] || fail "m8 changed after the refusal"
[ "$(count m1 cert web)" = 0 ] || fail "the certificate reached m1 although add was refused"
run 0 "$cli" member check hsm-8 --config "$dir/c8.toml"
expect "warn  objects: hsm-8 holds 4 application objects (1 cannot be replicated and would stay on it); member add keeps them only with --preserve-existing"

step "with --preserve-existing its objects are kept and reach every member; the local key stays"
run 0 "$cli" member add hsm-8 --preserve-existing --config "$dir/c8.toml"
expect "hsm-8: copied 5 objects from the cluster; kept its own, 3 of them copied to the others"
expect 'left local on hsm-8: EC private key "own" id 0b01'
expect "p11ha status shows them"
expect "verify: no drift"
for m in m1 m2 m3 m8; do
  [ "$(count "$m" cert web)" = 1 ] || fail "$m does not hold the certificate 'web' once"
  [ "$(count "$m" data notes)" = 1 ] || fail "$m does not hold the data object 'notes' once"
  [ "$(count "$m" pubkey own)" = 1 ] || fail "$m does not hold the public key 'own' once"
  [ "$(count "$m" privkey ec-a)" = 1 ] || fail "$m does not hold the private key 'ec-a' once"
done
for m in m1 m2 m3; do [ "$(count "$m" privkey own)" = 0 ] || fail "the local private key left m8 (for $m)"; done
[ "$(count m8 privkey own)" = 1 ] || fail "m8 lost its own private key"
p11 m1 --read-object --type cert --label web --output-file "$dir/web-m1.der" >/dev/null || fail "reading m1's copy"
cmp -s "$dir/web.der" "$dir/web-m1.der" || fail "m1's certificate differs from the one written on m8"
run 0 "$cli" status --config "$dir/c8.toml"
grep -q '^hsm-8 local keys.*: own$' <<<"$out" || fail "status does not list 'own' as a local key of hsm-8"

step "a copy failing half-way is undone: the new member holds what it held before"
t2() { SOFTHSM2_CONF=$t/softhsm2-2.conf objects m2; }
# The farm's members again, plus test member 2 (its own SoftHSM, token m2 of its own).
with_member "$conf" "$dir/c9.toml" hsm-9 "$t/member-2.so" m2
install_domain "$dir/c9.toml" hsm-9
before=$(t2)
[ "$before" = 1 ] || fail "test member 2 holds $before objects, expected its domain key only"
# The cluster holds 4 keys copied by unwrap (ec-a, rsa-a, aes-a and nothing else: 'own' stayed on m8):
# the second unwrap fails.
echo "fail C_UnwrapKey CKR_FUNCTION_FAILED after 1" >"$t/member-2.so.ctl"
run 1 "$cli" member add hsm-9 --config "$dir/c9.toml"
expect "to hsm-9 failed: hsm-9: C_UnwrapKey under the domain key failed"
expect "CKR_FUNCTION_FAILED"
expect "objects this run had copied were destroyed again; nothing was changed"
expect_not "verify: no drift"
[ "$(t2)" = "$before" ] || fail "test member 2 holds $(t2) objects after the failed add, had $before"
echo "clear" >"$t/member-2.so.ctl"
run 0 "$cli" member add hsm-9 --config "$dir/c9.toml"
expect "verify: no drift"

echo "member-test: OK"
