#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `p11ha archive backup|restore|list|verify` and `p11ha package export|import` end to end, on
# SoftHSM tokens that all live in one token directory, so that one SoftHSM process can open a
# token of the source cluster and one of the target side by side. Every outcome is checked on
# the member tokens directly with replication_probe, never through p11ha:
#   - the source cluster (3 members) holds the probe's set: RSA, EC and AES keys, a
#     certificate, a data object, ...; it is backed up to a file and restored into a fresh
#     cluster of 2 new tokens whose domain key was installed from 2 shares;
#   - the same through a backup token (--to-token, --from-token);
#   - refusals that change nothing: a non-empty target, a flipped byte anywhere, a wrong
#     passphrase, another domain;
#   - a package of two keys moves to another cluster, and nothing else does.
# Environment: P11HA_CLI, P11HA_MODULE, P11HA_REPLICATION_PROBE, P11HA_FARM_SCRIPT,
# P11HA_SOFTHSM_MODULE; P11HA_KEEP_TEST_DIR=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cli=${P11HA_CLI:?P11HA_CLI must name the p11ha CLI}
module=${P11HA_MODULE:?P11HA_MODULE must name libp11ha.so}
probe=${P11HA_REPLICATION_PROBE:?P11HA_REPLICATION_PROBE must name replication_probe}
farm_script=${P11HA_FARM_SCRIPT:-$here/../../support/make-farm.sh}
softhsm=${P11HA_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-archive.XXXXXX")
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
  if [ "${P11HA_KEEP_TEST_DIR:-0}" = 1 ]; then echo "archive-test: kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

fail() {
  echo "archive-test: FAIL: $*" >&2
  exit 1
}
step() { echo "--- $*"; }

# run EXPECTED_RC CMD...: no stdin (as in CI); stdout+stderr kept in $out and shown indented.
run() {
  local expected=$1 rc=0
  shift
  # timeout runs programs only: shell functions go through a child bash (they are exported).
  if declare -F "$1" >/dev/null; then set -- bash -c '"$@"' bash "$@"; fi
  out=$(timeout -k 5 180 "$@" </dev/null 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/    /'
  [ "$rc" = "$expected" ] || fail "exit $rc, expected $expected: $*"
}
expect() { grep -qF -- "$1" <<<"$out" || fail "output lacks '$1'"; }

# The source cluster: tokens m1..m3, its config, PINs and shares (make-farm.sh).
"$farm_script" "$dir/a" 3 --domain "$cli" >/dev/null || fail "make-farm.sh"
# shellcheck source=/dev/null
. "$dir/a/env"
unset P11HA_CONFIG
pin=$dir/a/user.pin
so=$dir/a/so.pin
printf 'correct horse battery staple' >"$dir/pass"
printf 'not the passphrase' >"$dir/wrong-pass"

# cluster NAME TOKEN...: new empty tokens in the same SoftHSM store and a config over them.
cluster() {
  local name=$1 token i=0
  shift
  {
    printf '[cluster]\nlabel = "ha-%s"\nslot_id = 0\n\n' "$name"
    for token in "$@"; do
      i=$((i + 1))
      softhsm2-util --init-token --free --label "$token" --so-pin 12345678 --pin 1234 >/dev/null ||
        fail "softhsm2-util --init-token $token"
      printf '[[member]]\nname = "%s-%s"\nmodule = "%s"\ntoken = "pkcs11:token=%s"\n\n' "$name" "$i" "$softhsm" "$token"
    done
    printf '[auth]\npin_file = "%s"\n\n[log]\nlevel = "warn"\nfile = "%s/%s.log"\n' "$pin" "$dir" "$name"
  } >"$dir/$name.toml"
}
# install_domain CONFIG MEMBER...: the source's domain key from 2 of its 3 shares.
install_domain() {
  local conf=$1 member
  shift
  for member in "$@"; do
    run 0 "$cli" domain install --member "$member" --share "$dir/a/shares/share-1" --share "$dir/a/shares/share-3" \
      --so-pin-file "$so" --config "$conf"
  done
}
admin() { "$cli" "$@" --pin-file "$pin"; }
direct() { "$probe" "$1" "$softhsm" "$2" 1234 "${@:3}"; }
fps_of() { grep '^fp ' <<<"$1" | sort; }
export -f admin direct
export cli probe softhsm pin
# objects TOKEN: the token's "CLASS LABEL" lines, without the domain key.
objects() {
  direct list "$1" | grep -vx 'secret p11ha-domain' || true
}
# holds_set TOKEN: the whole set, each key usable, the same material as the source cluster made.
holds_set() {
  run 0 direct check "$1" s
  [ "$(fps_of "$out")" = "$made" ] || fail "$1's objects differ from the source's:
$(diff <(echo "$made") <(fps_of "$out") || true)"
  [ "$(objects "$1" | LC_ALL=C sort)" = "$(objects m1 | LC_ALL=C sort)" ] || fail "$1 holds other objects than m1"
  local key
  for key in rsa p256 p384; do
    run 0 direct key-check "$1" "s-$key" "$dir/s-$key.pem"
    expect "signature verifies"
  done
  run 0 direct aes-cross m1 "$1" s-aes s-kek s-unwrapped s-derived s-copied
}
empty() { [ -z "$(objects "$1")" ] || fail "$1 should hold nothing, holds: $(objects "$1" | tr '\n' ',')"; }

step "the source cluster holds RSA, EC and AES keys, a certificate and data objects, made through p11ha"
P11HA_CONFIG=$dir/a/p11ha.toml run 0 "$probe" create "$module" ha-test 1234 s
made=$(fps_of "$out")
[ "$(wc -l <<<"$made")" = 11 ] || fail "expected 11 fingerprints from the set"
# The original public keys, read from a source member directly (p11tool: pkcs11-tool 0.23
# cannot export a P-384 public key).
for key in rsa p256 p384; do
  GNUTLS_PIN=1234 p11tool --provider "$softhsm" --login --export-pubkey "pkcs11:token=m2;object=s-$key;type=public" \
    --outfile "$dir/s-$key.pem" >/dev/null 2>&1 </dev/null || fail "reading the public key s-$key"
  openssl pkey -pubin -in "$dir/s-$key.pem" -noout || fail "s-$key is no public key"
done
count=$(objects m1 | wc -l)
[ "$count" = 14 ] || fail "m1 holds $count objects, expected the set's 14"

step "backup to a sealed file; list and verify read it without restoring"
run 0 admin archive backup --to "$dir/a.p11ha" --passphrase-file "$dir/pass" --config "$dir/a/p11ha.toml"
expect "backed up 14 objects"
[ "$(stat -c %a "$dir/a.p11ha")" = 600 ] || fail "the archive is not mode 600"
! grep -qa 's-rsa' "$dir/a.p11ha" || fail "a label is readable in the sealed file"
run 0 "$cli" archive list --from "$dir/a.p11ha" --passphrase-file "$dir/pass"
expect "14 objects"
expect 'RSA private key "s-rsa" id 01'
expect 'certificate "s-cert"'
domain=$(sed -n 's/^domain \([0-9a-f]\{16\}\)$/\1/p' <<<"$out")
[ -n "$domain" ] || fail "archive list shows no domain"
run 0 "$cli" archive verify --from "$dir/a.p11ha" --passphrase-file "$dir/pass"
expect "sealed and intact"
run 1 "$cli" archive backup --to "$dir/a.p11ha" --passphrase-file "$dir/pass" --config "$dir/a/p11ha.toml" --pin-file "$pin"
expect "exists"

step "restore into a fresh cluster of 2 new tokens of the same domain, installed from 2 shares"
cluster b b1 b2
install_domain "$dir/b.toml" b-1 b-2
run 0 admin archive restore --from "$dir/a.p11ha" --passphrase-file "$dir/pass" --config "$dir/b.toml"
expect "restored 14 objects to 2 members"
expect "every identity of the manifest is present"
holds_set b1
holds_set b2
run 0 admin verify --config "$dir/b.toml"
expect "no drift"

step "--member: one member backed up, and restored into one member of a fresh cluster"
run 0 admin archive backup --member hsm-2 --to "$dir/hsm-2.p11ha" --passphrase-file "$dir/pass" --config "$dir/a/p11ha.toml"
expect "backed up 14 objects"
run 0 "$cli" archive list --from "$dir/hsm-2.p11ha" --passphrase-file "$dir/pass"
expect "from hsm-2"
cluster f f1 f2
install_domain "$dir/f.toml" f-1 f-2
run 0 admin archive restore --member f-2 --from "$dir/hsm-2.p11ha" --passphrase-file "$dir/pass" --config "$dir/f.toml"
expect "restored 14 objects to 1 member:"
holds_set f2
empty f1
run 2 admin archive restore --member f-9 --from "$dir/hsm-2.p11ha" --passphrase-file "$dir/pass" --config "$dir/f.toml"
expect "no member named 'f-9'"

step "refused, nothing changed: a restore into a non-empty target without --merge"
before=$(objects b1 | LC_ALL=C sort)
run 1 admin archive restore --from "$dir/a.p11ha" --passphrase-file "$dir/pass" --config "$dir/b.toml"
expect "holds 14 objects; a restore needs an empty target"
[ "$(objects b1 | LC_ALL=C sort)" = "$before" ] || fail "b1 changed"
run 0 admin archive restore --from "$dir/a.p11ha" --passphrase-file "$dir/pass" --config "$dir/b.toml" --merge
expect "0 written, 28 already there"
[ "$(objects b1 | LC_ALL=C sort)" = "$before" ] || fail "a merge of what is there changed b1"

cluster c c1 c2
install_domain "$dir/c.toml" c-1 c-2
step "refused, nothing written: one byte flipped, anywhere in the file"
size=$(stat -c %s "$dir/a.p11ha")
for offset in 0 17 20 40 60 90 $((size / 2)) $((size - 17)) $((size - 1)); do
  cp "$dir/a.p11ha" "$dir/flipped"
  byte=$(od -An -tu1 -j "$offset" -N1 "$dir/flipped" | tr -d ' ')
  printf "$(printf '\\%03o' $(((byte + 1) % 256)))" | dd of="$dir/flipped" bs=1 seek="$offset" conv=notrunc status=none
  cmp -s "$dir/a.p11ha" "$dir/flipped" && fail "byte $offset was not changed"
  run 1 admin archive restore --from "$dir/flipped" --passphrase-file "$dir/pass" --config "$dir/c.toml"
  expect "nothing was written"
  run 1 "$cli" archive verify --from "$dir/flipped" --passphrase-file "$dir/pass"
done
empty c1
empty c2

step "refused, nothing written: a wrong passphrase"
run 1 admin archive restore --from "$dir/a.p11ha" --passphrase-file "$dir/wrong-pass" --config "$dir/c.toml"
expect "wrong passphrase"
empty c1

step "refused with the reason, nothing written: an archive from another domain"
cluster e e1
run 0 "$cli" domain create --shares 1 --threshold 1 --out "$dir/e-shares" --so-pin-file "$so" --pin-file "$pin" \
  --config "$dir/e.toml"
P11HA_CONFIG=$dir/e.toml run 0 "$probe" gen "$module" ha-e 1234 data e-notes
run 0 admin archive backup --to "$dir/e.p11ha" --passphrase-file "$dir/pass" --config "$dir/e.toml"
run 1 admin archive restore --from "$dir/e.p11ha" --passphrase-file "$dir/pass" --config "$dir/c.toml"
expect "of domain"
expect "but the cluster holds domain $domain"
empty c1
empty c2

step "package: two keys exported from the source, imported into another cluster; nothing else moves"
run 0 admin package export --match label=s-p256 --match 'pkcs11:object=s-aes;type=secret-key' \
  --to "$dir/two.p11pkg" --passphrase-file "$dir/pass" --config "$dir/a/p11ha.toml"
expect "exported 3 objects"
run 1 admin archive restore --from "$dir/two.p11pkg" --passphrase-file "$dir/pass" --config "$dir/c.toml"
expect "is a package"
run 0 admin package import --from "$dir/two.p11pkg" --passphrase-file "$dir/pass" --config "$dir/c.toml"
for t in c1 c2; do
  [ "$(objects "$t" | LC_ALL=C sort)" = "$(printf '%s\n' 'priv s-p256' 'pub s-p256' 'secret s-aes')" ] ||
    fail "$t holds other objects than the package's: $(objects "$t" | tr '\n' ',')"
  run 0 direct key-check "$t" s-p256 "$dir/s-p256.pem"
  run 0 direct aes-cross m1 "$t" s-aes
done
run 2 admin package export --match 'nolabel' --to "$dir/x.p11pkg" --passphrase-file "$dir/pass" --config "$dir/a/p11ha.toml"
run 1 admin package export --match label=absent --to "$dir/x.p11pkg" --passphrase-file "$dir/pass" \
  --config "$dir/a/p11ha.toml"
expect "matches no object"
[ ! -e "$dir/x.p11pkg" ] || fail "a refused export wrote a file"

step "the same round trip through a backup token of the same domain"
softhsm2-util --init-token --free --label backup --so-pin 12345678 --pin 1234 >/dev/null
run 0 "$cli" domain install --token pkcs11:token=backup --module "$softhsm" --share "$dir/a/shares/share-2" \
  --share "$dir/a/shares/share-3" --so-pin-file "$so" --pin-file "$pin" --config "$dir/a/p11ha.toml"
run 0 admin archive backup --to-token pkcs11:token=backup --module "$softhsm" --config "$dir/a/p11ha.toml"
expect "14 written"
holds_set backup
run 1 admin archive backup --to-token pkcs11:token=backup --module "$softhsm" --config "$dir/a/p11ha.toml"
expect "a backup to a token needs an empty target"
cluster d d1 d2
install_domain "$dir/d.toml" d-1 d-2
run 0 admin archive restore --from-token pkcs11:token=backup --module "$softhsm" --config "$dir/d.toml"
expect "restored 14 objects to 2 members"
holds_set d1
holds_set d2
step "a backup token of another domain is refused"
run 1 admin archive backup --to-token pkcs11:token=e1 --module "$softhsm" --config "$dir/a/p11ha.toml"
expect "of domain $domain but"

echo "archive-test: PASS"
