#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every verb has --help, and the installed man page documents every verb and every option the
# help lists, and renders without a groff warning.
# Environment: P11HA_CLI, P11HA_BUILD_DIR (for cmake --install).
set -euo pipefail
cli=${P11HA_CLI:?P11HA_CLI must name the p11ha CLI}
build=${P11HA_BUILD_DIR:?P11HA_BUILD_DIR must name the build tree}
fail() {
  echo "man-test: FAIL: $*" >&2
  exit 1
}
prefix=$(mktemp -d "${TMPDIR:-/tmp}/p11ha-man.XXXXXX")
trap 'rm -rf "$prefix"' EXIT

cmake --install "$build" --prefix "$prefix" >/dev/null || fail "cmake --install"
page=$prefix/share/man/man1/p11ha.1
[ -f "$page" ] || fail "no man page at $page"
warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1) || fail "groff failed"
[ -z "$warnings" ] || fail "groff warns: $warnings"
MANWIDTH=100 man -l "$page" >/dev/null 2>&1 || fail "man -l cannot show the page"
# The page's text with roff's escaped hyphens made plain.
text=$(sed 's/\\-/-/g' "$page")

# subcommands HELP: the names listed under "Subcommands:".
subcommands() { awk '/^Subcommands:/ {on = 1; next} on && /^  [a-z]/ {print $1}' <<<"$1"; }
# check_help WORDS...: the help of `p11ha WORDS --help` exits 0, and its options are in the page.
check_help() {
  local help option
  help=$("$cli" "$@" --help </dev/null) || fail "p11ha $* --help failed"
  for option in $(grep -oE -- '--[a-z][a-z-]+' <<<"$help" | sort -u); do
    [ "$option" = --help ] && continue
    grep -qF -- "$option" <<<"$text" || fail "the man page lacks $option of 'p11ha $*'"
  done
  grep -qF -- ".SS $*" <<<"$text" || grep -qF -- "p11ha $*" <<<"$text" || fail "the man page lacks 'p11ha $*'"
  echo "ok p11ha $* --help"
}

top=$("$cli" --help </dev/null) || fail "p11ha --help failed"
verbs=$(subcommands "$top")
[ "$(wc -w <<<"$verbs")" -ge 7 ] || fail "p11ha --help lists too few verbs: $verbs"
for verb in $verbs; do
  help=$("$cli" "$verb" --help </dev/null) || fail "p11ha $verb --help failed"
  subs=$(subcommands "$help")
  if [ -z "$subs" ]; then
    check_help "$verb"
  else
    for sub in $subs; do check_help "$verb" "$sub"; done
  fi
done
echo "man-test: PASS"
