#!/usr/bin/env bash
# Runs every fuzz target listed in scripts/fuzz-targets.txt for a short time
# (FUZZTIME, default 10s each). `make fuzz`; CI runs it.
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" when a duration -fuzztime ends while a worker is
# still busy (a shutdown race on loaded machines, go.dev/issue/75804,
# fixed in Go 1.27). Such a run found nothing: no failing input is
# written. That one case is told apart and the target's corpus is then
# replayed as a plain test, which must pass; any other failure, and any
# run that wrote a failing input, fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
while read -r pkg target; do
  [[ -z ${pkg:-} || $pkg == \#* ]] && continue
  echo "fuzz $pkg $target ($fuzztime)"
  if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$out"; then
    continue
  fi
  if grep -qx '    context deadline exceeded' "$out" && ! grep -q 'Failing input written to' "$out" &&
    [[ $(grep -c -- '--- FAIL' "$out") == 1 ]] && grep -q -- "--- FAIL: ${target} " "$out"; then
    echo "fuzz: $target: the fuzz run ended with Go's coordinator shutdown race (go.dev/issue/75804), no failing input found; replaying its corpus"
    go test -count=1 -run "^${target}\$" "$pkg"
    continue
  fi
  echo "fuzz: $target FAILED" >&2
  exit 1
done < scripts/fuzz-targets.txt
