#!/usr/bin/env bash
# make demo: start the local stack, then act as a CI runner would.
# Every step is a real credmatrix command against real services over mTLS.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
cm=$BIN/credmatrix
cmdev=$BIN/credmatrix-dev

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
show "credmatrix-dev --state-dir $state --ephemeral-ports"
"$cmdev" --state-dir "$state" --ephemeral-ports >"$state/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 300); do
  [[ -s $state/env ]] && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$state/dev.log" >&2; echo "demo: the dev stack exited" >&2; exit 1; }
  sleep 0.1
done
[[ -s $state/env ]] || { cat "$state/dev.log" >&2; echo "demo: the dev stack did not start within 30s" >&2; exit 1; }
# shellcheck disable=SC1091
source "$state/env"
export CREDMATRIX_CACHE_DIR=$state/cache   # credential_process cache, private to this run
echo "broker $CREDMATRIX_BROKER_ADDR, keyguard $CREDMATRIX_KEYGUARD_ADDR, audit $CREDMATRIX_AUDIT_ADDR"

step "1. The CI job gets its OIDC token (like GitHub Actions: repo acme/app, branch main)"
show 'export CREDMATRIX_OIDC_TOKEN=$(credmatrix-dev token --repository acme/app --ref refs/heads/main)'
CREDMATRIX_OIDC_TOKEN=$("$cmdev" token --repository acme/app --ref refs/heads/main)
export CREDMATRIX_OIDC_TOKEN
echo "token: ${#CREDMATRIX_OIDC_TOKEN} bytes (not shown: it is a secret)"

step "2. Swap it for a short-lived AWS session: role deploy in account sandbox"
show 'credmatrix creds --role deploy --account sandbox --output credential-process'
creds=$("$cm" creds --role deploy --account sandbox --output credential-process --reason "make demo")
key_id=$(printf '%s' "$creds" | sed -n 's/.*"AccessKeyId":"\([^"]*\)".*/\1/p')
expiry=$(printf '%s' "$creds" | sed -n 's/.*"Expiration":"\([^"]*\)".*/\1/p')
[[ $key_id == ASIA* ]] || { echo "demo: unexpected credentials" >&2; exit 1; }
echo "issued AccessKeyId $key_id, expires $expiry (secret key and session token not shown)"

step "2b. Policy-driven issuance into a regional account: acme/payments deploys to payments-eu (EU residency)"
show 'credmatrix-dev token --repository acme/payments --claim environment=production'
pay_token=$("$cmdev" token --repository acme/payments --ref refs/heads/main --claim environment=production)
show 'credmatrix creds --role deploy --account payments-eu --output json'
pay=$(CREDMATRIX_OIDC_TOKEN=$pay_token "$cm" creds --role deploy --account payments-eu --output json --reason "make demo")
pay_key=$(printf '%s' "$pay" | sed -n 's/.*"AccessKeyId": "\([^"]*\)".*/\1/p')
pay_region=$(printf '%s' "$pay" | sed -n 's/.*"Region": "\([^"]*\)".*/\1/p')
pay_rule=$(printf '%s' "$pay" | sed -n 's/.*"Rule": "\([^"]*\)".*/\1/p')
pay_expiry=$(printf '%s' "$pay" | sed -n 's/.*"Expiration": "\([^"]*\)".*/\1/p')
[[ $pay_key == ASIA* && $pay_region == eu-central-1 && $pay_rule == payments-deploys-eu ]] || { echo "demo: unexpected regional session: $pay_region $pay_rule" >&2; exit 1; }
echo "issued AccessKeyId $pay_key in payments-eu ($pay_region) by rule $pay_rule, expires $pay_expiry"
echo "(15 minutes at most: the /root/prod OU cap; the session policy denies aws:RequestedRegion outside eu-west-1, eu-central-1)"

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

step "3b. Two data classes in two regions: an internal record in us-east-1"
event='{"event":"login","user":"u-77"}'
show "echo '$event' | credmatrix encrypt --data-class internal --region us-east-1 --context table=events"
envelope2=$(printf '%s' "$event" | "$cm" encrypt --data-class internal --region us-east-1 --context table=events)
plain2=$(printf '%s' "$envelope2" | "$cm" decrypt --context table=events)
[[ $plain2 == "$event" ]] || { echo "demo: decrypt of the internal record returned something else" >&2; exit 1; }
echo "internal/us-east-1 envelope: ${envelope2:0:40}...; decrypted: $plain2"
show "echo '$record' | credmatrix encrypt --data-class confidential --region us-east-1   # residency: no grant names us-east-1"
set +e
printf '%s' "$record" | "$cm" encrypt --data-class confidential --region us-east-1 --context table=customers >"$state/residency.out" 2>"$state/err"
rc=$?
set -e
[[ $rc -eq 3 ]] || { cat "$state/err" >&2; echo "demo: expected the residency denial (exit code 3), got $rc" >&2; exit 1; }
[[ ! -s $state/residency.out ]] || { echo "demo: a denied encrypt printed an envelope" >&2; exit 1; }
sed 's/^/  /' "$state/err"
echo "exit code $rc (denied: confidential data stays in eu-west-1); denial recorded"

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
show "credmatrix policy test --policy policy.yaml --token-env CREDMATRIX_OIDC_TOKEN --role deploy --account prod   # offline, as a PR check"
set +e
"$cm" policy test --policy "$state/policy.yaml" --token-env CREDMATRIX_OIDC_TOKEN --role deploy --account prod >"$state/explain.txt" 2>&1
rc=$?
set -e
[[ $rc -eq 3 ]] && grep -q "decided by default-deny" "$state/explain.txt" || { cat "$state/explain.txt" >&2; echo "demo: policy test did not explain the denial" >&2; exit 1; }
sed 's/^/  /' "$state/explain.txt"

