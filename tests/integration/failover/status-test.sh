#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `p11ha status` shows each member's state (up, or down since when), the failures it counted
# and the last error, in the table and in JSON (issue 4). A member whose token does not exist
# stands in for a dead one. Environment: P11HA_CLI, P11HA_FARM_SCRIPT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cli=${P11HA_CLI:?P11HA_CLI must name the p11ha CLI}
farm_script=${P11HA_FARM_SCRIPT:-$here/../../support/make-farm.sh}

dir=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-status.XXXXXX")
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() { rm -rf "$dir"; }
trap cleanup EXIT
fail() {
  echo "status-test: FAIL: $*" >&2
  exit 1
}

"$farm_script" "$dir" 2 >/dev/null
# shellcheck source=/dev/null
. "$dir/env"
cat >>"$dir/p11ha.toml" <<'TOML'

[[member]]
name = "hsm-gone"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "pkcs11:token=no-such-token"
TOML

rc=0
out=$("$cli" status --config "$dir/p11ha.toml" </dev/null 2>&1) || rc=$?
printf '%s\n' "$out" | sed 's/^/    /'
[ "$rc" = 1 ] || fail "status exited $rc with a member down, expected 1"
grep -qE '^hsm-1 +active +up ' <<<"$out" || fail "hsm-1 is not shown up"
grep -qE '^hsm-gone +active +down since [0-9]{4}-[0-9]{2}-[0-9]{2}T' <<<"$out" ||
  fail "hsm-gone is not shown 'down since <time>'"
grep -qE "^hsm-gone +.* [1-9][0-9]* +module " <<<"$out" || fail "hsm-gone shows no failure count"
grep -qF "hsm-gone is down: no token matches 'pkcs11:token=no-such-token'" <<<"$out" ||
  fail "the last error of hsm-gone is not shown"

rc=0
json=$("$cli" status --json --config "$dir/p11ha.toml" </dev/null 2>"$dir/json.err") || rc=$?
[ "$rc" = 1 ] || fail "status --json exited $rc, expected 1"
python3 - "$json" <<'PY' || fail "the JSON report is wrong"
import json, sys
report = json.loads(sys.argv[1])
members = {m["name"]: m for m in report["members"]}
up, gone = members["hsm-1"], members["hsm-gone"]
assert up["state"] == "up" and up["failures"] == 0 and up["last_error"] is None, up
assert gone["state"] == "down", gone
assert gone["since"][:4].isdigit() and "T" in gone["since"], gone
assert gone["failures"] >= 1, gone
assert "no token matches" in gone["last_error"], gone
print("    json: hsm-1 up, hsm-gone down since", gone["since"], "after", gone["failures"], "failures")
PY
echo "status-test: ok"
