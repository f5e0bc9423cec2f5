#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Third-party PKCS#11 clients against one module:
#   run-clients.sh MODULE_PATH SLOT_SELECTOR WORKDIR
# SLOT_SELECTOR is "token=LABEL" (or a bare LABEL). The token must exist with user PIN 1234 and
# SO PIN 12345678; SOFTHSM2_CONF / P11HA_CONFIG come from the caller's environment.
# Prints "PASS name" or "FAIL name: reason" per client, then "N passed, M failed".
# Logs of every client go to WORKDIR/logs/NAME.log.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: run-clients.sh MODULE_PATH SLOT_SELECTOR WORKDIR" >&2
  exit 2
fi
module=$1
label=${2#token=}
mkdir -p "$3"
work=$(cd "$3" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pin=1234
logs=$work/logs
mkdir -p "$logs"

# A per-run tag keeps labels, ids and aliases unique, so the script can run twice on one token.
tag=$(od -An -tx1 -N3 /dev/urandom | tr -d ' \n')
# A hung module must not hold the whole ctest budget.
step_timeout=${CLIENTS_STEP_TIMEOUT:-60}

passed=0
failed=0
failed_names=()

die() {
  printf '%s\n' "$*" >"$reason_file"
  exit 1
}

need() {
  local tool=$1 pkg=$2
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (install Debian package $pkg)"
}

# t CMD...: runs one client command under a timeout, output into the test's log.
t() {
  printf '+ %s\n' "$*" >&2
  local rc=0
  timeout -k 5 "$step_timeout" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    die "timed out after ${step_timeout}s: $*"
  fi
  [ "$rc" -eq 0 ] || die "exit $rc: $*"
}

# t_out FILE CMD...: like t, with stdout kept in FILE for checks and copied to the log.
# t_all FILE CMD...: the same with stderr too (p11tool reports --test-sign on stderr).
t_out() {
  local out=$1 rc=0
  shift
  (t "$@") >"$out" || rc=$?
  cat "$out" >&2
  [ "$rc" -eq 0 ] || exit 1
}
t_all() {
  local out=$1 rc=0
  shift
  (t "$@") >"$out" 2>&1 || rc=$?
  cat "$out" >&2
  [ "$rc" -eq 0 ] || exit 1
}

# RFC 7512 percent-encoding of one URI attribute value.
pct() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}
token_uri="pkcs11:token=$(pct "$label")"

p11_cmd=(pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin")
p11() {
  t "${p11_cmd[@]}" "$@"
}

# gen_key ID LABEL KEYTYPE [extra pkcs11-tool options]: a token key pair for signing.
gen_key() {
  local id=$1 lbl=$2 type=$3
  shift 3
  p11 --keypairgen --key-type "$type" --usage-sign --id "$id" --label "$lbl" "$@"
}

# pubkey_pem ID OUT: the token's public key as PEM, via pkcs11-tool's DER export.
pubkey_pem() {
  p11 --read-object --type pubkey --id "$1" --output-file "$2.der"
  t openssl pkey -pubin -inform DER -in "$2.der" -out "$2"
}

# RSA keys get no decryption mechanisms: pkcs11-tool --test --allow-sw (a2) decrypts with every
# RSA key it finds, its RSA-PKCS-OAEP case uses SHA-256 and a label, and SoftHSM 2.6.1 rejects
# that (CKR_ARGUMENTS_BAD). --usage-sign alone still leaves CKA_DECRYPT=TRUE on SoftHSM.
rsa_sign_mechs=SHA256-RSA-PKCS,SHA1-RSA-PKCS,MD5-RSA-PKCS,SHA256-RSA-PKCS-PSS

test_a1() {
  need pkcs11-tool opensc
  t_out "$dir/out" "${p11_cmd[@]}" --test
  grep -q '^No errors' "$dir/out" || die "pkcs11-tool --test did not report 'No errors'"
}

test_a2() {
  need pkcs11-tool opensc
  gen_key "a2$tag" "a2-rsa-$tag" rsa:2048 --allowed-mechanisms "$rsa_sign_mechs"
  t_out "$dir/out" "${p11_cmd[@]}" --test --allow-sw
  grep -q '^No errors' "$dir/out" || die "pkcs11-tool --test --allow-sw did not report 'No errors'"
  # Without the key the signature tests are skipped and the run would pass vacuously.
  grep -q 'all 4 signature functions seem to work' "$dir/out" ||
    die "signature sub-tests did not run (no usable RSA key found?)"
}

test_b() {
  need pkcs11-tool opensc
  need openssl openssl
  # Several KiB so that pkcs11-tool's multi-part signing makes more than one C_SignUpdate.
  head -c 5000 /dev/urandom >"$dir/data"
  t openssl dgst -sha256 -binary -out "$dir/data.sha256" "$dir/data"

  gen_key "b1$tag" "b-rsa-$tag" rsa:2048 --allowed-mechanisms "$rsa_sign_mechs"
  gen_key "b2$tag" "b-ec-$tag" EC:prime256v1
  pubkey_pem "b1$tag" "$dir/rsa.pem"
  pubkey_pem "b2$tag" "$dir/ec.pem"

  p11 --sign --mechanism SHA256-RSA-PKCS --id "b1$tag" -i "$dir/data" -o "$dir/rsa-pkcs.sig"
  t openssl dgst -sha256 -verify "$dir/rsa.pem" -signature "$dir/rsa-pkcs.sig" "$dir/data"

  p11 --sign --mechanism SHA256-RSA-PKCS-PSS --id "b1$tag" -i "$dir/data" -o "$dir/rsa-pss.sig"
  # pkcs11-tool's PSS defaults: MGF1 with the same hash, salt length = digest length.
  t openssl dgst -sha256 -verify "$dir/rsa.pem" -sigopt rsa_padding_mode:pss \
    -sigopt rsa_pss_saltlen:32 -signature "$dir/rsa-pss.sig" "$dir/data"

  # SoftHSM 2.6.1 has only raw CKM_ECDSA: sign the SHA-256 digest; ECDSA-SHA256 too where listed.
  p11 --sign --mechanism ECDSA --signature-format openssl --id "b2$tag" \
    -i "$dir/data.sha256" -o "$dir/ecdsa.sig"
  t openssl dgst -sha256 -verify "$dir/ec.pem" -signature "$dir/ecdsa.sig" "$dir/data"
  t_out "$dir/mechs" pkcs11-tool --module "$module" --token-label "$label" --list-mechanisms
  if grep -q '^ *ECDSA-SHA256[, ]' "$dir/mechs"; then
    p11 --sign --mechanism ECDSA-SHA256 --signature-format openssl --id "b2$tag" \
      -i "$dir/data" -o "$dir/ecdsa-sha256.sig"
    t openssl dgst -sha256 -verify "$dir/ec.pem" -signature "$dir/ecdsa-sha256.sig" "$dir/data"
  else
    echo "ECDSA-SHA256 not in the mechanism list: covered by ECDSA over the digest" >&2
  fi
}

test_c() {
  need p11tool gnutls-bin
  export GNUTLS_PIN=$pin GNUTLS_SO_PIN=12345678
  local pt=(p11tool --provider "$module" --batch) key="c-ec-$tag"
  # GnuTLS refuses p11-kit's proxy as a provider; without --provider it loads the same
  # registered modules through p11-kit itself.
  case ${module##*/} in p11-kit-proxy.so*) pt=(p11tool --batch) ;; esac
  t_out "$dir/tokens" "${pt[@]}" --list-tokens
  grep -qxF "$(printf '\tLabel: %s' "$label")" "$dir/tokens" ||
    die "--list-tokens does not show token $label"
  t_out "$dir/before" "${pt[@]}" --login --list-all "$token_uri"
  t "${pt[@]}" --login --generate-privkey ECDSA --curve secp256r1 --label "$key" \
    --outfile "$dir/c-pub.pem" "$token_uri"
  t_out "$dir/after" "${pt[@]}" --login --list-all "$token_uri"
  # grep without -q reads to the end, so pipefail cannot see a SIGPIPE from the first grep.
  grep -A3 "object=$key;type=private" "$dir/after" | grep 'Private key (EC' >/dev/null ||
    die "--list-all does not show the generated private key $key"
  t_all "$dir/test-sign" "${pt[@]}" --login --test-sign "$token_uri;object=$key;type=private"
  grep -q 'Verifying against public key in the token... ok' "$dir/test-sign" ||
    die "--test-sign did not verify against the token's public key"
}

test_d() {
  need pkcs11-tool opensc
  need openssl openssl
  local engine
  engine=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')/pkcs11.so
  [ -f "$engine" ] || die "libp11 engine $engine not found (install libengine-pkcs11-openssl)"
  cat >"$dir/openssl.cnf" <<CNF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $engine
MODULE_PATH = $module
init = 0
CNF
  gen_key "d1$tag" "d-rsa-$tag" rsa:2048 --allowed-mechanisms "RSA-PKCS,$rsa_sign_mechs"
  gen_key "d2$tag" "d-ec-$tag" EC:prime256v1
  local id kind
  for kind in rsa ec; do
    if [ $kind = rsa ]; then id=d1$tag; else id=d2$tag; fi
    t env OPENSSL_CONF="$dir/openssl.cnf" openssl req -engine pkcs11 -keyform engine \
      -key "$token_uri;object=d-$kind-$tag;type=private?pin-value=$pin" \
      -new -x509 -sha256 -days 2 -subj "/CN=p11ha-clients-$kind" -out "$dir/$kind-cert.pem"
    t openssl verify -CAfile "$dir/$kind-cert.pem" "$dir/$kind-cert.pem"
    # The certificate must carry the token's key, not one the engine made up.
    pubkey_pem "$id" "$dir/$kind-token.pem"
    t openssl x509 -in "$dir/$kind-cert.pem" -noout -pubkey -out "$dir/$kind-cert-pub.pem"
    cmp -s "$dir/$kind-token.pem" "$dir/$kind-cert-pub.pem" ||
      die "$kind certificate's public key is not the token key d-$kind-$tag"
  done
}

# SunPKCS11 has no token-label selector: find the slot id whose token has our label.
java_config() {
  t_out "$dir/slots" pkcs11-tool --module "$module" --list-token-slots
  local slot
  slot=$(awk -v want="$label" '
    /^Slot [0-9]+ \(0x[0-9a-fA-F]+\)/ { id = $3; gsub(/[():]/, "", id) }
    /^ *token label *: / { l = $0; sub(/^ *token label *: /, "", l); if (l == want) { print id; exit } }
  ' "$dir/slots")
  [ -n "$slot" ] || die "no slot with token label $label in pkcs11-tool --list-token-slots"
  # SunPKCS11 parses the slot as a signed 32-bit int.
  [ $((slot)) -le 2147483647 ] || die "slot id $slot does not fit SunPKCS11's int"
  printf 'name = p11haClients\nlibrary = %s\nslot = %d\n' "$module" $((slot)) \
    >"$work/sunpkcs11.cfg"
}

keystore=(-keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11
  -providerArg "$work/sunpkcs11.cfg" -storepass "$pin")

test_e1() {
  need java openjdk-17-jdk-headless
  need javac openjdk-17-jdk-headless
  need keytool openjdk-17-jdk-headless
  need pkcs11-tool opensc
  java_config
  t_out "$dir/list" keytool -list "${keystore[@]}"
  mkdir -p "$work/java"
  t javac -d "$work/java" "$here/SunPkcs11Check.java"
  t_out "$dir/out" java -cp "$work/java" SunPkcs11Check "$work/sunpkcs11.cfg" "$pin" 200 4
  grep -q '^single thread: 200/200 ' "$dir/out" ||
    die "single-thread signatures: $(grep -m1 '^single' "$dir/out")"
  grep -q '^4 threads: 200/200 ' "$dir/out" ||
    die "threaded signatures: $(grep -m1 'threads:' "$dir/out")"
}

test_e2() {
  need keytool openjdk-17-jdk-headless
  need pkcs11-tool opensc
  [ -f "$work/sunpkcs11.cfg" ] || java_config
  local alias=k1-$tag
  t keytool -genkeypair -alias "$alias" -keyalg EC -groupname secp256r1 -dname "CN=$alias" \
    "${keystore[@]}"
  t_out "$dir/list" keytool -list "${keystore[@]}"
  grep -q "^$alias, .*PrivateKeyEntry" "$dir/list" || die "keytool -list does not show $alias"
}

# run NAME FUNCTION: one client test in a subshell (so set -e and exports stay local);
# its output goes to the log, its verdict to stdout.
run() {
  local name=$1 fn=$2 rc=0
  local log=$logs/$name.log
  dir=$work/$name
  reason_file=$dir.reason
  rm -rf "$dir" "$reason_file" "$reason_file.cmd"
  mkdir -p "$dir"
  set +e
  (
    set -eEuo pipefail
    trap 'printf "exit %s: %s\n" "$?" "$BASH_COMMAND" >>"$reason_file.cmd"' ERR
    "$fn"
  ) </dev/null >"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    echo "PASS $name"
    passed=$((passed + 1))
  else
    local why="exit $rc"
    if [ -s "$reason_file" ]; then
      why=$(head -n1 "$reason_file")
    elif [ -s "$reason_file.cmd" ]; then
      why=$(head -n1 "$reason_file.cmd")
    fi
    echo "FAIL $name: $why (log: $log)"
    sed 's/^/    | /' "$log" | tail -n 15
    failed=$((failed + 1))
    failed_names+=("$name")
  fi
}

echo "module $module, token $label, workdir $work, tag $tag"
run a1-pkcs11-tool-test test_a1
run a2-pkcs11-tool-test-allow-sw test_a2
run b-pkcs11-tool-sign-openssl-verify test_b
run c-p11tool test_c
run d-openssl-engine-x509 test_d
run e1-java-sunpkcs11 test_e1
run e2-keytool test_e2

if [ "$failed" -gt 0 ]; then
  echo "$passed passed, $failed failed (failed: ${failed_names[*]})"
  exit 1
fi
echo "$passed passed, $failed failed"
