{{/*
Named templates of lease-sidecar. Every public template takes the root context of the chart that
depends on lease-sidecar (`.` or `$` at the top of its templates) and reads this chart's values
(`.Values.lease-sidecar` of the parent), files and metadata through `.Subcharts.lease-sidecar`.
With an alias (`alias: worker-lease` in Chart.yaml), pass that subchart's scope instead:
  {{ include "lease-sidecar.containers" (index .Subcharts "worker-lease") }}
Templates whose name contains ".internal." or ".impl." are private and may change.
*/}}

{{/*
Usage (private): {{ include "lease-sidecar.internal.call" (list "lease-sidecar.impl.NAME" $) }}
Finds lease-sidecar's scope from the caller's context and renders the implementation with it.
*/}}
{{- define "lease-sidecar.internal.call" -}}
{{- $impl := index . 0 -}}
{{- $ctx := index . 1 -}}
{{- $scope := $ctx -}}
{{- $viaParent := false -}}
{{- with $ctx.Subcharts -}}
{{- with index . "lease-sidecar" -}}
{{- $scope = . -}}
{{- $viaParent = true -}}
{{- end -}}
{{- end -}}
{{- if not (and (kindIs "map" $scope.Values) (hasKey $scope.Values "leaseName") (hasKey $scope.Values "election")) -}}
{{- fail (printf "%s: pass the root context of a chart that depends on lease-sidecar (`.` or `$`), or with an alias `(index .Subcharts \"<alias>\")`" $impl) -}}
{{- end -}}
{{- if and $viaParent $scope.Values.standalone (eq $impl "lease-sidecar.impl.objects") -}}
{{- fail "lease-sidecar.objects: lease-sidecar.standalone is true, so the subchart already renders these objects; include one or the other" -}}
{{- end -}}
{{- include $impl $scope -}}
{{- end -}}

{{/* ------------------------------------------------------------------ names and labels */}}

{{/*
Usage: {{ include "lease-sidecar.fullname" $ }}
Base name of the ServiceAccount, Role, RoleBinding and monitoring objects (at most 63 characters).
*/}}
{{- define "lease-sidecar.fullname" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.fullname" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride | lower | replace "_" "-" -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.leaseName" $ }}
Name of the Lease: .Values.leaseName, else "<release>-leader" ("<release>-<alias>-leader" with an alias).
*/}}
{{- define "lease-sidecar.leaseName" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.leaseName" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.leaseName" -}}
{{- if .Values.leaseName -}}
{{- .Values.leaseName -}}
{{- else if eq .Chart.Name "lease-sidecar" -}}
{{- printf "%s-leader" .Release.Name -}}
{{- else -}}
{{- printf "%s-%s-leader" .Release.Name (.Chart.Name | lower | replace "_" "-") -}}
{{- end -}}
{{- end -}}

{{/*
Usage: serviceAccountName: {{ include "lease-sidecar.serviceAccountName" $ }}
*/}}
{{- define "lease-sidecar.serviceAccountName" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.serviceAccountName" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.serviceAccountName" -}}
{{- default (include "lease-sidecar.impl.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/*
Usage:
  metadata:
    labels:
      {{- include "lease-sidecar.labels" $ | nindent 4 }}
Labels of the objects this chart renders.
*/}}
{{- define "lease-sidecar.labels" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.labels" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: lease-sidecar
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: leader-election
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Usage (in the pod template; never in a Deployment's selector):
  template:
    metadata:
      labels:
        app.kubernetes.io/name: my-app
        {{- include "lease-sidecar.podLabels" $ | nindent 8 }}
The label the PodMonitor selects the pods of this lease by.
*/}}
{{- define "lease-sidecar.podLabels" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.podLabels" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.podLabels" -}}
lease-sidecar/lease: {{ include "lease-sidecar.impl.leaseName" . | trunc 63 | trimSuffix "-" | trimSuffix "." | quote }}
{{- end -}}

{{/*
Usage (renders nothing unless monitoring.podAnnotations is true):
  template:
    metadata:
      annotations:
        {{- include "lease-sidecar.podAnnotations" $ | nindent 8 }}
*/}}
{{- define "lease-sidecar.podAnnotations" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.podAnnotations" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.podAnnotations" -}}
{{- if .Values.monitoring.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------ pod spec */}}

{{/*
Usage (at the level of `containers:` in the pod spec):
  spec:
    {{- include "lease-sidecar.podServiceAccount" $ | nindent 6 }}
serviceAccountName plus automountServiceAccountToken: false: no container gets the token
automatically; only the sidecar mounts one (see "lease-sidecar.volumes").
*/}}
{{- define "lease-sidecar.podServiceAccount" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.podServiceAccount" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.podServiceAccount" -}}
serviceAccountName: {{ include "lease-sidecar.impl.serviceAccountName" . }}
automountServiceAccountToken: false
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.mode" $ }}  ->  native or classic
"auto" is native on Kubernetes >= 1.29 (as reported by .Capabilities.KubeVersion), else classic.
*/}}
{{- define "lease-sidecar.mode" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.mode" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.mode" -}}
{{- if eq .Values.mode "auto" -}}
{{- if semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version -}}native{{- else -}}classic{{- end -}}
{{- else -}}
{{- .Values.mode -}}
{{- end -}}
{{- end -}}

