{{/*
Names and labels, as prometheus-community's charts write them.
*/}}
{{- define "duijie.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: release and chart, at most 50 characters so that "<fullname>-procuratorate-migrate"
style suffixes stay within 63.
*/}}
{{- define "duijie.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "duijie.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "duijie.labels" -}}
helm.sh/chart: {{ include "duijie.chart" . }}
app.kubernetes.io/name: {{ include "duijie.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "duijie.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: duijie
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the whole release. */}}
{{- define "duijie.selectorLabels" -}}
app.kubernetes.io/name: {{ include "duijie.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels. Call with (dict "root" $ "svc" "court").
*/}}
{{- define "duijie.componentLabels" -}}
{{ include "duijie.labels" .root }}
app.kubernetes.io/component: {{ .svc }}
{{- end }}

{{- define "duijie.componentSelectorLabels" -}}
{{ include "duijie.selectorLabels" .root }}
app.kubernetes.io/component: {{ .svc }}
{{- end }}

{{/* "<fullname>-<svc>". Call with (dict "root" $ "svc" "court"). */}}
{{- define "duijie.componentName" -}}
{{- printf "%s-%s" (include "duijie.fullname" .root) .svc | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The agency services, in a fixed order. */}}
{{- define "duijie.agencyServices" -}}
court procuratorate police petition mediation
{{- end }}

{{/* Services with a database (migrations), in a fixed order. */}}
{{- define "duijie.dbServices" -}}
court procuratorate police petition mediation audit
{{- end }}

{{/* Every workload. */}}
{{- define "duijie.allServices" -}}
court procuratorate police petition mediation audit console
{{- end }}