step "5. The audit log: every issuance, denial and key operation, in order"
show 'credmatrix audit tail --from 0 --follow=false'
"$cm" audit tail --from 0 --follow=false | tee "$state/audit.txt"
events=$(($(wc -l <"$state/audit.txt") - 1))

step "6. Metrics: each service's Prometheus endpoint (own loopback port, never the gRPC one)"
# A plain HTTP/1.0 GET through bash's /dev/tcp, so the demo needs no curl.
scrape() {
  local hp=${1#http://}
  hp=${hp%%/*}
  exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}"
  printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$hp" >&3
  cat <&3
  exec 3<&-
}
show 'curl -s $CREDMATRIX_BROKER_METRICS_URL | grep -E "credmatrix_broker_(issuances|denials)_total"'
scrape "$CREDMATRIX_BROKER_METRICS_URL" >"$state/broker.metrics"
grep -E '^credmatrix_broker_(issuances|denials)_total' "$state/broker.metrics" | sed 's/^/  /'
show 'curl -s $CREDMATRIX_KEYGUARD_METRICS_URL | grep credmatrix_keyguard_grant_denials_total'
scrape "$CREDMATRIX_KEYGUARD_METRICS_URL" >"$state/keyguard.metrics"
grep -E '^credmatrix_keyguard_grant_denials_total' "$state/keyguard.metrics" | sed 's/^/  /'
show 'curl -s $CREDMATRIX_AUDIT_METRICS_URL | grep -E "credmatrix_audit_(tree_size|queue_events|checkpoint_age_seconds)"'
scrape "$CREDMATRIX_AUDIT_METRICS_URL" >"$state/audit.metrics"
grep -E '^credmatrix_audit_(tree_size|queue_events|checkpoint_age_seconds) ' "$state/audit.metrics" | sed 's/^/  /'
issued_series=$(grep -c '^credmatrix_broker_issuances_total' "$state/broker.metrics" || true)
denied_series=$(grep -c '^credmatrix_broker_denials_total' "$state/broker.metrics" || true)
[[ $issued_series -ge 1 && $denied_series -ge 1 ]] || { echo "demo: the broker's metrics lack issuances or denials" >&2; exit 1; }
echo "names and alerts: docs/metrics.md; dashboard: deploy/grafana/credmatrix.json"

step "7. Verify the audit log: every leaf, the signed checkpoint (Ed25519, C2SP note), no rollback"
show 'credmatrix audit verify --checkpoint-file audit.checkpoint   # public key: $CREDMATRIX_AUDIT_PUBLIC_KEY_FILE'
"$cm" audit verify --checkpoint-file "$state/audit.checkpoint" | tee "$state/verify.txt"
verified=$(sed -n 's/^verified: \([0-9]*\) events.*tree size \([0-9]*\).*/\2/p' "$state/verify.txt")
[[ -n $verified && -s $state/audit.checkpoint ]] || { echo "demo: audit verify did not verify" >&2; exit 1; }
show 'credmatrix audit export --out audit.bundle && credmatrix audit verify --bundle audit.bundle --checkpoint-file audit.checkpoint'
"$cm" audit export --out "$state/audit.bundle"
"$cm" audit verify --bundle "$state/audit.bundle" --checkpoint-file "$state/audit.checkpoint" >/dev/null
echo "offline: the exported bundle verifies against the kept checkpoint"

step "8. Replay: which sessions were live in account sandbox just now?"
show 'credmatrix audit replay sessions --at now --account sandbox'
"$cm" audit replay sessions --at now --account sandbox 2>/dev/null | tee "$state/replay.txt"
grep -q "$key_id" "$state/replay.txt" || { echo "demo: replay does not show the issued session" >&2; exit 1; }
live=$(sed -n 's/^\([0-9]*\) session(s) live.*/\1/p' "$state/replay.txt")

step "Summary"
cat <<SUMMARY
  session issued     $key_id for deploy@sandbox (eu-west-1), audited before it was returned
  regional session   $pay_key for deploy@payments-eu ($pay_region) by rule $pay_rule, residency-scoped
  record encrypted   confidential/eu-west-1, decrypted with its context, refused with another
  two classes        internal/us-east-1 record encrypted and decrypted; confidential/us-east-1 denied (residency)
  request denied     deploy@prod, exit code 3, denial recorded and explained by credmatrix policy test
  audit log          $events events with gap-free sequence numbers
  audit verified     tree size $verified under a signed checkpoint, kept for the next rollback check
  replay             $live session(s) live in sandbox now, including $key_id
  metrics            issuances and denials by role/account on the broker's /metrics ($issued_series + $denied_series series)
Demo complete.
SUMMARY