{{/*
Usage (renders the sidecar in native mode only, so both calls can always be present):
  spec:
    {{- with include "lease-sidecar.initContainers" $ }}
    initContainers:
      {{- . | nindent 6 }}
    {{- end }}
A list item: the native sidecar (restartPolicy: Always). Put it before init containers that need
the leader's role; the main containers start once its startupProbe passes.
*/}}
{{- define "lease-sidecar.initContainers" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.initContainers" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.initContainers" -}}
{{- if eq (include "lease-sidecar.impl.mode" .) "native" -}}
{{- include "lease-sidecar.impl.container" (dict "scope" . "native" true) -}}
{{- end -}}
{{- end -}}

{{/*
Usage (renders the sidecar in classic mode only, nothing otherwise):
  containers:
    - name: app
      ...
    {{- with include "lease-sidecar.containers" $ }}
    {{- . | nindent 4 }}
    {{- end }}
A list item: the classic sidecar container.
*/}}
{{- define "lease-sidecar.containers" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.containers" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.containers" -}}
{{- if eq (include "lease-sidecar.impl.mode" .) "classic" -}}
{{- include "lease-sidecar.impl.container" (dict "scope" . "native" false) -}}
{{- end -}}
{{- end -}}

{{/*
Usage (whatever the mode, e.g. for a Job or a hand-built pod):
  {{- include "lease-sidecar.container" $ | nindent 4 }}
A list item: the sidecar container, with restartPolicy: Always when the mode is native.
*/}}
{{- define "lease-sidecar.container" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.anyContainer" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.anyContainer" -}}
{{- include "lease-sidecar.impl.container" (dict "scope" . "native" (eq (include "lease-sidecar.impl.mode" .) "native")) -}}
{{- end -}}

