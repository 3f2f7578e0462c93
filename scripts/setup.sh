#!/usr/bin/env bash
# Installs what the build and tests need beyond Go itself. Run once on a fresh
# machine (`make setup`); .ci/run runs it too. Go modules and Go tools are
# fetched by the go command; only Debian packages are installed here.
set -euo pipefail

need=(git make gcc)
missing=()
for p in "${need[@]}"; do
  command -v "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go 1.26 is required (https://go.dev/dl); the Makefile fetches the patched toolchain itself" >&2; exit 1; }
echo "setup: ok ($(GOTOOLCHAIN=go1.26.10 go version))"
