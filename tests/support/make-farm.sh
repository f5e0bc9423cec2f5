#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Creates a farm of SoftHSM member tokens and a p11ha config over them, for tests and the demo.
#   make-farm.sh DIR N [--policy POLICY] [--log-level LEVEL] [--member-module PATH]
#                      [--domain CLI_PATH]
# Leaves: DIR/softhsm2.conf, DIR/tokens/, tokens m1..mN (user PIN 1234, SO PIN 12345678),
# DIR/p11ha.toml, DIR/user.pin, DIR/so.pin, and DIR/env (exports SOFTHSM2_CONF, P11HA_CONFIG).
# A SoftHSM member module is copied once per member (DIR/libsofthsm2-mI.so): p11-kit loads a
# file once per process, and only a SoftHSM of the member's own is re-initialised when p11ha
# reconnects it, which is what clears a token SoftHSM 2.6.1 lost (README "Behaviour notes").
# --domain: then runs CLI_PATH's `domain create` (3 shares, threshold 2, into DIR/shares), as a
# cluster of two or more members refuses to create keys without a domain key (DESIGN.md).
set -euo pipefail
dir=$1; count=$2; shift 2
policy=least-busy; level=warn; module=/usr/lib/softhsm/libsofthsm2.so; cli=
while [ $# -gt 0 ]; do
  case $1 in
    --policy) policy=$2; shift 2 ;;
    --log-level) level=$2; shift 2 ;;
    --member-module) module=$2; shift 2 ;;
    --domain) cli=$2; shift 2 ;;
    *) echo "make-farm.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
cat >"$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF=$dir/softhsm2.conf
printf '1234' >"$dir/user.pin"
printf '12345678' >"$dir/so.pin"
chmod 600 "$dir/user.pin" "$dir/so.pin"
{
  printf '[cluster]\nlabel = "ha-test"\nslot_id = 0\n\n'
  for i in $(seq 1 "$count"); do
    softhsm2-util --init-token --free --label "m$i" --so-pin 12345678 --pin 1234 >/dev/null
    member_module=$module
    case $(basename "$module") in
      libsofthsm2*)
        member_module=$dir/libsofthsm2-m$i.so
        cp "$module" "$member_module" ;;
    esac
    printf '[[member]]\nname = "hsm-%s"\nmodule = "%s"\ntoken = "pkcs11:token=m%s"\n\n' "$i" "$member_module" "$i"
  done
  printf '[auth]\npin_file = "%s/user.pin"\n\n' "$dir"
  printf '[balancing]\npolicy = "%s"\n\n' "$policy"
  printf '[log]\nlevel = "%s"\nfile = "%s/p11ha.log"\n' "$level" "$dir"
} >"$dir/p11ha.toml"
cat >"$dir/env" <<ENV
export SOFTHSM2_CONF=$dir/softhsm2.conf
export P11HA_CONFIG=$dir/p11ha.toml
ENV
if [ -n "$cli" ]; then
  if ! out=$("$cli" domain create --shares 3 --threshold 2 --out "$dir/shares" --so-pin-file "$dir/so.pin" \
    --config "$dir/p11ha.toml" </dev/null 2>&1); then
    printf '%s\n' "$out" >&2
    echo "make-farm.sh: '$cli domain create' failed for $dir/p11ha.toml" >&2
    exit 1
  fi
fi
