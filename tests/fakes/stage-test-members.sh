#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Stages N independent test members for one process to load:
#   stage-test-members.sh DIR N SOURCE_SO [--domain CLI_PATH]
# For i in 1..N leaves DIR/member-i.so (a copy of SOURCE_SO), DIR/member-i.so.conf,
# DIR/softhsm-i.so (its own copy of SoftHSM), DIR/softhsm2-i.conf and DIR/tokens-i holding one
# token labelled m<i> (user PIN 1234, SO PIN 12345678). Prints nothing but errors.
# --domain: then installs a replication domain key on every member with CLI_PATH's `domain
# create` (through the members themselves, over DIR/domain.toml; shares in DIR/shares), as two
# or more members refuse to create keys without one (DESIGN.md).
# SOFTHSM_LIB overrides the SoftHSM library that is copied.
set -euo pipefail
if [ $# -ne 3 ] && { [ $# -ne 5 ] || [ "$4" != --domain ]; }; then
  echo "usage: stage-test-members.sh DIR N SOURCE_SO [--domain CLI_PATH]" >&2
  exit 2
fi
dir=$1; count=$2; source_so=$3; cli=${5:-}
softhsm=${SOFTHSM_LIB:-/usr/lib/softhsm/libsofthsm2.so}
case $count in
  ''|*[!0-9]*|0)
    echo "stage-test-members.sh: N must be a positive integer, not '$count'" >&2
    exit 2 ;;
esac
for file in "$source_so" "$softhsm"; do
  if [ ! -f "$file" ]; then
    echo "stage-test-members.sh: $file does not exist" >&2
    exit 2
  fi
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
shopt -s nullglob
existing=("$dir"/member-*.so "$dir"/tokens-*)
if [ ${#existing[@]} -gt 0 ]; then
  echo "stage-test-members.sh: $dir already has members (${existing[0]});" \
    "use an empty directory" >&2
  exit 1
fi
for i in $(seq 1 "$count"); do
  cp "$source_so" "$dir/member-$i.so"
  cp "$softhsm" "$dir/softhsm-$i.so"
  mkdir "$dir/tokens-$i"
  cat >"$dir/softhsm2-$i.conf" <<CONF
directories.tokendir = $dir/tokens-$i
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
  SOFTHSM2_CONF=$dir/softhsm2-$i.conf softhsm2-util --init-token --free --label "m$i" \
    --so-pin 12345678 --pin 1234 >/dev/null
  cat >"$dir/member-$i.so.conf" <<CONF
softhsm_lib=$dir/softhsm-$i.so
softhsm_conf=$dir/softhsm2-$i.conf
CONF
done
if [ -n "$cli" ]; then
  printf '1234' >"$dir/user.pin"
  printf '12345678' >"$dir/so.pin"
  chmod 600 "$dir/user.pin" "$dir/so.pin"
  {
    printf '[cluster]\nlabel = "ha-test"\n\n'
    for i in $(seq 1 "$count"); do
      printf '[[member]]\nname = "hsm-%s"\nmodule = "%s/member-%s.so"\ntoken = "pkcs11:token=m%s"\n\n' \
        "$i" "$dir" "$i" "$i"
    done
    printf '[auth]\npin_file = "%s/user.pin"\n' "$dir"
  } >"$dir/domain.toml"
  if ! out=$("$cli" domain create --shares 3 --threshold 2 --out "$dir/shares" --so-pin-file "$dir/so.pin" \
    --config "$dir/domain.toml" </dev/null 2>&1); then
    printf '%s\n' "$out" >&2
    echo "stage-test-members.sh: '$cli domain create' failed over $dir/domain.toml" >&2
    exit 1
  fi
fi