{{- define "duijie.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "duijie.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "duijie.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "duijie.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "duijie.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Names of the operator-run backends. */}}
{{- define "duijie.pgClusterName" -}}
{{- printf "%s-pg" (include "duijie.fullname" .) }}
{{- end }}

{{- define "duijie.rabbitmqClusterName" -}}
{{- printf "%s-rabbitmq" (include "duijie.fullname" .) }}
{{- end }}

{{/* Database host, user and password Secret. */}}
{{- define "duijie.dbHost" -}}
{{- if .Values.postgresql.cnpg.enabled }}
{{- printf "%s-rw" (include "duijie.pgClusterName" .) }}
{{- else }}
{{- .Values.postgresql.external.host }}
{{- end }}
{{- end }}

{{- define "duijie.dbPort" -}}
{{- if .Values.postgresql.cnpg.enabled }}5432{{ else }}{{ .Values.postgresql.external.port }}{{ end }}
{{- end }}

{{- define "duijie.dbUser" -}}
{{- if .Values.postgresql.cnpg.enabled }}{{ .Values.postgresql.cnpg.owner }}{{ else }}{{ .Values.postgresql.external.username }}{{ end }}
{{- end }}

{{- define "duijie.dbSecretName" -}}
{{- if .Values.postgresql.cnpg.enabled }}
{{- printf "%s-app" (include "duijie.pgClusterName" .) }}
{{- else }}
{{- required "postgresql.external.existingSecret.name is required" .Values.postgresql.external.existingSecret.name }}
{{- end }}
{{- end }}

{{- define "duijie.dbSecretKey" -}}
{{- if .Values.postgresql.cnpg.enabled }}password{{ else }}{{ .Values.postgresql.external.existingSecret.passwordKey }}{{ end }}
{{- end }}

{{- define "duijie.caSecretName" -}}
{{- default .Values.pki.existingSecret .Values.pki.ca.existingSecret }}
{{- end }}

{{/* The Secret of a service's server (or, for the console, HTTPS) certificate. (dict "root" $ "svc" "court") */}}
{{- define "duijie.tlsSecretName" -}}
{{- $svcValues := index .root.Values.services .svc }}
{{- if and (not .root.Values.tls.certManager.enabled) $svcValues.tls.existingSecret }}
{{- $svcValues.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "duijie.componentName" .) }}
{{- end }}
{{- end }}

{{/* host:port of a service's mutual-TLS gRPC port, in the release's namespace. */}}
{{- define "duijie.grpcEndpoint" -}}
{{- printf "%s.%s.svc:%d" (include "duijie.componentName" .) .root.Release.Namespace (int .root.Values.ports.grpc) }}
{{- end }}

{{/*
A service's configuration file (base.yaml), production defaults mirroring config/<svc>/base.yaml
with paths under /etc/duijie, then services.<svc>.config merged over it.
(dict "root" $ "svc" "court")
*/}}
{{- define "duijie.configFile" -}}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $v := index $root.Values.services $svc }}
{{- $listen := $root.Values.listenHost }}
{{- $cfg := dict }}
{{- $paths := dict "directory" "/etc/duijie/directory/directory.yaml" "pki" "/etc/duijie/pki" "ca" "/etc/duijie/ca/ca.pem" "cert" "/etc/duijie/tls/tls.crt" "key" "/etc/duijie/tls/tls.key" }}
{{- $metrics := dict "listen" (printf "%s:%d" $listen (int $root.Values.ports.metrics)) }}
{{- if eq $svc "console" }}
{{- $endpoints := dict "tls_domain" $root.Values.tls.domain }}
{{- range $s := splitList " " (printf "%s audit" (include "duijie.agencyServices" $root)) }}
{{- $_ := set $endpoints $s (include "duijie.grpcEndpoint" (dict "root" $root "svc" $s)) }}
{{- end }}
{{- $cfg = dict "listen" (printf "%s:%d" $listen (int $root.Values.ports.http)) "sign_in" "client_certificate" "tls" (dict "cert" $paths.cert "key" $paths.key "client_ca" $paths.ca) "pki" $paths.pki "endpoints" $endpoints "directory" $paths.directory "directory_reload_ms" 5000 "metrics" $metrics }}
{{- else }}
{{- $db := dict "host" (include "duijie.dbHost" $root) "port" (int (include "duijie.dbPort" $root)) "username" (include "duijie.dbUser" $root) "database" $v.database.name "require_ssl" (or $root.Values.postgresql.cnpg.enabled $root.Values.postgresql.external.requireSsl) "max_connections" (int $v.database.maxConnections) "bus_connections" (int $v.database.busConnections) "acquire_timeout_ms" 5000 "busy_after_ms" 5000 }}
{{- $topology := dict "prefix" $root.Values.topology.prefix "partitions" (int $root.Values.topology.partitions) "tap_partitions" (int $root.Values.topology.tapPartitions) }}
{{- $grpc := dict "listen" (printf "%s:%d" $listen (int $root.Values.ports.grpc)) "health_listen" (printf "%s:%d" $listen (int $root.Values.ports.health)) "tls" (dict "ca" $paths.ca "cert" $paths.cert "key" $paths.key) }}
{{- $cfg = dict "database" $db "amqp" (dict "connection_name" (printf "duijie-%s" $svc) "heartbeat_secs" 10) "topology" $topology "grpc" $grpc "metrics" $metrics "signing" (dict "ca" $paths.ca "keys" $paths.pki) }}
{{- if eq $svc "audit" }}
{{- $_ := set $cfg "audit" (dict "retention_days" 183 "deadline_scan_ms" 60000 "warn_before_ms" 86400000 "chains" 1 "tree_head_ms" 600000 "status_interval_ms" 1000 "lookup" (dict "callers" (list "duijie-console") "address_attempts" 10 "address_window_ms" 600000 "case_failures" 5 "case_window_ms" 3600000)) }}
{{- else }}
{{- $_ := set $cfg "directory" $paths.directory }}
{{- $_ := set $cfg "audit_gate" (dict "enabled" true "close_backlog" 10000 "open_backlog" 5000 "close_lag_ms" 60000 "open_lag_ms" 15000 "interval_ms" 2000 "status_stale_ms" 5000) }}
{{- $_ := set $cfg "key_service" (dict "endpoint" (include "duijie.grpcEndpoint" (dict "root" $root "svc" "audit")) "tls_domain" $root.Values.tls.domain) }}
{{- end }}
{{- end }}
{{- $merged := mergeOverwrite $cfg (deepCopy ($v.config | default dict)) }}
{{- printf "# duijie-%s, rendered by the duijie chart from values (services.%s.config overrides).\n# Secrets come from DUIJIE_* environment variables only.\n" $svc $svc }}
{{- toYaml $merged }}
{{- end }}