{{- define "lease-sidecar.impl.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "lease-sidecar.impl.container" -}}
{{- $s := .scope -}}
{{- $v := $s.Values -}}
{{- $durations := dict "leaderLeaseTTL" "LEADER_LEASE_TTL" "leaderRenewalInterval" "LEADER_RENEWAL_INTERVAL" "leaderRenewDeadline" "LEADER_RENEW_DEADLINE" "heartbeatInterval" "HEARTBEAT_INTERVAL" "heartbeatTTL" "HEARTBEAT_TTL" "failoverTimeout" "FAILOVER_TIMEOUT" "apiTimeout" "API_TIMEOUT" -}}
- name: {{ $v.containerName }}
  image: {{ include "lease-sidecar.impl.image" $s | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  args: ["run"]
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: metadata.namespace
    - name: LEASE_SIDECAR_LEASE_NAME
      value: {{ include "lease-sidecar.impl.leaseName" $s | quote }}
    - name: LEASE_SIDECAR_HTTP_ADDRESS
      value: {{ printf "127.0.0.1:%v" $v.ports.http | quote }}
    - name: LEASE_SIDECAR_METRICS_ADDRESS
      value: {{ printf "0.0.0.0:%v" $v.ports.metrics | quote }}
    - name: LEASE_SIDECAR_ROLE_DIR
      value: {{ $v.roleDir.path | quote }}
    - name: LEASE_SIDECAR_LOG_LEVEL
      value: {{ $v.logLevel | quote }}
    {{- if not (eq (toString $v.cpuSlice) "" "<nil>") }}
    - name: LEASE_SIDECAR_CPU_SLICE
      value: {{ toString $v.cpuSlice | quote }}
    {{- end }}
    {{- if not (eq (toString $v.handoverDrainTimeout) "" "<nil>") }}
    - name: LEASE_SIDECAR_HANDOVER_DRAIN_TIMEOUT
      value: {{ toString $v.handoverDrainTimeout | quote }}
    {{- end }}
    # The pod's revision: a leader that shuts down hands over to a pod of another revision (a
    # rollout's new ReplicaSet) when it can. Empty outside Deployments.
    - name: POD_REVISION
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: metadata.labels['pod-template-hash']
    {{- if $v.leaderService.enabled }}
    - name: POD_IP
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: status.podIP
    - name: LEASE_SIDECAR_LEADER_SERVICE
      value: {{ include "lease-sidecar.impl.leaderServiceName" $s | quote }}
    {{- end }}
    {{- if $v.events.enabled }}
    - name: LEASE_SIDECAR_EVENTS
      value: "true"
    {{- end }}
    {{- if $v.labelPod }}
    - name: LEASE_SIDECAR_LABEL_POD
      value: "true"
    {{- end }}
    {{- if not (eq (toString $v.app.heartbeatTTL) "" "<nil>") }}
    - name: LEASE_SIDECAR_APP_HEARTBEAT_TTL
      value: {{ toString $v.app.heartbeatTTL | quote }}
    {{- end }}
    {{- with $v.app.healthURL }}
    - name: LEASE_SIDECAR_APP_HEALTH_URL
      value: {{ . | quote }}
    {{- end }}
    {{- if $v.members }}
    - name: LEASE_SIDECAR_MEMBERS
      value: "true"
    {{- end }}
    {{- if ($v.locks).enabled }}
    - name: LEASE_SIDECAR_LOCKS
      value: "true"
    {{- with $v.locks.prefix }}
    - name: LEASE_SIDECAR_LOCK_PREFIX
      value: {{ . | quote }}
    {{- end }}
    {{- if not (eq (toString $v.locks.maxTTL) "" "<nil>") }}
    - name: LEASE_SIDECAR_LOCK_MAX_TTL
      value: {{ toString $v.locks.maxTTL | quote }}
    {{- end }}
    {{- end }}
    {{- range $key := keys $durations | sortAlpha }}
    {{- $value := index $v.election $key }}
    {{- if not (eq (toString $value) "" "<nil>") }}
    - name: LEASE_SIDECAR_{{ index $durations $key }}
      value: {{ toString $value | quote }}
    {{- end }}
    {{- end }}
  ports:
    - name: lease-metrics
      containerPort: {{ $v.ports.metrics }}
      protocol: TCP
  # Asked every second, so a quick start is seen at once (the app waits for it in native mode);
  # 120 failures let a loaded node take two minutes or more (a timed-out try lasts 2 s) to start
  # it before the kubelet restarts it, which would only start it again on the same busy node.
  startupProbe:
    httpGet:
      path: /healthz
      port: lease-metrics
    periodSeconds: 1
    failureThreshold: 120
    timeoutSeconds: 2
  livenessProbe:
    httpGet:
      path: /healthz
      port: lease-metrics
    periodSeconds: 10
    failureThreshold: 3
    timeoutSeconds: 2
  readinessProbe:
    httpGet:
      path: /readyz
      port: lease-metrics
    periodSeconds: 5
    failureThreshold: 2
    timeoutSeconds: 2
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    {{- with $v.securityContext.runAsUser }}
    runAsUser: {{ . }}
    {{- end }}
    {{- with $v.securityContext.runAsGroup }}
    runAsGroup: {{ . }}
    {{- end }}
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: lease-sidecar-role
      mountPath: {{ $v.roleDir.path | quote }}
    - name: lease-sidecar-token
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
{{- end -}}

{{/*
Usage (list items for the pod's `volumes:`):
  volumes:
    {{- include "lease-sidecar.volumes" $ | nindent 4 }}
The shared role directory (emptyDir) and the sidecar's projected ServiceAccount token (token,
the cluster CA from the kube-root-ca.crt ConfigMap, and the namespace).
*/}}
{{- define "lease-sidecar.volumes" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.volumes" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.volumes" -}}
- name: lease-sidecar-role
  emptyDir:
    {{- with .Values.roleDir.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.roleDir.sizeLimit | quote }}
- name: lease-sidecar-token
  projected:
    defaultMode: 292 # 0444: the token is mounted in the sidecar only
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ .Values.serviceAccount.tokenExpirationSeconds }}
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end -}}

