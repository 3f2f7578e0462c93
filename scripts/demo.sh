#!/usr/bin/env bash
# make demo: start the local stack, then act as a CI runner would.
# Every step is a real credmatrix command against real services over mTLS.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
cm=$BIN/credmatrix

state=$(mktemp -d "${TMPDIR:-/tmp}/credmatrix-demo.XXXXXX")
dev_pid=
cleanup() {
  if [[ -n $dev_pid ]] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$state"
}
trap cleanup EXIT

bold=$'\e[1m'; dim=$'\e[2m'; off=$'\e[0m'
[[ -t 1 ]] || { bold=; dim=; off=; }
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
show() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; }

step "Start the local stack (dev CA + mTLS, dev OIDC issuer, audit, broker, keyguard)"
show "credmatrix dev --state-dir $state --ephemeral-ports"
"$cm" dev --state-dir "$state" --ephemeral-ports >"$state/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 300); do
  [[ -s $state/env ]] && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$state/dev.log" >&2; echo "demo: the dev stack exited" >&2; exit 1; }
  sleep 0.1
done
[[ -s $state/env ]] || { cat "$state/dev.log" >&2; echo "demo: the dev stack did not start within 30s" >&2; exit 1; }
# shellcheck disable=SC1091
source "$state/env"
echo "broker $CREDMATRIX_BROKER_ADDR, keyguard $CREDMATRIX_KEYGUARD_ADDR, audit $CREDMATRIX_AUDIT_ADDR"

step "1. The CI job gets its OIDC token (like GitHub Actions: repo acme/app, branch main)"
show 'export CREDMATRIX_OIDC_TOKEN=$(credmatrix dev token --repository acme/app --ref refs/heads/main)'
CREDMATRIX_OIDC_TOKEN=$("$cm" dev token --repository acme/app --ref refs/heads/main)
export CREDMATRIX_OIDC_TOKEN
echo "token: ${#CREDMATRIX_OIDC_TOKEN} bytes (not shown: it is a secret)"

step "2. Swap it for a short-lived AWS session: role deploy in account sandbox"
show 'credmatrix creds --role deploy --account sandbox --output credential-process'
creds=$("$cm" creds --role deploy --account sandbox --output credential-process --reason "make demo")
key_id=$(printf '%s' "$creds" | sed -n 's/.*"AccessKeyId":"\([^"]*\)".*/\1/p')
expiry=$(printf '%s' "$creds" | sed -n 's/.*"Expiration":"\([^"]*\)".*/\1/p')
[[ $key_id == ASIA* ]] || { echo "demo: unexpected credentials" >&2; exit 1; }
echo "issued AccessKeyId $key_id, expires $expiry (secret key and session token not shown)"

step "3. Encrypt a record as an internal app (data class confidential, region eu-west-1)"
record='{"customer":"c-1042","iban":"DE89370400440532013000"}'
show "echo '$record' | credmatrix encrypt --data-class confidential --region eu-west-1 --context table=customers"
envelope=$(printf '%s' "$record" | "$cm" encrypt --data-class confidential --region eu-west-1 --context table=customers)
echo "envelope: ${envelope:0:60}... (${#envelope} base64 chars)"
show "credmatrix decrypt --context table=customers"
plain=$(printf '%s' "$envelope" | "$cm" decrypt --context table=customers)
[[ $plain == "$record" ]] || { echo "demo: decrypt returned something else" >&2; exit 1; }
echo "decrypted: $plain"
show "credmatrix decrypt --context table=orders   # wrong context"
if printf '%s' "$envelope" | "$cm" decrypt --context table=orders 2>"$state/err"; then
  echo "demo: decrypt with the wrong context succeeded" >&2; exit 1
fi
sed 's/^/  /' "$state/err"

step "4. A forbidden request: the same job asks for role deploy in account prod"
show 'credmatrix creds --role deploy --account prod'
set +e
"$cm" creds --role deploy --account prod --output env >"$state/denied.out" 2>"$state/err"
rc=$?
set -e
[[ $rc -eq 3 ]] || { cat "$state/err" >&2; echo "demo: expected exit code 3 (denied), got $rc" >&2; exit 1; }
[[ ! -s $state/denied.out ]] || { echo "demo: a denied request printed credentials" >&2; exit 1; }
sed 's/^/  /' "$state/err"
echo "exit code $rc (denied); no credentials printed"

step "5. The audit log: every issuance, denial and key operation, in order"
show 'credmatrix audit tail --from 0 --follow=false'
"$cm" audit tail --from 0 --follow=false | tee "$state/audit.txt"
events=$(($(wc -l <"$state/audit.txt") - 1))

step "Summary"
cat <<SUMMARY
  session issued     $key_id for deploy@sandbox (eu-west-1), audited before it was returned
  record encrypted   confidential/eu-west-1, decrypted with its context, refused with another
  request denied     deploy@prod, exit code 3, denial recorded
  audit log          $events events with gap-free sequence numbers
Demo complete.
SUMMARY
