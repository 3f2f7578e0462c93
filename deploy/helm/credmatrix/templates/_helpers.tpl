{{/*
Helpers of the credmatrix chart. Component helpers take a dict
{"root": $, "component": "audit"|"broker"|"keyguard"}.
*/}}

{{- define "credmatrix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "credmatrix.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "credmatrix.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a component's resources: <fullname>-<component>. */}}
{{- define "credmatrix.component.name" -}}
{{- printf "%s-%s" (include "credmatrix.fullname" .root) .component -}}
{{- end -}}

{{- define "credmatrix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "credmatrix.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "credmatrix.labels" -}}
{{ include "credmatrix.selectorLabels" . }}
helm.sh/chart: {{ include "credmatrix.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: credmatrix
{{- end -}}

{{- define "credmatrix.serviceAccountName" -}}
{{- $v := index .root.Values .component -}}
{{- default (include "credmatrix.component.name" .) $v.serviceAccount.name -}}
{{- end -}}

{{/* The component's SPIFFE identity: the URI SAN of its certificate. */}}
{{- define "credmatrix.identity" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .root.Values.identity.trustDomain .root.Release.Namespace (include "credmatrix.serviceAccountName" .) -}}
{{- end -}}

{{/* In-cluster DNS name of the component's Service. */}}
{{- define "credmatrix.serviceHost" -}}
{{- printf "%s.%s.svc" (include "credmatrix.component.name" .) .root.Release.Namespace -}}
{{- end -}}

{{- define "credmatrix.image" -}}
{{- $img := .root.Values.image -}}
{{- if $img.digest -}}
{{- printf "%s/%s@%s" $img.repository .component $img.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $img.repository .component (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "credmatrix.tlsSecret" -}}
{{- $name := index .root.Values.tls.existingSecrets .component -}}
{{- if eq .root.Values.tls.source "certManager" -}}
{{- $name = "" -}}
{{- end -}}
{{- default (printf "%s-tls" (include "credmatrix.component.name" .)) $name -}}
{{- end -}}

{{/* Secret holding the component's keys, mounted at /etc/credmatrix/keys. */}}
{{- define "credmatrix.keysSecret" -}}
{{- if eq .component "broker" -}}
{{- default (printf "%s-keys" (include "credmatrix.component.name" .)) .root.Values.broker.keys.existingSecret -}}
{{- else if eq .component "keyguard" -}}
{{- $v := .root.Values.keyguard -}}
{{- default (printf "%s-keys" (include "credmatrix.component.name" .)) (coalesce $v.keys.existingSecret (ternary $v.local.existingSecret $v.awskms.existingSecret (eq $v.backend "local"))) -}}
{{- end -}}
{{- end -}}

{{/*
Whether the component keeps its state on a volume of its own and so runs
as a StatefulSet of one: audit on SQLite, and keyguard, whose state file
(API grants, ring state; and the keystore with backend local) is SQLite.
*/}}
{{- define "credmatrix.stateful" -}}
{{- if and (eq .component "audit") (eq .root.Values.audit.store "sqlite") -}}true
{{- else if and (eq .component "broker") (eq .root.Values.broker.state.driver "sqlite") -}}true
{{- else if and (eq .component "keyguard") (or (eq .root.Values.keyguard.backend "local") (eq .root.Values.keyguard.state.driver "sqlite")) -}}true
{{- end -}}
{{- end -}}

{{/* Values of the component's volume (size, storageClassName). */}}
{{- define "credmatrix.volumeValues" -}}
{{- $v := index .root.Values .component -}}
{{- if eq .component "audit" -}}{{- toYaml $v.sqlite -}}
{{- else if eq .component "broker" -}}{{- toYaml (pick $v.state "size" "storageClassName") -}}
{{- else -}}{{- toYaml $v.persistence -}}
{{- end -}}
{{- end -}}

{{/* Environment variables the chart sets: secrets by secretKeyRef only. */}}
{{- define "credmatrix.env" -}}
{{- $v := index .root.Values .component -}}
{{- if and (eq .component "broker") (eq $v.state.driver "postgres") }}
- name: CREDMATRIX_BROKER_STATE_POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ $v.state.postgres.existingSecret }}
      key: {{ $v.state.postgres.dsnKey }}
{{- end }}
{{- if and (eq .component "keyguard") (eq $v.state.driver "postgres") }}
- name: CREDMATRIX_KEYGUARD_STATE_POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ $v.state.postgres.existingSecret }}
      key: {{ $v.state.postgres.dsnKey }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "credmatrix.autoscaled" -}}
{{- if and (ne .component "audit") (not (include "credmatrix.stateful" .)) -}}
{{- $v := index .root.Values .component -}}
{{- if $v.autoscaling.enabled -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* The server block every service shares: mTLS on grpcPort. */}}
{{- define "credmatrix.config.server" -}}
listen_addr: {{ printf ":%d" (int .Values.grpcPort) | quote }}
drain_timeout: {{ .Values.drainTimeout | quote }}
tls:
  cert_file: /etc/credmatrix/tls/tls.crt
  key_file: /etc/credmatrix/tls/tls.key
  client_ca_file: /etc/credmatrix/tls/ca.crt
{{- end -}}