{{/* Environment of a service's container (and of its migration step). (dict "root" $ "svc" "court") */}}
{{- define "duijie.env" -}}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $v := index $root.Values.services $svc }}
- name: DUIJIE_CONFIG_DIR
  value: /etc/duijie/config
{{- if ne $svc "console" }}
- name: DUIJIE_DATABASE__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "duijie.dbSecretName" $root }}
      key: {{ include "duijie.dbSecretKey" $root }}
- name: DUIJIE_AMQP__URL
  valueFrom:
    secretKeyRef:
      name: {{ required "rabbitmq.existingSecret is required" $root.Values.rabbitmq.existingSecret }}
      key: {{ index $root.Values.rabbitmq.urlKeys $svc }}
{{- end }}
{{- if eq $svc "audit" }}
- name: DUIJIE_AUDIT__KEYS__MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "audit.masterKey.existingSecret is required" $root.Values.audit.masterKey.existingSecret }}
      key: {{ $root.Values.audit.masterKey.key }}
{{- with $root.Values.audit.lookupSecret.existingSecret }}
- name: DUIJIE_AUDIT__LOOKUP__ACCESS_CODE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.audit.lookupSecret.key }}
{{- end }}
{{- end }}
{{- if eq $svc "console" }}
{{- with $root.Values.console.sessionSecret.existingSecret }}
- name: DUIJIE_SESSION__SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.console.sessionSecret.key }}
{{- end }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Whether a service is deployed. */}}
{{- define "duijie.enabled" -}}
{{- if (index .root.Values.services .svc).enabled }}true{{ end }}
{{- end }}

{{/*
Hook phases of the Jobs that need the database or the broker: before install and upgrade, except
when the chart creates the backends itself (they do not exist before install: the Job then runs
after install, the services migrating at start meanwhile).
*/}}
{{- define "duijie.hookPhases" -}}
{{- if or .Values.postgresql.cnpg.enabled .Values.rabbitmq.cluster.enabled -}}
post-install,pre-upgrade
{{- else -}}
pre-install,pre-upgrade
{{- end }}
{{- end }}

{{/* The directory ConfigMap's data (also copied into the migration hook's ConfigMap). */}}
{{- define "duijie.directoryData" -}}
directory.yaml: |
  # The deployment's agency directory, rendered by the duijie chart from directory.agencies.
  agencies:
  {{- range .Values.directory.agencies }}
    - { id: {{ .id | quote }}, name: {{ .name | quote }} }
  {{- else }} []
  {{- end }}
{{- end }}

{{- define "duijie.directoryConfigMapName" -}}
{{- default (printf "%s-directory" (include "duijie.fullname" .)) .Values.directory.existingConfigMap }}
{{- end }}

{{/* One step of the migration Job. (dict "root" $ "svc" "court") */}}
{{- define "duijie.migrateContainer" -}}
- name: migrate-{{ .svc }}
  image: {{ include "duijie.image" .root | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["/usr/local/bin/duijie-{{ .svc }}", "migrate"]
  env:
    {{- include "duijie.env" . | nindent 4 }}
  resources:
    {{- toYaml .root.Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - {name: config-{{ .svc }}, mountPath: /etc/duijie/config, readOnly: true}
    - {name: directory, mountPath: /etc/duijie/directory, readOnly: true}
    - {name: tmp, mountPath: /tmp}
{{- end }}
