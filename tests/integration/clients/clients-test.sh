#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ctest wrapper: a fresh SoftHSM farm in a temp dir, then run-clients.sh against one target.
#   clients-test.sh softhsm            plain SoftHSM, token m1 of a 2-token farm
#   clients-test.sh p11ha-N MODULE     p11ha (MODULE = libp11ha.so) over an N-member farm
# Environment: P11HA_FARM_SCRIPT (make-farm.sh), P11HA_CLI (the p11ha CLI, for the domain key),
# P11HA_SOFTHSM_MODULE, P11HA_KEEP_TEST_DIR=1 keeps the temp dir for inspection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
farm_script=${P11HA_FARM_SCRIPT:-$here/../../support/make-farm.sh}
softhsm=${P11HA_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

usage() {
  echo "usage: clients-test.sh softhsm | p11ha-N MODULE" >&2
  exit 2
}

[ $# -ge 1 ] || usage
target=$1
case $target in
  softhsm)
    # Two tokens, so that every client has to select the token by its label.
    members=2 module=$softhsm selector=token=m1 ;;
  p11ha-[1-9]*)
    [ $# -eq 2 ] || usage
    members=${target#p11ha-} module=$2 selector=token=ha-test ;;
  *) usage ;;
esac
[ -f "$module" ] || { echo "clients-test: module $module does not exist" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-clients.XXXXXX")
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
  if [ "${P11HA_KEEP_TEST_DIR:-0}" = 1 ]; then
    echo "clients-test: kept $dir"
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT

"$farm_script" "$dir/farm" "$members" >/dev/null
# shellcheck source=/dev/null
. "$dir/farm/env"

# A cluster of two or more members refuses to create keys without a domain key (DESIGN.md).
if [ "$target" != softhsm ] && [ "$members" -ge 2 ]; then
  # Until replication lands the CLI has no domain verb, and p11ha does not yet require the key.
  if [ -n "${P11HA_CLI:-}" ] && "$P11HA_CLI" --help 2>/dev/null | grep -qw domain; then
    timeout -k 5 120 "$P11HA_CLI" domain create --shares 3 --threshold 2 --out "$dir/farm/shares" \
      --so-pin-file "$dir/farm/so.pin" </dev/null
  else
    echo "clients-test: no 'p11ha domain' verb; this $members-member farm has no domain key" >&2
  fi
fi

rc=0
"$here/run-clients.sh" "$module" "$selector" "$dir/work" || rc=$?
if [ "$rc" -ne 0 ] && [ -s "$dir/farm/p11ha.log" ]; then
  echo "--- last lines of $dir/farm/p11ha.log"
  tail -n 40 "$dir/farm/p11ha.log"
fi
exit "$rc"
