{{- define "otel-responses.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "otel-responses.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "otel-responses.labels" -}}
{{ include "otel-responses.selectorLabels" . }}
app.kubernetes.io/component: {{ .Values.mode }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "otel-responses.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "otel-responses.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "otel-responses.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/* A probe GETting PATH (the first of the list; the context second). A gateway is probed by
the kubelet over the pod IP; a sidecar's proxy listens on 127.0.0.1 only (it may add the upstream
key), so it is probed from inside the container with the image's Python. */}}
{{- define "otel-responses.probe" -}}
{{- $path := index . 0 }}{{ $ := index . 1 }}
{{- if eq $.Values.mode "sidecar" }}
exec:
  command: ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{{ $.Values.port }}{{ $path }}', timeout=2)"]
{{- else }}
httpGet:
  path: {{ $path }}
  port: http
{{- end }}
{{- end -}}

{{/* The otel-responses container, the same in both modes but for where the proxy listens and
how it is probed (the sidecar also adds restartPolicy). Metrics listen on 0.0.0.0 in both. */}}
{{- define "otel-responses.container" -}}
name: otel-responses
image: {{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command: ["otel-responses"]
args: ["serve", "--host", {{ ternary "127.0.0.1" "0.0.0.0" (eq .Values.mode "sidecar") | quote }}, "--port", {{ .Values.port | quote }}, "--metrics-port", {{ .Values.metrics.port | quote }}, "--metrics-host", "0.0.0.0"]
envFrom:
  - configMapRef:
      name: {{ include "otel-responses.fullname" . }}
{{- with include "otel-responses.env" . }}
env:
  {{- . | nindent 2 }}
{{- end }}
{{- with include "otel-responses.volumeMounts" . }}
volumeMounts:
  {{- . | nindent 2 }}
{{- end }}
ports:
{{- if ne .Values.mode "sidecar" }}
  - name: http
    containerPort: {{ .Values.port }}
{{- end }}
  - name: metrics
    containerPort: {{ .Values.metrics.port }}
startupProbe:
  {{- include "otel-responses.probe" (list "/healthz" .) | nindent 2 }}
  periodSeconds: 1
  failureThreshold: 30
readinessProbe:
  {{- include "otel-responses.probe" (list "/readyz" .) | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  {{- include "otel-responses.probe" (list "/healthz" .) | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}


{{/* Where the image keeps state (its VOLUME) and where the prices ConfigMap is mounted. */}}
{{- define "otel-responses.dataDir" -}}/var/lib/otel-responses{{- end -}}
{{- define "otel-responses.pricesDir" -}}/etc/otel-responses/prices{{- end -}}
{{- define "otel-responses.keysDir" -}}/etc/otel-responses/keys{{- end -}}

{{/* The prices ConfigMap (yours, or the chart's from cost.prices) and its key; empty when
there is no price file or cost is off. */}}
{{- define "otel-responses.pricesConfigMap" -}}
{{- if not .Values.cost.enabled -}}
{{- else if .Values.cost.pricesConfigMap.name -}}
{{- .Values.cost.pricesConfigMap.name -}}
{{- else if .Values.cost.prices -}}
{{- include "otel-responses.fullname" . }}-prices
{{- end -}}
{{- end -}}
{{- define "otel-responses.pricesKey" -}}
{{- ternary .Values.cost.pricesConfigMap.key "prices.yaml" (ne .Values.cost.pricesConfigMap.name "") -}}
{{- end -}}

{{/* A secretKeyRef variable: (list NAME SECRET-VALUE). */}}
{{- define "otel-responses.secretEnv" -}}
{{- $name := index . 0 }}{{ $secret := index . 1 -}}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name }}
      key: {{ $secret.key }}
{{- end -}}

{{/* The container's env entries (secrets and extraEnv; the rest comes from the ConfigMap).
env wins over envFrom, so a secret's variable replaces the ConfigMap's. */}}
{{- define "otel-responses.env" -}}
{{- if .Values.upstream.apiKeySecret.name }}
{{ include "otel-responses.secretEnv" (list "OTEL_RESPONSES_UPSTREAM_API_KEY" .Values.upstream.apiKeySecret) }}
{{- end }}
{{- if eq .Values.store.type "redis" }}
{{ include "otel-responses.secretEnv" (list "OTEL_RESPONSES_STORE" .Values.store.redis.urlSecret) }}
{{- end }}
{{- if .Values.guard.rateLimit.storeSecret.name }}
{{ include "otel-responses.secretEnv" (list "OTEL_RESPONSES_RATE_LIMIT_STORE" .Values.guard.rateLimit.storeSecret) }}
{{- end }}
{{- if .Values.otlp.headersSecret.name }}
{{ include "otel-responses.secretEnv" (list "OTEL_EXPORTER_OTLP_HEADERS" .Values.otlp.headersSecret) }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Mounted as directories, never with subPath: the kubelet swaps a ConfigMap's or Secret's
files in place, and the proxy re-reads the file it names. */}}
{{- define "otel-responses.volumeMounts" -}}
- name: otel-responses-data
  mountPath: {{ include "otel-responses.dataDir" . }}
{{- if include "otel-responses.pricesConfigMap" . }}
- name: otel-responses-prices
  mountPath: {{ include "otel-responses.pricesDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.guard.keysSecret.name }}
- name: otel-responses-keys
  mountPath: {{ include "otel-responses.keysDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "otel-responses.volumes" -}}
- name: otel-responses-data
{{- if .Values.store.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.store.persistence.existingClaim | default (printf "%s-data" (include "otel-responses.fullname" .)) }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- with include "otel-responses.pricesConfigMap" . }}
- name: otel-responses-prices
  configMap:
    name: {{ . }}
{{- end }}
{{- with .Values.guard.keysSecret.name }}
- name: otel-responses-keys
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{/* Values the schema cannot judge alone. */}}
{{- define "otel-responses.checks" -}}
{{- if not (lt (float64 .Values.shutdownGrace) (float64 .Values.terminationGracePeriodSeconds)) }}
{{- fail "terminationGracePeriodSeconds must be above shutdownGrace, or SIGKILL cuts the drain short" }}
{{- end }}
{{- if and (eq .Values.store.type "redis") (not .Values.store.redis.urlSecret.name) }}
{{- fail "store.type redis needs store.redis.urlSecret.name (a Secret holding the redis:// URL)" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") .Values.store.persistence.enabled }}
{{- fail "store.persistence is for gateway mode: a sidecar's data directory is an emptyDir in your app's pod" }}
{{- end }}
{{- if and (eq .Values.mode "gateway") (eq .Values.store.type "sqlite") }}
{{- if or .Values.autoscaling.enabled (ne (int .Values.replicaCount) 1) }}
{{- fail "store.type sqlite is one file for one process: set replicaCount: 1 and autoscaling.enabled: false, or use store.type redis to share the store between replicas" }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- fail "store.type sqlite runs one replica, which a PodDisruptionBudget would keep from ever being evicted (node drains hang): set podDisruptionBudget.enabled: false" }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Egress ports as a JSON list: networkPolicy.egressPorts, plus the explicit port of the
upstream and OTLP URLs (a chat server on :8000) and Redis's 6379 when a Redis URL is in use
(the URL is in a Secret: a Redis on another port goes into egressPorts). */}}
{{- define "otel-responses.egressPorts" -}}
{{- $ports := list }}
{{- range .Values.networkPolicy.egressPorts }}{{ $ports = append $ports (int .) }}{{ end }}
{{- range list .Values.upstream.url .Values.otlp.endpoint }}
{{- with regexFind ":[0-9]+$" (get (urlParse .) "host") }}
{{- $ports = append $ports (trimPrefix ":" . | int) }}
{{- end }}
{{- end }}
{{- if or (eq .Values.store.type "redis") .Values.guard.rateLimit.storeSecret.name }}
{{- $ports = append $ports 6379 }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end -}}
