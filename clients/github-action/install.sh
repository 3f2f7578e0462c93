#!/usr/bin/env bash
# Puts the credmatrix CLI in $RUNNER_TEMP/credmatrix-bin (and on $GITHUB_PATH)
# for the action's next step. By default it downloads the release binary for
# the runner's OS and architecture and checks its SHA-256 against the
# release's SHA256SUMS: a missing checksum, a mismatch or a failed download
# fails the step and installs nothing. IN_BUILD_FROM_SOURCE=true builds the
# CLI from the action's own checkout instead (needs Go on the runner).
#
# Environment (the action sets it from its inputs):
#   IN_VERSION           release tag, e.g. v0.1.0; empty: the ref the action
#                        runs at (uses: …/github-action@v0.1.0), which must
#                        then be a release tag
#   IN_BUILD_FROM_SOURCE "true" to build instead of downloading
#   IN_RELEASE_URL       base URL of the releases; the files are fetched from
#                        IN_RELEASE_URL/VERSION/NAME (https, or file:// and
#                        http on loopback for tests and mirrors)
#   ACTION_REF           github.action_ref
#   RUNNER_OS RUNNER_ARCH RUNNER_TEMP GITHUB_PATH GITHUB_ACTION_PATH (GitHub's)
set -euo pipefail

fail() {
	echo "::error title=credmatrix install::$*" >&2
	exit 1
}

dest="$RUNNER_TEMP/credmatrix-bin"

if [[ ${IN_BUILD_FROM_SOURCE:-false} == true ]]; then
	command -v go >/dev/null || fail "build-from-source: true needs Go on the runner (actions/setup-go)"
	mkdir -p "$dest"
	# The action's own checkout holds the source.
	(cd "$GITHUB_ACTION_PATH/../.." && GOTOOLCHAIN=go1.26.10 CGO_ENABLED=0 go build -trimpath -o "$dest/" ./clients/cmd/credmatrix)
	echo "$dest" >>"$GITHUB_PATH"
	exit 0
elif [[ ${IN_BUILD_FROM_SOURCE:-false} != false ]]; then
	fail "build-from-source: want true or false, got '${IN_BUILD_FROM_SOURCE}'"
fi

tag='^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$'
version=${IN_VERSION:-}
if [[ -z $version ]]; then
	version=${ACTION_REF:-}
	[[ $version =~ $tag ]] ||
		fail "the action runs at '${ACTION_REF:-}', which is not a release tag: use it at a release (…/github-action@v0.1.0), or set 'version: v0.1.0', or 'build-from-source: true'"
fi
[[ $version =~ $tag ]] || fail "version '$version': not a release tag (v0.1.0)"

case ${RUNNER_OS:-} in
Linux) os=linux ;;
macOS) os=darwin ;;
Windows) os=windows ;;
*) fail "no credmatrix release binary for runner OS '${RUNNER_OS:-}'; set 'build-from-source: true'" ;;
esac
case ${RUNNER_ARCH:-} in
X64) arch=amd64 ;;
ARM64) arch=arm64 ;;
*) fail "no credmatrix release binary for runner architecture '${RUNNER_ARCH:-}'; set 'build-from-source: true'" ;;
esac
name="credmatrix-$os-$arch"
exe=credmatrix
if [[ $os == windows ]]; then
	[[ $arch == amd64 ]] || fail "no credmatrix release binary for windows/$arch; set 'build-from-source: true'"
	name+=.exe
	exe+=.exe
fi

base=${IN_RELEASE_URL%/}
case $base in
https://* | file://*) ;;
http://127.0.0.1:* | http://localhost:* | http://\[::1\]:*) ;;
*) fail "release-url '$base': want https:// (or file://)" ;;
esac
url="$base/$version"

tmp=$(mktemp -d "$RUNNER_TEMP/credmatrix-download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fetch() {
	curl --fail --silent --show-error --location --retry 3 --output "$tmp/$1" "$url/$1" ||
		fail "download of $url/$1 failed"
}
fetch SHA256SUMS
fetch "$name"

# Exactly one "HEX  NAME" line for the binary, 64 hex digits.
want=$(awk -v n="$name" '$2 == n { print $1; c++ } END { if (c != 1) exit 1 }' "$tmp/SHA256SUMS") ||
	fail "SHA256SUMS of $version has no single checksum for $name: not installing it"
[[ $want =~ ^[0-9a-f]{64}$ ]] || fail "SHA256SUMS of $version: '$want' is not a SHA-256 for $name"
if command -v sha256sum >/dev/null; then
	got=$(sha256sum "$tmp/$name" | cut -d' ' -f1)
elif command -v shasum >/dev/null; then
	got=$(shasum -a 256 "$tmp/$name" | cut -d' ' -f1)
else
	fail "neither sha256sum nor shasum on the runner: cannot check the download"
fi
[[ $got == "$want" ]] || fail "$name of $version: SHA-256 $got, SHA256SUMS says $want: not installing it"

chmod 0755 "$tmp/$name"
# The right release, not another one's file under this name.
reported=$("$tmp/$name" --version 2>&1) || fail "$name of $version does not run on this runner: $reported"
[[ $reported == *" $version" ]] || fail "$name of $version reports '$reported': not installing it"
mkdir -p "$dest"
mv -f "$tmp/$name" "$dest/$exe"
echo "$dest" >>"$GITHUB_PATH"
echo "credmatrix $version ($os/$arch) installed, SHA-256 $got"