{{/*
Usage (list items for the main container's `volumeMounts:`):
  volumeMounts:
    {{- include "lease-sidecar.volumeMounts" $ | nindent 8 }}
The role directory, read-only, at roleDir.path: files `role` (leader|standby) and `status.json`.
*/}}
{{- define "lease-sidecar.volumeMounts" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.volumeMounts" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.volumeMounts" -}}
- name: lease-sidecar-role
  mountPath: {{ .Values.roleDir.path | quote }}
  readOnly: true
{{- end -}}

{{/*
Usage (list items for the main container's `env:`):
  env:
    {{- include "lease-sidecar.appEnv" $ | nindent 8 }}
LEASE_SIDECAR_URL (the local API) and LEASE_SIDECAR_ROLE_DIR, for the main container.
*/}}
{{- define "lease-sidecar.appEnv" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.appEnv" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.appEnv" -}}
- name: LEASE_SIDECAR_URL
  value: {{ printf "http://127.0.0.1:%v" .Values.ports.http | quote }}
- name: LEASE_SIDECAR_ROLE_DIR
  value: {{ .Values.roleDir.path | quote }}
{{- end -}}

{{/* ------------------------------------------------------------------ objects */}}

{{/*
Usage (in a template file of its own, e.g. templates/lease-sidecar.yaml):
  {{ include "lease-sidecar.objects" $ }}
Every namespace-level object: "lease-sidecar.rbac", "lease-sidecar.leaderService" (if enabled), then "lease-sidecar.monitoring".
*/}}
{{- define "lease-sidecar.objects" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.objects" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.objects" -}}
{{- $docs := list -}}
{{- range $part := list "rbac" "leaderService" "monitoring" -}}
{{- with include (printf "lease-sidecar.impl.%s" $part) $ -}}
{{- $docs = append $docs . -}}
{{- end -}}
{{- end -}}
{{- join "\n---\n" $docs -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.leaderServiceName" $ }}
Name of the leader Service: leaderService.name, else "<release>-leader".
*/}}
{{- define "lease-sidecar.leaderServiceName" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.leaderServiceName" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.leaderServiceName" -}}
{{- default (printf "%s-leader" .Release.Name | trunc 63 | trimSuffix "-") .Values.leaderService.name -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.leaderService" $ }}
With leaderService.enabled: a Service without a selector. The leader's sidecar writes its
EndpointSlice (same name, label kubernetes.io/service-name), holding only the leader's pod IP.
*/}}
{{- define "lease-sidecar.leaderService" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.leaderService" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.leaderService" -}}
{{- if .Values.leaderService.enabled -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "lease-sidecar.impl.leaderServiceName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "lease-sidecar.impl.labels" . | nindent 4 }}
spec:
  # No selector: the EndpointSlice controller leaves this Service alone; the leader writes it.
  ports:
    {{- toYaml .Values.leaderService.ports | nindent 4 }}
{{- end -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.rbac" $ }}
The ServiceAccount (if serviceAccount.create), Role and RoleBinding (if rbac.create).
*/}}
{{- define "lease-sidecar.rbac" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.rbac" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.rbac" -}}
{{- $docs := list -}}
{{- if .Values.serviceAccount.create -}}
{{- $docs = append $docs (include "lease-sidecar.impl.serviceAccount" .) -}}
{{- end -}}
{{- if .Values.rbac.create -}}
{{- $docs = append $docs (include "lease-sidecar.impl.role" .) -}}
{{- $docs = append $docs (include "lease-sidecar.impl.roleBinding" .) -}}
{{- end -}}
{{- join "\n---\n" $docs -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.serviceAccount" $ }}
The ServiceAccount, with automountServiceAccountToken: false.
*/}}
{{- define "lease-sidecar.serviceAccount" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.serviceAccount" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "lease-sidecar.impl.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "lease-sidecar.impl.labels" . | nindent 4 }}
  {{- with .Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.role" $ }}
The Role: exactly what the sidecar calls, on its own Lease only, except `create`.
*/}}
{{- define "lease-sidecar.role" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.role" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.role" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ include "lease-sidecar.impl.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "lease-sidecar.impl.labels" . | nindent 4 }}
rules:
  # get, update: read and renew the Lease. list, watch: the sidecar lists and watches with
  # fieldSelector=metadata.name=<lease>; the API server takes the name from that selector, so
  # resourceNames covers list and watch too (checked against a real v1.37 API server by
  # tests/cluster/test_chart.py). A list without that selector is denied. No patch, no delete.
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    resourceNames: [{{ include "lease-sidecar.impl.leaseName" . | quote }}]
    verbs: ["get", "list", "watch", "update"]
  # create: the first candidate creates the Lease. RBAC cannot limit create by name (the name is
  # in the body, not the URL), so this allows creating other leases in this namespace, but not
  # reading, changing or deleting them.
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["create"]
  {{- if .Values.events.enabled }}
  # Events on the Lease. Their names are generated, so this cannot be limited by name; no get,
  # list, watch, update or delete.
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  {{- end }}
  {{- if .Values.leaderService.enabled }}
  {{- $service := include "lease-sidecar.impl.leaderServiceName" . }}
  # The leader Service: read its ports; read and compare-and-swap its one EndpointSlice. create
  # cannot be limited by name (the first leader creates the slice); no delete.
  - apiGroups: [""]
    resources: ["services"]
    resourceNames: [{{ $service | quote }}]
    verbs: ["get"]
  - apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices"]
    resourceNames: [{{ $service | quote }}]
    verbs: ["get", "update"]
  - apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices"]
    verbs: ["create"]
  {{- end }}
  {{- if .Values.members }}
  # --members: renew and, on shutdown, delete its own member Lease ("<lease>-member-<pod>"); list
  # and watch the members by label; delete records stale for ten TTLs (with a resourceVersion
  # precondition). Pod names are generated and RBAC matches neither labels nor name prefixes, so
  # this covers every Lease of the namespace (no get, patch or deletecollection).
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["list", "watch", "update", "delete"]
  {{- end }}
  {{- if (.Values.locks).enabled }}
  # --locks: one Lease per key, named from the key (RBAC matches no name prefix, so this is every
  # Lease of the namespace): list and watch them by label, update to renew and release, delete a
  # released key's Lease (with a resourceVersion precondition). Reads are lists by name; no get,
  # patch or deletecollection.
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["list", "watch", "update", "delete"]
  {{- end }}
  {{- if .Values.labelPod }}
  # --label-pod: its own pod's role label. Pod names are generated, so this is every pod of the
  # namespace (see labelPod in values.yaml).
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["patch"]
  {{- end }}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.roleBinding" $ }}
Binds the Role to the ServiceAccount.
*/}}
{{- define "lease-sidecar.roleBinding" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.roleBinding" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.roleBinding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ include "lease-sidecar.impl.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "lease-sidecar.impl.labels" . | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ include "lease-sidecar.impl.fullname" . }}
subjects:
  - kind: ServiceAccount
    name: {{ include "lease-sidecar.impl.serviceAccountName" . }}
    namespace: {{ .Release.Namespace }}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.monitoring" $ }}
The enabled monitoring objects: PodMonitor, PrometheusRule, Grafana dashboard ConfigMap.
*/}}
{{- define "lease-sidecar.monitoring" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.monitoring" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.monitoring" -}}
{{- $docs := list -}}
{{- if .Values.monitoring.podMonitor.enabled -}}
{{- $docs = append $docs (include "lease-sidecar.impl.podMonitor" .) -}}
{{- end -}}
{{- if .Values.monitoring.prometheusRule.enabled -}}
{{- $docs = append $docs (include "lease-sidecar.impl.prometheusRule" .) -}}
{{- end -}}
{{- if .Values.monitoring.dashboard.enabled -}}
{{- $docs = append $docs (include "lease-sidecar.impl.dashboard" .) -}}
{{- end -}}
{{- join "\n---\n" $docs -}}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.podMonitor" $ }}
A PodMonitor scraping port lease-metrics of the pods labelled by "lease-sidecar.podLabels".
*/}}
{{- define "lease-sidecar.podMonitor" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.podMonitor" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.podMonitor" -}}
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ include "lease-sidecar.impl.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "lease-sidecar.impl.labels" . | nindent 4 }}
    {{- with .Values.monitoring.podMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "lease-sidecar.impl.podLabels" . | nindent 6 }}
  podMetricsEndpoints:
    - port: lease-metrics
      path: /metrics
      # The sidecar's `namespace` label names the Lease's namespace; keep it rather than letting
      # the target's namespace overwrite it (which would rename ours to exported_namespace).
      honorLabels: true
      interval: {{ .Values.monitoring.podMonitor.interval }}
      {{- with .Values.monitoring.podMonitor.scrapeTimeout }}
      scrapeTimeout: {{ . }}
      {{- end }}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.prometheusRule" $ }}
