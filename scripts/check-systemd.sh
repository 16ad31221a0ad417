#!/usr/bin/env bash
# Checks systemd/lmnt-bridge.service:
#   1. `systemd-analyze verify` on a copy whose ExecStart= points at the built binary
#      (target/debug/lmnt-bridge, or $LMNT_BRIDGE_BIN). verify insists that the executable
#      exists; rewriting one line of a temporary copy checks the real unit text without
#      installing anything into /usr/bin.
#   ($LMNT_BRIDGE_UNIT checks another unit file, for the tests.)
#   2. `systemd-analyze security --offline=true` on the unit as shipped: prints the exposure
#      score and fails above $MAX_EXPOSURE (2.0).
# Skips (exit 0, with a note) where systemd-analyze is missing, e.g. macOS.
set -euo pipefail
cd "$(dirname "$0")/.."

UNIT=${LMNT_BRIDGE_UNIT:-systemd/lmnt-bridge.service}
MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
BIN=${LMNT_BRIDGE_BIN:-target/debug/lmnt-bridge}

if ! command -v systemd-analyze >/dev/null; then
  echo "check-systemd: systemd-analyze not found; skipped (apt-get install systemd)"
  exit 0
fi
if [[ ! -x "$BIN" ]]; then
  echo "check-systemd: building $BIN"
  cargo build --quiet --bin lmnt-bridge
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin_abs=$(realpath "$BIN")
sed "s|/usr/bin/lmnt-bridge|$bin_abs|g" "$UNIT" > "$tmp/lmnt-bridge.service"

# verify prints problems on stderr and exits non-zero on errors; warnings (also on stderr)
# fail the check too, except lines about other units on this host that we do not control.
if ! systemd-analyze verify --man=no "$tmp/lmnt-bridge.service" 2> "$tmp/verify.log"; then
  cat "$tmp/verify.log" >&2
  echo "check-systemd: systemd-analyze verify failed" >&2
  exit 1
fi
if grep -v -e '^$' "$tmp/verify.log" | grep -q 'lmnt-bridge.service'; then
  cat "$tmp/verify.log" >&2
  echo "check-systemd: systemd-analyze verify reported problems" >&2
  exit 1
fi
echo "check-systemd: verify ok"

score=$(systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1 \
  | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [[ -z "$score" ]]; then
  systemd-analyze security --offline=true --no-pager "$UNIT" >&2 || true
  echo "check-systemd: could not read the exposure score" >&2
  exit 1
fi
echo "check-systemd: security exposure $score (limit $MAX_EXPOSURE)"
if ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
  echo "check-systemd: exposure $score is above $MAX_EXPOSURE" >&2
  exit 1
fi
