#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The domain ceremony end to end: `p11ha domain create` on a 3-member SoftHSM farm, `domain
# install` on a 4th token and on a backup token, the refusals (too few, damaged and foreign
# shares; a member down; a key already there) and the rollback when a member fails mid-way.
# Member tokens are checked directly with pkcs11-tool and domain_probe, never through p11ha.
# Environment: P11HA_CLI, P11HA_MODULE (libp11ha.so), P11HA_REPLICATION_PROBE, P11HA_DOMAIN_PROBE, P11HA_FARM_SCRIPT, P11HA_SOFTHSM_MODULE,
# P11HA_STAGE_TEST_MEMBERS + P11HA_TEST_MEMBER_SO (rollback case; skipped without them),
# P11HA_KEEP_TEST_DIR=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cli=${P11HA_CLI:?P11HA_CLI must name the p11ha CLI}
probe=${P11HA_DOMAIN_PROBE:?P11HA_DOMAIN_PROBE must name domain_probe}
farm_script=${P11HA_FARM_SCRIPT:-$here/../../support/make-farm.sh}
softhsm=${P11HA_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-domain.XXXXXX")
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
  if [ "${P11HA_KEEP_TEST_DIR:-0}" = 1 ]; then echo "domain-test: kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

fail() {
  echo "domain-test: FAIL: $*" >&2
  exit 1
}
step() { echo "--- $*"; }

# run EXPECTED_RC CMD...: runs with no stdin (as in CI), keeps stdout+stderr in $out.
run() {
  local expected=$1 rc=0
  shift
  out=$(timeout -k 5 60 "$@" </dev/null 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/    /'
  [ "$rc" = "$expected" ] || fail "exit $rc, expected $expected: $*"
}
expect() { grep -qF -- "$1" <<<"$out" || fail "output lacks '$1'"; }

# inspect TOKEN [MODULE]: the token's secret-key count and domain key, read directly.
inspect() { "$probe" "${2:-$softhsm}" inspect "$1" 1234 p11ha-domain; }
secret_keys() { inspect "$@" | sed -n 's/^secret-keys=//p'; }

# add_member CONFIG NAME TOKEN: a config copy with one more member before [auth].
add_member() {
  sed -i "/^\[auth\]/i [[member]]\nname = \"$2\"\nmodule = \"$softhsm\"\ntoken = \"pkcs11:token=$3\"\n" "$1"
}

step "domain create on a 3-member farm"
"$farm_script" "$dir/a" 3 >/dev/null
# shellcheck source=/dev/null
. "$dir/a/env"
a_conf=$dir/a/p11ha.toml
run 0 "$cli" domain create --shares 5 --threshold 3 --out "$dir/a/shares" --so-pin-file "$dir/a/so.pin" \
  --config "$a_conf"
domain=$(sed -n 's/^domain check value \([0-9a-f]\{16\}\)$/\1/p' <<<"$out")
[ -n "$domain" ] || fail "create printed no domain check value"
for m in 1 2 3; do expect "hsm-$m: installed domain key $domain"; done

step "five share files, mode 600, nothing else left in --out"
[ "$(find "$dir/a/shares" -mindepth 1 | wc -l)" = 5 ] || fail "unexpected entries in $dir/a/shares"
for i in 1 2 3 4 5; do
  [ "$(stat -c %a "$dir/a/shares/share-$i")" = 600 ] || fail "share-$i is not mode 600"
  grep -qx "domain $domain" "$dir/a/shares/share-$i" || fail "share-$i does not name domain $domain"
done

check_domain_key() {  # TOKEN [MODULE]
  local attributes
  attributes=$(inspect "$@") || fail "domain_probe inspect $1"
  for line in secret-keys=1 token=1 private=1 trusted=1 sensitive=1 extractable=0 modifiable=0 \
    wrap=1 unwrap=1 encrypt=0 decrypt=0 derive=0 sign=0 verify=0 allowed-mechanisms=0x2109,0x210a \
    "id=$domain" "check-value=$domain"; do
    grep -qx -- "$line" <<<"$attributes" || fail "$1: domain key lacks $line"
  done
  # (SoftHSM keeps ALLOWED_MECHANISMS as a sorted set.) The unwrap template pins PRIVATE (0x2), SENSITIVE (0x103) and WRAP_WITH_TRUSTED (0x210), not TOKEN.
  local template
  template=$(sed -n 's/^unwrap-template=//p' <<<"$attributes" | tr ',' '\n' | sort | paste -sd,)
  [ "$template" = "0x103:1,0x210:1,0x2:1" ] || fail "$1: unwrap template is '$template'"
}

step "each member token holds the domain key (pkcs11-tool and domain_probe, directly)"
for m in m1 m2 m3; do
  pkcs11-tool --module "$softhsm" --token-label "$m" --login --pin 1234 --list-objects --type secrkey 2>/dev/null |
    grep -q 'label: *p11ha-domain' || fail "pkcs11-tool does not list p11ha-domain on $m"
  check_domain_key "$m"
done

step "a second create on the same cluster is refused"
run 1 "$cli" domain create --shares 3 --threshold 2 --out "$dir/a/shares-again" --so-pin-file "$dir/a/so.pin" \
  --config "$a_conf"
expect "already has domain key $domain"
[ ! -e "$dir/a/shares-again/share-1" ] || fail "a refused create wrote shares"

step "install on a fresh 4th token from shares 2, 4 and 5"
softhsm2-util --init-token --free --label m4 --so-pin 12345678 --pin 1234 >/dev/null
softhsm2-util --init-token --free --label m5 --so-pin 12345678 --pin 1234 >/dev/null
softhsm2-util --init-token --free --label m6 --so-pin 12345678 --pin 1234 >/dev/null
grown=$dir/a/p11ha-5.toml
cp "$a_conf" "$grown"
add_member "$grown" hsm-4 m4
add_member "$grown" hsm-5 m5
S=$dir/a/shares
run 0 "$cli" domain install --member hsm-4 --share "$S/share-2" --share "$S/share-4" --share "$S/share-5" \
  --so-pin-file "$dir/a/so.pin" --config "$grown"
expect "hsm-4: installed domain key $domain"
expect "hsm-4: matches hsm-1, hsm-2, hsm-3"
expect "domain check value $domain"
check_domain_key m4
replicated=$("$probe" "$softhsm" replicate m1 m4 1234 p11ha-domain) || fail "replicate m1 -> m4"
for line in copy-identical=1 unwrap-non-sensitive-refused=1 untrusted-wrap-refused=1; do
  grep -qx "$line" <<<"$replicated" || fail "m1 -> m4 copy: expected $line, got: $replicated"
done

step "a key made through p11ha reaches hsm-4 by p11ha sync, and m4's copy signs verifiably"
module=${P11HA_MODULE:?P11HA_MODULE must name libp11ha.so}
four=$dir/a/p11ha-4.toml
cp "$a_conf" "$four"
add_member "$four" hsm-4 m4
# The replication probe, not pkcs11-tool: on the sanitizer build only instrumented programs may
# load libp11ha.so.
rprobe=${P11HA_REPLICATION_PROBE:?P11HA_REPLICATION_PROBE must name replication_probe}
run 0 env P11HA_CONFIG="$a_conf" "$rprobe" gen "$module" ha-test 1234 ec grown
run 0 "$cli" sync --config "$four" --pin-file "$dir/a/user.pin"
printf 'signed on the new member' >"$dir/a/grown.txt"
openssl dgst -sha256 -binary -out "$dir/a/grown.sha256" "$dir/a/grown.txt"
run 0 pkcs11-tool --module "$softhsm" --token-label m4 --login --pin 1234 --sign --label grown -m ECDSA \
  --signature-format openssl -i "$dir/a/grown.sha256" -o "$dir/a/grown.sig"
run 0 pkcs11-tool --module "$softhsm" --token-label m1 --read-object --type pubkey --label grown -o "$dir/a/grown.der"
openssl pkey -pubin -inform DER -in "$dir/a/grown.der" -out "$dir/a/grown.pem"
run 0 openssl dgst -sha256 -verify "$dir/a/grown.pem" -signature "$dir/a/grown.sig" "$dir/a/grown.txt"
expect "Verified OK"

step "installing again is a no-op"
run 0 "$cli" domain install --member hsm-4 --share "$S/share-1" --share "$S/share-3" --share "$S/share-5" \
  --so-pin-file "$dir/a/so.pin" --config "$grown"
expect "hsm-4: already holds domain key $domain; nothing to do"
[ "$(secret_keys m4)" = 1 ] || fail "m4 holds more than one secret key"

step "install on a backup token that is not a member"
run 0 "$cli" domain install --token pkcs11:token=m6 --module "$softhsm" --share "$S/share-1" \
  --share "$S/share-3" --share "$S/share-5" --so-pin-file "$dir/a/so.pin" --config "$a_conf"
expect "pkcs11:token=m6: installed domain key $domain"
expect "matches hsm-1, hsm-2, hsm-3"
check_domain_key m6

step "refusals leave the fresh token m5 empty"
refused() {  # PATTERN ARGS...: exit 1, the message, and still no secret key on m5
  local pattern=$1
  shift
  run 1 "$cli" domain install --member hsm-5 "$@" --so-pin-file "$dir/a/so.pin" --config "$grown"
  expect "$pattern"
  [ "$(secret_keys m5)" = 0 ] || fail "m5 holds a secret key after a refusal ($pattern)"
}
refused "too few shares" --share "$S/share-1" --share "$S/share-3"
# One hex digit of the share data flipped to another hex digit.
awk '/^data /{d=substr($0,6,1); $0="data " (d=="0"?"1":"0") substr($0,7)} {print}' "$S/share-3" >"$dir/tampered"
chmod 600 "$dir/tampered"
cmp -s "$S/share-3" "$dir/tampered" && fail "the tampered share is unchanged"
refused "checksum" --share "$S/share-1" --share "$dir/tampered" --share "$S/share-5"
refused "share 2 again" --share "$S/share-2" --share "$S/share-2" --share "$S/share-5"

step "shares of another domain are refused"
"$farm_script" "$dir/b" 3 >/dev/null
(
  # shellcheck source=/dev/null
  . "$dir/b/env"
  run 0 "$cli" domain create --shares 3 --threshold 3 --out "$dir/b/shares" --so-pin-file "$dir/b/so.pin" \
    --config "$dir/b/p11ha.toml"
)
B=$dir/b/shares
refused "another domain" --share "$B/share-1" --share "$B/share-2" --share "$B/share-3"
refused "another domain" --share "$S/share-1" --share "$S/share-2" --share "$B/share-3"

step "create refuses when a member is down, before anything is installed"
down=$dir/a/p11ha-down.toml
cp "$a_conf" "$down"
sed -i 's/token=m1"/token=m5"/' "$down"  # hsm-1 becomes the empty m5 ...
add_member "$down" hsm-9 m9             # ... and hsm-9 has no token at all
run 1 "$cli" domain create --shares 3 --threshold 2 --out "$dir/down-shares" --so-pin-file "$dir/a/so.pin" \
  --config "$down"
expect "hsm-9 is down"
[ "$(secret_keys m5)" = 0 ] || fail "m5 got a key although a member was down"
[ ! -e "$dir/down-shares/share-1" ] || fail "a refused create wrote shares"

if [ -n "${P11HA_STAGE_TEST_MEMBERS:-}" ] && [ -n "${P11HA_TEST_MEMBER_SO:-}" ]; then
  step "a member failing mid-way: the key is removed from the members before it, no shares"
  t=$dir/t
  "$P11HA_STAGE_TEST_MEMBERS" "$t" 3 "$P11HA_TEST_MEMBER_SO"
  {
    printf '[cluster]\nlabel = "ha-test"\n\n'
    for i in 1 2 3; do
      printf '[[member]]\nname = "tm-%s"\nmodule = "%s/member-%s.so"\ntoken = "pkcs11:token=m%s"\n\n' \
        "$i" "$t" "$i" "$i"
    done
    printf '[auth]\npin_file = "%s/a/user.pin"\n' "$dir"
  } >"$t/p11ha.toml"
  echo "fail C_CopyObject CKR_FUNCTION_FAILED" >"$t/member-3.so.ctl"
  run 1 "$cli" domain create --shares 3 --threshold 2 --out "$t/shares" --so-pin-file "$dir/a/so.pin" \
    --config "$t/p11ha.toml"
  expect "tm-3: C_CopyObject of the staging key as user failed: CKR_FUNCTION_FAILED"
  expect "tm-1: removed domain key"
  expect "tm-2: removed domain key"
  expect "no member keeps the new key and no shares were written"
  for i in 1 2 3; do
    keys=$(SOFTHSM2_CONF=$t/softhsm2-$i.conf "$probe" "$t/softhsm-$i.so" inspect "m$i" 1234 p11ha-domain |
      sed -n 's/^secret-keys=//p')
    [ "$keys" = 0 ] || fail "test member $i holds $keys secret keys after the rollback"
  done
  [ -z "$(ls -A "$t/shares")" ] || fail "a failed create left files in $t/shares: $(ls -A "$t/shares")"
else
  echo "domain-test: no test members staged; rollback case skipped" >&2
fi

echo "domain-test: OK"
