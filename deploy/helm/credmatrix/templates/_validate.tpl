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
{{- if .Values.keyguard.autoscaling.enabled -}}
{{- fail "keyguard.autoscaling.enabled: not yet: keyguard keeps API grants and ring state in a per-pod SQLite file, so replicas would disagree on grants (a revoked grant would live on in another pod)" -}}
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
{{- if and (eq .Values.probes.mode "grpc") (eq (int .Values.probes.grpcPort) (int .Values.grpcPort)) -}}
{{- fail "probes.grpcPort: must differ from grpcPort (the service port requires mTLS, which the kubelet's grpc probe cannot do)" -}}
{{- end -}}
{{- end -}}
