#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Stages N independent test members for one process to load:
#   stage-test-members.sh DIR N SOURCE_SO
# For i in 1..N leaves DIR/member-i.so (a copy of SOURCE_SO), DIR/member-i.so.conf,
# DIR/softhsm-i.so (its own copy of SoftHSM), DIR/softhsm2-i.conf and DIR/tokens-i holding one
# token labelled m<i> (user PIN 1234, SO PIN 12345678). Prints nothing but errors.
# SOFTHSM_LIB overrides the SoftHSM library that is copied.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: stage-test-members.sh DIR N SOURCE_SO" >&2
  exit 2
fi
dir=$1; count=$2; source_so=$3
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
