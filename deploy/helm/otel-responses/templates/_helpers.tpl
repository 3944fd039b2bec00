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
{{- with .Values.upstream.apiKeySecret }}
{{- if or .name $.Values.otlp.headersSecret.name $.Values.extraEnv }}
env:
{{- if .name }}
  - name: OTEL_RESPONSES_UPSTREAM_API_KEY
    valueFrom:
      secretKeyRef:
        name: {{ .name }}
        key: {{ .key }}
{{- end }}
{{- with $.Values.otlp.headersSecret }}
{{- if .name }}
  - name: OTEL_EXPORTER_OTLP_HEADERS
    valueFrom:
      secretKeyRef:
        name: {{ .name }}
        key: {{ .key }}
{{- end }}
{{- end }}
{{- with $.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
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