{{/* Whether the component serves a public listener. */}}
{{- define "credmatrix.public" -}}
{{- if and (ne .component "audit") (index .root.Values .component).public.enabled -}}true{{- end -}}
{{- end -}}

{{/* Secret of the component's public certificate. */}}
{{- define "credmatrix.publicTLSSecret" -}}
{{- $p := (index .root.Values .component).public -}}
{{- if and (eq $p.tls.source "existingSecret") $p.tls.existingSecret -}}
{{- $p.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-public-tls" (include "credmatrix.component.name" .) -}}
{{- end -}}
{{- end -}}

{{/* The public block of broker and keyguard: publicPort, the public certificate. */}}
{{- define "credmatrix.config.public" -}}
{{- if include "credmatrix.public" (dict "root" .root "component" .component) -}}
{{- $_ := set .config "public" (dict "listen_addr" (printf ":%d" (int .root.Values.publicPort)) "tls" (dict "cert_file" "/etc/credmatrix/public-tls/tls.crt" "key_file" "/etc/credmatrix/public-tls/tls.key")) -}}
{{- end -}}
{{- end -}}

{{/* metrics.listen_addr on metrics.port when metrics.enabled (never the gRPC port). */}}
{{- define "credmatrix.config.metrics" -}}
{{- if .root.Values.metrics.enabled -}}
{{- $_ := set .config "metrics" (dict "listen_addr" (printf ":%d" (int .root.Values.metrics.port))) -}}
{{- end -}}
{{- end -}}

{{/* The audit client block of broker and keyguard. */}}
{{- define "credmatrix.config.auditClient" -}}
{{- $host := include "credmatrix.serviceHost" (dict "root" . "component" "audit") -}}
{{- if eq .Values.audit.store "postgres" }}
{{- /* every replica; appends go to the sequencer (health_service) */}}
target: {{ printf "dns:///%s-replicas.%s.svc:%d" (include "credmatrix.component.name" (dict "root" . "component" "audit")) .Release.Namespace (int .Values.grpcPort) | quote }}
server_name: {{ $host | quote }}
{{- else }}
target: {{ printf "%s:%d" $host (int .Values.grpcPort) | quote }}
{{- end }}
ca_file: /etc/credmatrix/tls/ca.crt
cert_file: /etc/credmatrix/tls/tls.crt
key_file: /etc/credmatrix/tls/tls.key
{{- end -}}

{{/* audit_zones of broker and keyguard: zone=target per audit.zones entry. */}}
{{- define "credmatrix.config.auditZones" -}}
{{- $zones := list -}}
{{- range .root.Values.audit.zones -}}
{{- $zones = append $zones (printf "%s=%s" .name .target) -}}
{{- end -}}
{{- with $zones -}}
{{- $_ := set $.config "audit_zones" . -}}
{{- end -}}
{{- end -}}

{{/*
Config files: keys and names as in each binary's --help. Settings the
chart does not model go in <component>.config, merged last.
*/}}
{{- define "credmatrix.config.audit" -}}
{{- $v := .Values.audit -}}
{{- $c := dict "server" (include "credmatrix.config.server" . | fromYaml) "log_level" $v.logLevel -}}
{{- $append := $v.appendPrincipals -}}
{{- if not $append -}}
{{- $append = list (include "credmatrix.identity" (dict "root" . "component" "broker")) (include "credmatrix.identity" (dict "root" . "component" "keyguard")) -}}
{{- end -}}
{{- $_ := set $c "append_principals" $append -}}
{{- $_ = set $c "read_principals" $v.readPrincipals -}}
{{- if eq $v.store "sqlite" -}}
{{- $_ = set $c "db_path" "/var/lib/credmatrix/audit.db" -}}
{{- else -}}
{{- $_ = set $c "store" "postgres" -}}
{{- $_ = set $c "postgres" (dict "dsn_file" (printf "/etc/credmatrix/keys/%s" $v.postgres.dsnKey)) -}}
{{- end -}}
{{- if $v.checkpointKey.existingSecret -}}
{{- $_ = set $c "checkpoint" (dict "key_file" (printf "/etc/credmatrix/keys/%s" $v.checkpointKey.key) "kept_file" "/var/lib/credmatrix/audit.kept") -}}
{{- else -}}
{{- $_ = set $c "checkpoint" (dict "key_file" "/var/lib/credmatrix/checkpoint.key" "generate_key" true "kept_file" "/var/lib/credmatrix/audit.kept") -}}
{{- end -}}
{{- include "credmatrix.config.metrics" (dict "root" . "config" $c) -}}
{{- toYaml (mustMergeOverwrite $c (deepCopy $v.config)) -}}
{{- end -}}

{{- define "credmatrix.config.broker" -}}
{{- $v := .Values.broker -}}
{{- $c := dict "server" (include "credmatrix.config.server" . | fromYaml) "log_level" $v.logLevel -}}
{{- $_ := set $c "audit" (include "credmatrix.config.auditClient" . | fromYaml) -}}
{{- $_ = set $c "policy_file" "/etc/credmatrix/policy/policy.yaml" -}}
{{- $_ = set $c "audit_hmac_key_file" (printf "/etc/credmatrix/keys/%s" $v.keys.auditHMACKey) -}}
{{- $_ = set $c "provider" $v.provider -}}
{{- include "credmatrix.config.auditZones" (dict "root" . "config" $c) -}}
{{- with $v.adminPrincipals -}}
{{- $_ = set $c "admin_principals" . -}}
{{- end -}}
{{- if eq $v.state.driver "sqlite" -}}
{{- $_ = set $c "state" (dict "driver" "sqlite" "sqlite_path" "/var/lib/credmatrix/broker-state.db") -}}
{{- else -}}
{{- $_ = set $c "state" (dict "driver" "postgres") -}}
{{- end -}}
{{- if eq $v.provider "local" -}}
{{- $_ = set $c "local_sts" (dict "signing_key_file" (printf "/etc/credmatrix/keys/%s" $v.keys.localSTSSigningKey)) -}}
{{- else -}}
{{- $aws := dict "mode" $v.aws.mode -}}
{{- with $v.aws.hubRoleArn -}}{{- $_ = set $aws "hub_role_arn" . -}}{{- end -}}
{{- with $v.aws.revokerRoleName -}}{{- $_ = set $aws "revoker_role_name" . -}}{{- end -}}
{{- $_ = set $c "aws" $aws -}}
{{- end -}}
{{- include "credmatrix.config.public" (dict "root" . "component" "broker" "config" $c) -}}
{{- include "credmatrix.config.metrics" (dict "root" . "config" $c) -}}
{{- toYaml (mustMergeOverwrite $c (deepCopy $v.config)) -}}
{{- end -}}

{{- define "credmatrix.config.keyguard" -}}
{{- $v := .Values.keyguard -}}
{{- $c := dict "server" (include "credmatrix.config.server" . | fromYaml) "log_level" $v.logLevel -}}
{{- $_ := set $c "audit" (include "credmatrix.config.auditClient" . | fromYaml) -}}
{{- $_ = set $c "keyring_file" "/etc/credmatrix/keyring/keyring.yaml" -}}
{{- if eq $v.state.driver "sqlite" -}}
{{- $_ = set $c "state" (dict "driver" "sqlite" "sqlite_path" "/var/lib/credmatrix/keyguard-state.db") -}}
{{- else -}}
{{- $_ = set $c "state" (dict "driver" "postgres") -}}
{{- end -}}
{{- $_ = set $c "audit_hmac_key_file" (printf "/etc/credmatrix/keys/%s" $v.keys.auditHMACKey) -}}
{{- with $v.admins -}}
{{- $_ = set $c "admins" . -}}
{{- end -}}
{{- $_ = set $c "backend" $v.backend -}}
{{- include "credmatrix.config.auditZones" (dict "root" . "config" $c) -}}
{{- with $v.residencyZones -}}
{{- $_ = set $c "residency_zones" . -}}
{{- end -}}
{{- if eq $v.backend "local" -}}
{{- $_ = set $c "local" (dict "keystore_file" "/var/lib/credmatrix/keystore" "root_key_file" (printf "/etc/credmatrix/keys/%s" $v.local.rootKey)) -}}
{{- else -}}
{{- /* Key versions live in the state store; this key authenticates them. */ -}}
{{- $_ = set $c "awskms" (dict "mac_key_file" (printf "/etc/credmatrix/keys/%s" $v.awskms.macKey)) -}}
{{- end -}}
{{- with $v.oidc.issuers -}}
{{- $_ = set $c "oidc" (dict "issuers" . "audience" $v.oidc.audience) -}}
{{- end -}}
{{- include "credmatrix.config.public" (dict "root" . "component" "keyguard" "config" $c) -}}
{{- include "credmatrix.config.metrics" (dict "root" . "config" $c) -}}
{{- toYaml (mustMergeOverwrite $c (deepCopy $v.config)) -}}
{{- end -}}

{{/* Items of the keys Secret the component mounts (none: no volume). */}}
{{- define "credmatrix.keyItems" -}}
{{- $v := index .root.Values .component -}}
{{- if eq .component "broker" }}
- key: {{ $v.keys.auditHMACKey }}
  path: {{ $v.keys.auditHMACKey }}
{{- if eq $v.provider "local" }}
- key: {{ $v.keys.localSTSSigningKey }}
  path: {{ $v.keys.localSTSSigningKey }}
{{- end }}
{{- else if eq .component "keyguard" }}
- key: {{ $v.keys.auditHMACKey }}
  path: {{ $v.keys.auditHMACKey }}
{{- if eq $v.backend "local" }}
- key: {{ $v.local.rootKey }}
  path: {{ $v.local.rootKey }}
{{- else }}
- key: {{ $v.awskms.macKey }}
  path: {{ $v.awskms.macKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* gRPC health probe handler: exec (mTLS) or native grpc. */}}
{{- define "credmatrix.probeHandler" -}}
{{- $p := .root.Values.probes -}}
{{- if eq $p.mode "grpc" -}}
grpc:
  port: {{ $p.grpcPort }}
{{- else -}}
exec:
  command:
    - /credmatrix-probe
    - {{ printf "--addr=127.0.0.1:%d" (int .root.Values.grpcPort) }}
    - {{ printf "--server-name=%s" (include "credmatrix.serviceHost" .) }}
    - --ca-file=/etc/credmatrix/tls/ca.crt
    - --cert-file=/etc/credmatrix/tls/tls.crt
    - --key-file=/etc/credmatrix/tls/tls.key
    - {{ printf "--timeout=%ds" (sub (int $p.timeoutSeconds) 1 | max 1) }}
{{- end -}}
{{- end -}}