A PrometheusRule whose spec is this chart's files/alerts.yaml (a Prometheus rule groups file),
rendered with monitoring.prometheusRule.alerts (each alert's for:, windows and thresholds).
*/}}
{{- define "lease-sidecar.prometheusRule" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.prometheusRule" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.prometheusRule" -}}
{{- $raw := .Files.Get "files/alerts.yaml" -}}
{{- if not $raw -}}
{{- fail "lease-sidecar: files/alerts.yaml is missing from the chart" -}}
{{- end -}}
{{- /* The file is a Helm template whose annotations also hold Prometheus templates
({{ $labels.x }}, {{ $value }}): those are set aside before `tpl` and put back after it. */ -}}
{{- $prometheusAction := "{{ $" -}}
{{- $setAside := "<<prometheus-template>> $" -}}
{{- $rendered := tpl (replace $prometheusAction $setAside $raw) . | replace $setAside $prometheusAction -}}
{{- $rules := fromYaml $rendered -}}
{{- if hasKey $rules "Error" -}}
{{- fail (printf "lease-sidecar: files/alerts.yaml is not valid YAML: %s" $rules.Error) -}}
{{- end -}}
{{- if not $rules.groups -}}
{{- fail "lease-sidecar: files/alerts.yaml has no rule groups" -}}
{{- end -}}
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {{ include "lease-sidecar.impl.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "lease-sidecar.impl.labels" . | nindent 4 }}
    {{- with .Values.monitoring.prometheusRule.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  groups:
    {{- toYaml $rules.groups | nindent 4 }}
{{- end -}}

{{/*
Usage: {{ include "lease-sidecar.dashboard" $ }}
A ConfigMap with this chart's files/dashboard.json, labelled grafana_dashboard: "1".
*/}}
{{- define "lease-sidecar.dashboard" -}}
{{- include "lease-sidecar.internal.call" (list "lease-sidecar.impl.dashboard" .) -}}
{{- end -}}

{{- define "lease-sidecar.impl.dashboard" -}}
{{- $json := .Files.Get "files/dashboard.json" -}}
{{- if not $json -}}
{{- fail "lease-sidecar: files/dashboard.json is missing from the chart" -}}
{{- end -}}
{{- if hasKey (fromJson $json) "Error" -}}
{{- fail (printf "lease-sidecar: files/dashboard.json is not valid JSON: %s" (fromJson $json).Error) -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ printf "%s-dashboard" (include "lease-sidecar.impl.fullname" . | trunc 53 | trimSuffix "-") }}
  namespace: {{ default .Release.Namespace .Values.monitoring.dashboard.namespace }}
  labels:
    {{- include "lease-sidecar.impl.labels" . | nindent 4 }}
    grafana_dashboard: "1"
    {{- with .Values.monitoring.dashboard.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.monitoring.dashboard.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
data:
  lease-sidecar.json: |-
    {{- $json | trim | nindent 4 }}
{{- end -}}
