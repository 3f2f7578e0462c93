#!/usr/bin/env bash
# Runs every fuzz target listed in scripts/fuzz-targets.txt for a short time
# (FUZZTIME, default 10s each). `make fuzz`; CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
while read -r pkg target; do
  [[ -z ${pkg:-} || $pkg == \#* ]] && continue
  echo "fuzz $pkg $target ($fuzztime)"
  go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
done < scripts/fuzz-targets.txt
