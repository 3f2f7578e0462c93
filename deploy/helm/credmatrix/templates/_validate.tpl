{{/*
Cross-field checks values.schema.json cannot express clearly; each message
names the value to fix.
*/}}
{{- define "credmatrix.validate" -}}
{{- if and (eq .Values.tls.source "certManager") (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.issuerRef.name: required with tls.source=certManager" -}}
{{- end -}}
{{- if and .Values.broker.autoscaling.enabled (eq .Values.broker.state.driver "sqlite") -}}
{{- fail "broker.autoscaling.enabled: needs broker.state.driver=postgres (with sqlite each replica would keep its own revocations and used token ids)" -}}
{{- end -}}
{{- if and (eq .Values.broker.state.driver "postgres") (not .Values.broker.state.postgres.existingSecret) -}}
{{- fail "broker.state.postgres.existingSecret: required with broker.state.driver=postgres" -}}
{{- end -}}
{{- if and .Values.keyguard.autoscaling.enabled (or (eq .Values.keyguard.state.driver "sqlite") (eq .Values.keyguard.backend "local")) -}}
{{- fail "keyguard.autoscaling.enabled: needs keyguard.state.driver=postgres and keyguard.backend=awskms (with SQLite each replica would keep its own grants, a revoked grant living on in another pod; a local keystore is per pod)" -}}
{{- end -}}
{{- if and (eq .Values.keyguard.state.driver "postgres") (not .Values.keyguard.state.postgres.existingSecret) -}}
{{- fail "keyguard.state.postgres.existingSecret: required with keyguard.state.driver=postgres" -}}
{{- end -}}
{{- if and (eq .Values.audit.store "postgres") (not .Values.audit.checkpointKey.existingSecret) -}}
{{- fail "audit.checkpointKey.existingSecret: required with audit.store=postgres (every replica must sign with the same key)" -}}
{{- end -}}
{{- if and (eq .Values.audit.store "postgres") (not .Values.audit.postgres.existingSecret) -}}
{{- fail "audit.postgres.existingSecret: required with audit.store=postgres (a Secret holding the DSN; the chart never takes the DSN as a value)" -}}
{{- end -}}
{{- range $component := list "audit" "broker" "keyguard" -}}
{{- range $i, $e := (index $.Values $component).extraEnv -}}
{{- if and (hasKey $e "value") (regexMatch "(?i)(secret|passw|token|key|dsn|credential)" $e.name) -}}
{{- fail (printf "%s.extraEnv[%d] (%s): looks secret; pass it with valueFrom.secretKeyRef, never as a value" $component $i $e.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not .Values.audit.readPrincipals -}}
{{- fail "audit.readPrincipals: required: the identities of the operators who may query the log" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.grpcPort)) -}}
{{- fail "metrics.port: must differ from grpcPort (metrics are plain HTTP; the gRPC port is mTLS)" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled: needs metrics.enabled=true" -}}
{{- end -}}
{{- if eq (int .Values.publicPort) (int .Values.grpcPort) -}}
{{- fail "publicPort: must differ from grpcPort (the public listener takes no client certificates; the service port requires them)" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.publicPort)) -}}
{{- fail "metrics.port: must differ from publicPort" -}}
{{- end -}}
{{- range $component := list "broker" "keyguard" -}}
{{- $p := (index $.Values $component).public -}}
{{- if $p.enabled -}}
{{- if not $p.host -}}
{{- fail (printf "%s.public.host: required with %s.public.enabled (the name runners dial, which the public certificate names)" $component $component) -}}
{{- end -}}
{{- if and (eq $p.tls.source "certManager") (not $p.tls.issuerRef.name) -}}
{{- fail (printf "%s.public.tls.issuerRef.name: required with %s.public.tls.source=certManager" $component $component) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keyguard.public.enabled (not .Values.keyguard.oidc.issuers) -}}
{{- fail "keyguard.oidc.issuers: required with keyguard.public.enabled (on the public listener a bearer token is the only credential)" -}}
{{- end -}}
{{- if and .Values.keyguard.oidc.issuers (not .Values.keyguard.oidc.audience) -}}
{{- fail "keyguard.oidc.audience: required with keyguard.oidc.issuers" -}}
{{- end -}}
{{- if and (eq .Values.keyguard.backend "awskms") (not .Values.keyguard.existingKeyringConfigMap) -}}
{{- $kr := .Values.keyguard.keyring | fromYaml -}}
{{- range $i, $r := $kr.rings -}}
{{- if not $r.kms_key -}}
{{- fail (printf "keyguard.keyring: rings[%d] (%s/%s): kms_key required with keyguard.backend=awskms (the KMS key ARN or alias of the ring, in its region)" $i $r.data_class $r.region) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.enabled (not .Values.networkPolicy.egress.postgres) (or (eq .Values.audit.store "postgres") (eq .Values.broker.state.driver "postgres") (eq .Values.keyguard.state.driver "postgres")) -}}
{{- fail "networkPolicy.egress.postgres: required with audit.store=postgres, broker.state.driver=postgres or keyguard.state.driver=postgres (the PostgreSQL server's peers, e.g. an ipBlock of its subnet), or egress to it is denied" -}}
{{- end -}}
{{- $seenZones := dict -}}
{{- range $i, $z := .Values.audit.zones -}}
{{- if hasKey $seenZones $z.name -}}
{{- fail (printf "audit.zones[%d]: zone %s listed twice" $i $z.name) -}}
{{- end -}}
{{- $_ := set $seenZones $z.name true -}}
{{- if and $.Values.networkPolicy.enabled $.Values.networkPolicy.egress.enabled (not $z.to) -}}
{{- fail (printf "audit.zones[%d].to: required with networkPolicy.egress.enabled (the peers of zone %s's audit service, e.g. an ipBlock), or egress to it is denied and that zone's requests all fail" $i $z.name) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.probes.mode "grpc") (eq (int .Values.probes.grpcPort) (int .Values.grpcPort)) -}}
{{- fail "probes.grpcPort: must differ from grpcPort (the service port requires mTLS, which the kubelet's grpc probe cannot do)" -}}
{{- end -}}
{{- end -}}
