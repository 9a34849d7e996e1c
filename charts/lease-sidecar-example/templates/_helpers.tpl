{{/*
Usage: {{ include "lease-sidecar-example.fullname" . }}
*/}}
{{- define "lease-sidecar-example.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar-example.selectorLabels" . | nindent 6 }}
*/}}
{{- define "lease-sidecar-example.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar-example.labels" . | nindent 4 }}
*/}}
{{- define "lease-sidecar-example.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "lease-sidecar-example.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
