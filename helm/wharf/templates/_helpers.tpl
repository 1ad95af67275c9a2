{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "wharf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 characters (DNS-1123 label). The release name is used
alone when it already contains the chart name.
*/}}
{{- define "wharf.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service that governs the StatefulSet's pod names. */}}
{{- define "wharf.headlessName" -}}
{{- printf "%s-headless" (include "wharf.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "wharf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels -------------------------------------------------------------------------------- */}}

{{- define "wharf.labels" -}}
helm.sh/chart: {{ include "wharf.chart" . }}
{{ include "wharf.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wharf
{{- end }}

{{- define "wharf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wharf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wharf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wharf.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wharf.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* Wharf configuration ------------------------------------------------------------------- */}}

{{/* The port of config.listen ("host:port"); the container port, probes and Service target. */}}
{{- define "wharf.port" -}}
{{- $listen := toString .Values.config.listen }}
{{- $port := regexFind "[0-9]+$" $listen }}
{{- if or (not $port) (not (contains ":" $listen)) }}
{{- fail (printf "config.listen must be host:port, e.g. 0.0.0.0:5000 (got %q)" $listen) }}
{{- end }}
{{- $port }}
{{- end }}

{{/* Where the TLS Secret (tls.existingSecret) is mounted; config.tls points at its files. */}}
{{- define "wharf.tlsDir" -}}
/etc/wharf/tls
{{- end }}

{{/*
A probe from values without its "enabled" switch; with TLS its httpGet asks over HTTPS (the
kubelet does not verify the certificate). Input: dict "probe" <values> "tls" <secret name or "">.
*/}}
{{- define "wharf.probe" -}}
{{- $probe := omit (deepCopy .probe) "enabled" }}
{{- if and .tls $probe.httpGet }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Where s3.existingSecret is mounted; config.storage.s3.*_file point at its files. */}}
{{- define "wharf.s3SecretDir" -}}
/etc/wharf/secrets/s3
{{- end }}

{{/* config.storage.root, checked: the data volume is mounted there. */}}
{{- define "wharf.storageRoot" -}}
{{- $root := toString .Values.config.storage.root }}
{{- if not (hasPrefix "/" $root) }}
{{- fail (printf "config.storage.root must be an absolute path (the data volume is mounted there), got %q" $root) }}
{{- end }}
{{- $root }}
{{- end }}

{{/* Where the cluster secret (cluster.existingSecret) is mounted; config.cluster.secret_file names its file. */}}
{{- define "wharf.clusterSecretDir" -}}
/etc/wharf/secrets/cluster
{{- end }}

{{/*
"on" when replicas share blobs with each other (cluster.existingSecret, or a secret file given as
config.cluster.secret_file), else "". Refuses what cannot work: both secrets at once, an
advertise_url in values (it is per pod: the chart sets WHARF_CLUSTER__ADVERTISE_URL), no Redis
(replicas find each other's downloads there), a shared volume (replicas on it already fetch each
blob once through it), and HTTPS on a Deployment (a certificate does not name pod IPs).
*/}}
{{- define "wharf.cluster" -}}
{{- $cluster := .Values.config.cluster | default dict }}
{{- $what := ternary "cluster.existingSecret" "config.cluster.secret_file" (not (empty .Values.cluster.existingSecret)) }}
{{- if and .Values.cluster.existingSecret $cluster.secret_file }}
{{- fail "give either cluster.existingSecret or config.cluster.secret_file, not both" }}
{{- end }}
{{- if hasKey $cluster "advertise_url" }}
{{- fail "config.cluster.advertise_url is per pod: leave it out, the chart sets WHARF_CLUSTER__ADVERTISE_URL to each pod's own address" }}
{{- end }}
{{- if or .Values.cluster.existingSecret $cluster.secret_file }}
{{- if not (or (.Values.config.redis | default dict).url .Values.redis.existingSecret) }}
{{- fail (printf "%s needs Redis (config.redis.url or redis.existingSecret): replicas find each other's downloads through it" $what) }}
{{- end }}
{{- if eq .Values.workload.kind "Deployment" }}
{{- if .Values.persistence.enabled }}
{{- fail (printf "%s is for replicas on disks of their own (workload.kind StatefulSet, or a Deployment with persistence.enabled false): replicas on one shared volume already fetch each blob once through it" $what) }}
{{- end }}
{{- if .Values.tls.existingSecret }}
{{- fail (printf "%s with tls.existingSecret needs workload.kind StatefulSet: a Deployment's pods advertise their pod IPs, which a certificate does not name (a StatefulSet's pods advertise <pod>.%s.%s.svc)" $what (include "wharf.headlessName" .) .Release.Namespace) }}
{{- end }}
{{- end }}
{{- print "on" }}
{{- end }}
{{- end }}

{{/*
The URL the other replicas reach this pod at (WHARF_CLUSTER__ADVERTISE_URL), with $(POD_NAME) or
$(POD_IP) that Kubernetes expands from the env entries before it: a StatefulSet's pod by its name
under the headless Service (https with tls.existingSecret), a Deployment's pod by its IP, on the
container's port.
*/}}
{{- define "wharf.advertiseUrl" -}}
{{- $port := include "wharf.port" . }}
{{- if eq .Values.workload.kind "StatefulSet" }}
{{- printf "%s://$(POD_NAME).%s.%s.svc:%s" (include "wharf.scheme" .) (include "wharf.headlessName" .) .Release.Namespace $port }}
{{- else }}
{{- printf "http://$(POD_IP):%s" $port }}
{{- end }}
{{- end }}

{{/* WHARF_UPSTREAM_<NAME>_PASSWORD for an upstream name, as proxy/config.py derives it. */}}
{{- define "wharf.upstreamPasswordEnv" -}}
{{- printf "WHARF_UPSTREAM_%s_PASSWORD" (regexReplaceAll "[^A-Z0-9]" (upper .) "_") }}
{{- end }}

{{/* Where the password of upstream number $i is mounted when passwordSecret.mountAs is file. */}}
{{- define "wharf.upstreamSecretDir" -}}
{{- printf "/etc/wharf/secrets/upstream-%d" (int .) }}
{{- end }}

{{/*
Checks one upstream's passwordSecret and returns its mode ("file" or "env").
Input: dict "upstream" <entry> "index" <int>.
*/}}
{{- define "wharf.upstreamSecretMode" -}}
{{- $u := .upstream }}
{{- $s := $u.passwordSecret }}
{{- if not $s.name }}
{{- fail (printf "config.upstreams[%d] (%s): passwordSecret.name is required" (int .index) $u.name) }}
{{- end }}
{{- if or $u.password_env $u.password_file $u.password }}
{{- fail (printf "config.upstreams[%d] (%s): give either passwordSecret or password_env / password_file, not both (and never password)" (int .index) $u.name) }}
{{- end }}
{{- $mode := default "file" $s.mountAs }}
{{- if not (has $mode (list "file" "env")) }}
{{- fail (printf "config.upstreams[%d] (%s): passwordSecret.mountAs must be file or env, got %q" (int .index) $u.name $mode) }}
{{- end }}
{{- $mode }}
{{- end }}

{{/*
The wharf.yaml the pod reads: .Values.config with each upstream's chart-only passwordSecret
turned into password_file (a mounted Secret key) or password_env (WHARF_UPSTREAM_<NAME>_PASSWORD).
*/}}
{{- define "wharf.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $upstreams := list }}
{{- $names := list }}
{{- range $i, $u := (.Values.config.upstreams | default list) }}
{{- if not $u.name }}
{{- fail (printf "config.upstreams[%d]: name is required" $i) }}
{{- end }}
{{- if not $u.url }}
{{- fail (printf "config.upstreams[%d] (%s): url is required" $i $u.name) }}
{{- end }}
{{- if hasKey $u "password" }}
{{- fail (printf "config.upstreams[%d] (%s): do not put a password in values; use passwordSecret" $i $u.name) }}
{{- end }}
{{- $out := omit $u "passwordSecret" }}
{{- if $u.passwordSecret }}
{{- $mode := include "wharf.upstreamSecretMode" (dict "upstream" $u "index" $i) }}
{{- if eq $mode "env" }}
{{- $_ := set $out "password_env" (include "wharf.upstreamPasswordEnv" $u.name) }}
{{- else }}
{{- $_ := set $out "password_file" (printf "%s/password" (include "wharf.upstreamSecretDir" $i)) }}
{{- end }}
{{- end }}
{{- $upstreams = append $upstreams $out }}
{{- $names = append $names (toString $u.name) }}
{{- end }}
{{- $_ := set $cfg "upstreams" $upstreams }}
{{- $storage := deepCopy (.Values.config.storage | default dict) }}
{{- $_ := set $storage "root" (include "wharf.storageRoot" .) }}
{{- if eq (toString $storage.backend) "s3" }}
{{- $s3 := deepCopy ($storage.s3 | default dict) }}
{{- if not $s3.bucket }}
{{- fail "config.storage.s3.bucket is required when config.storage.backend is s3" }}
{{- end }}
{{- if .Values.s3.existingSecret }}
{{- if or $s3.access_key_id_file $s3.secret_access_key_file }}
{{- fail "give either s3.existingSecret or config.storage.s3.access_key_id_file / secret_access_key_file, not both" }}
{{- end }}
{{- $_ := set $s3 "access_key_id_file" (printf "%s/access_key_id" (include "wharf.s3SecretDir" .)) }}
{{- $_ := set $s3 "secret_access_key_file" (printf "%s/secret_access_key" (include "wharf.s3SecretDir" .)) }}
{{- end }}
{{- $_ := set $storage "s3" $s3 }}
{{- else }}
{{- /* disk: Wharf's default, left out of the file (so does config/wharf.yaml) */}}
{{- $_ := unset $storage "s3" }}
{{- $_ := unset $storage "backend" }}
{{- end }}
{{- $_ := set $cfg "storage" $storage }}
{{- if and $cfg.default_upstream (not (has (toString $cfg.default_upstream) $names)) }}
{{- fail (printf "config.default_upstream %q is not the name of one of config.upstreams" $cfg.default_upstream) }}
{{- end }}
{{- /* keep "none" explicit in the file, as config/wharf.yaml does (Helm drops null values) */}}
{{- if not $cfg.default_upstream }}
{{- $_ := set $cfg "default_upstream" nil }}
{{- end }}
{{- $redis := deepCopy (.Values.config.redis | default dict) }}
{{- if not $redis.url }}
{{- $_ := set $redis "url" nil }}
{{- end }}
{{- $_ := set $cfg "redis" $redis }}
{{- if and (gt (int .Values.replicaCount) 1) (not (or $redis.url .Values.redis.existingSecret)) }}
{{- fail "replicaCount > 1 needs Redis (config.redis.url or redis.existingSecret): replicas share single flight, tags and budgets through it" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (eq .Values.workload.kind "Deployment") (not (or ($cfg.database | default dict).url .Values.database.existingSecret)) }}
{{- fail "replicaCount > 1 on a shared volume needs PostgreSQL (config.database.url or database.existingSecret) for accounts and package metadata" }}
{{- end }}
{{- if include "wharf.cluster" . }}
{{- $cluster := deepCopy ($cfg.cluster | default dict) }}
{{- if .Values.cluster.existingSecret }}
{{- $_ := set $cluster "secret_file" (printf "%s/secret" (include "wharf.clusterSecretDir" .)) }}
{{- end }}
{{- $_ := set $cfg "cluster" $cluster }}
{{- end }}
{{- if .Values.tls.existingSecret }}
{{- if and $cfg.tls (or $cfg.tls.cert $cfg.tls.key) }}
{{- fail "give either tls.existingSecret or config.tls.cert / config.tls.key, not both" }}
{{- end }}
{{- $tls := deepCopy ($cfg.tls | default dict) }}
{{- $_ := set $tls "cert" (printf "%s/tls.crt" (include "wharf.tlsDir" .)) }}
{{- $_ := set $tls "key" (printf "%s/tls.key" (include "wharf.tlsDir" .)) }}
{{- $_ := set $cfg "tls" $tls }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* http, or https with tls.existingSecret. */}}
{{- define "wharf.scheme" -}}
{{- if .Values.tls.existingSecret }}https{{ else }}http{{ end }}
{{- end }}

{{/* The mirror address printed in NOTES.txt. */}}
{{- define "wharf.mirrorEndpoint" -}}
{{- $scheme := include "wharf.scheme" . }}
{{- if .Values.mirrorEndpoint }}
{{- .Values.mirrorEndpoint | trimSuffix "/" }}
{{- else if eq .Values.service.type "NodePort" }}
{{- printf "%s://<node-ip>:%s" $scheme (.Values.service.nodePort | default "<node-port>" | toString) }}
{{- else if eq .Values.service.type "LoadBalancer" }}
{{- printf "%s://<load-balancer-ip>:%s" $scheme (toString .Values.service.port) }}
{{- else }}
{{- printf "%s://<cluster-ip-of-%s>:%s" $scheme (include "wharf.fullname" .) (toString .Values.service.port) }}
{{- end }}
{{- end }}
