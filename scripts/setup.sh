#!/usr/bin/env bash
# Installs what the build and the tests need beyond Go itself. Run once on a
# fresh machine (`make setup`); .ci/run runs it too. Go modules and Go tools
# are fetched by the go command; only Debian packages are installed here.
#
#   git make gcc   build (gcc for go test -race)
#   postgresql     throwaway PostgreSQL clusters in the store tests
#   awscli         the real AWS CLI v2 (/usr/bin/aws) as a credential_process consumer
#   curl           the GitHub Action's install script (its test runs it)
set -euo pipefail

packages=(git make gcc postgresql awscli curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go is required (https://go.dev/dl); the Makefile fetches the patched toolchain itself" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "setup: PostgreSQL server binaries not found under /usr/lib/postgresql" >&2; exit 1; }
[[ -x /usr/bin/aws ]] || { echo "setup: /usr/bin/aws (AWS CLI v2 from Debian's awscli) not found" >&2; exit 1; }
echo "setup: ok ($(GOTOOLCHAIN=go1.26.10 go version))"
