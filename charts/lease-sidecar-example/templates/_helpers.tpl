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

{{/* ------------------------------------------------------------------ the example beat */}}

{{/*
Usage: {{ include "lease-sidecar-example.beatName" (list . "postgres") }}
The name of one of the beat's objects: <fullname>-<part>.
*/}}
{{- define "lease-sidecar-example.beatName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "lease-sidecar-example.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar-example.serviceHostEnv" (list . "postgres") }}
`$(<SERVICE>_SERVICE_HOST)`: the Service's address as the kubelet puts it into every container
started after the Service exists (Helm creates Services before Deployments). It needs no cluster
DNS, which some clusters (and the local node) do not run.
*/}}
{{- define "lease-sidecar-example.serviceHostEnv" -}}
{{- printf "$(%s_SERVICE_HOST)" (include "lease-sidecar-example.beatName" . | upper | replace "-" "_" | replace "." "_") -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar-example.beatLabels" (list . "postgres") | nindent 4 }}
*/}}
{{- define "lease-sidecar-example.beatSelectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/part-of: {{ $root.Chart.Name }}
{{- end -}}

{{- define "lease-sidecar-example.beatLabels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{ include "lease-sidecar-example.beatSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end -}}

{{/*
Usage (list items of a container's `env:`): {{ include "lease-sidecar-example.beatEnv" . | nindent 12 }}
What the beat app and its Celery worker read: the jobs, PostgreSQL through libpq's variables,
the broker for Celery.
*/}}
{{- define "lease-sidecar-example.beatEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      apiVersion: v1
      fieldPath: metadata.name
- name: BEAT_MODE
  value: {{ .Values.beat.mode | quote }}
- name: BEAT_JOBS
  value: {{ .Values.beat.jobs | quote }}
- name: BEAT_INTERVAL_SECONDS
  value: {{ .Values.beat.intervalSeconds | quote }}
- name: BEAT_ANCHOR
  value: {{ .Values.beat.anchor | quote }}
- name: BEAT_WORK_SECONDS
  value: {{ .Values.beat.workSeconds | quote }}
- name: BEAT_MISFIRE_GRACE_SECONDS
  value: {{ .Values.beat.misfireGraceSeconds | quote }}
- name: PGHOST
  value: {{ include "lease-sidecar-example.serviceHostEnv" (list . "postgres") | quote }}
- name: PGPORT
  value: "5432"
- name: PGUSER
  value: postgres
- name: PGDATABASE
  value: postgres
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "lease-sidecar-example.beatName" (list . "beat") }}
      key: password
{{- if eq .Values.beat.scheduler "celery" }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "lease-sidecar-example.beatName" (list . "beat") }}
      key: password
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "lease-sidecar-example.serviceHostEnv" (list . "redis")) | quote }}
{{- end }}
{{- end -}}

{{/*
The app container's image, command, environment, mounts and resources when beat.enabled (its
name and securityContext stay the example's).
*/}}
{{- define "lease-sidecar-example.beatContainer" -}}
image: "{{ .Values.beat.image.repository }}:{{ .Values.beat.image.tag }}"
imagePullPolicy: {{ .Values.beat.image.pullPolicy }}
args: [{{ ternary "celery-beat" "apscheduler" (eq .Values.beat.scheduler "celery") | quote }}]
env:
  {{- include "lease-sidecar-example.beatEnv" . | nindent 2 }}
  {{- include "lease-sidecar.appEnv" . | nindent 2 }}
volumeMounts:
  {{- include "lease-sidecar.volumeMounts" . | nindent 2 }}
  - name: beat-tmp
    mountPath: /tmp
resources:
  {{- toYaml .Values.beat.resources | nindent 2 }}
{{- end -}}

{{/*
A restricted container security context for the beat's database, broker and worker.
Usage: {{ include "lease-sidecar-example.beatSecurityContext" 999 | nindent 10 }}
*/}}
{{- define "lease-sidecar-example.beatSecurityContext" -}}
runAsUser: {{ . }}
runAsGroup: {{ . }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- end -}}
