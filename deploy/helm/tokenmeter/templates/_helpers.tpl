{{/*
Names, labels and the shared pieces of the tokenmeter chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tokenmeter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it contains the
chart name, else "<release>-<chart>". Kept to 40 characters so that the longest derived names
(the StatefulSet's pods and their controller-revision-hash label) stay within Kubernetes' limits.
*/}}
{{- define "tokenmeter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "tokenmeter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The recommended labels (app.kubernetes.io/*) of every object. */}}
{{- define "tokenmeter.labels" -}}
helm.sh/chart: {{ include "tokenmeter.chart" . }}
{{ include "tokenmeter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenmeter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels that identify the release's pods; immutable once installed. */}}
{{- define "tokenmeter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenmeter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of the aggregators. */}}
{{- define "tokenmeter.aggregator.labels" -}}
{{ include "tokenmeter.labels" . }}
app.kubernetes.io/component: aggregator
{{- end }}
{{- define "tokenmeter.aggregator.selectorLabels" -}}
{{ include "tokenmeter.selectorLabels" . }}
app.kubernetes.io/component: aggregator
{{- end }}

{{/* Labels and selector labels of the DaemonSet sidecars. */}}
{{- define "tokenmeter.sidecar.labels" -}}
{{ include "tokenmeter.labels" . }}
app.kubernetes.io/component: sidecar
{{- end }}
{{- define "tokenmeter.sidecar.selectorLabels" -}}
{{ include "tokenmeter.selectorLabels" . }}
app.kubernetes.io/component: sidecar
{{- end }}

{{/* Object names. */}}
{{- define "tokenmeter.aggregator.fullname" -}}
{{- printf "%s-aggregator" (include "tokenmeter.fullname" .) }}
{{- end }}
{{- define "tokenmeter.aggregator.headless" -}}
{{- printf "%s-aggregator-headless" (include "tokenmeter.fullname" .) }}
{{- end }}
{{- define "tokenmeter.sidecar.fullname" -}}
{{- printf "%s-sidecar" (include "tokenmeter.fullname" .) }}
{{- end }}
{{- define "tokenmeter.policies.configMap" -}}
{{- .Values.policies.existingConfigMap | default (printf "%s-policies" (include "tokenmeter.fullname" .)) }}
{{- end }}
{{- define "tokenmeter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "tokenmeter.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* The image reference: repository:tag, or repository@digest. */}}
{{- define "tokenmeter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The directory of the programs in the image (deploy/image/build.sh). */}}
{{- define "tokenmeter.bindir" -}}
/usr/local/bin
{{- end }}

{{/*
The stable DNS name of shard i's pod (through the headless Service), with "{i}" for the index
when called with index "{i}": dict "ctx" $ "index" i.
*/}}
{{- define "tokenmeter.shardHost" -}}
{{- $ctx := .ctx -}}
{{- printf "%s-%v.%s.%s.svc.%s" (include "tokenmeter.aggregator.fullname" $ctx) .index (include "tokenmeter.aggregator.headless" $ctx) $ctx.Release.Namespace $ctx.Values.clusterDomain }}
{{- end }}

{{/* host:port of every shard, comma-separated, in shard order (tokenmeterctl --aggregators). */}}
{{- define "tokenmeter.shardAddresses" -}}
{{- $addresses := list }}
{{- range $i := until (int .Values.aggregator.shards) }}
{{- $addresses = append $addresses (printf "%s:%v" (include "tokenmeter.shardHost" (dict "ctx" $ "index" $i)) $.Values.aggregator.grpcPort) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}

{{/* "podIndexLabel" or "hostname": where an aggregator pod takes its shard index from. */}}
{{- define "tokenmeter.shardIndexFrom" -}}
{{- $from := .Values.aggregator.shardIndexFrom }}
{{- if eq $from "auto" }}
{{- if semverCompare ">=1.28.0-0" .Capabilities.KubeVersion.Version }}podIndexLabel{{ else }}hostname{{ end }}
{{- else }}
{{- $from }}
{{- end }}
{{- end }}

{{/* The pod and container security contexts. */}}
{{- define "tokenmeter.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}
{{- define "tokenmeter.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
The sidecar container, shared by the DaemonSet and the pod snippet: dict "ctx" $ "mode"
("pod" | "daemonset"). In a pod it serves the AI service on the pod's loopback; as a DaemonSet
on every address of its pod (the node-local Service and the optional hostPort reach it).
*/}}
{{- define "tokenmeter.sidecar.container" -}}
{{- $ := .ctx -}}
{{- $v := $.Values.sidecar -}}
{{- $daemonset := eq .mode "daemonset" -}}
name: tokenmeter-sidecar
image: {{ include "tokenmeter.image" $ }}
imagePullPolicy: {{ $.Values.image.pullPolicy }}
command:
  - {{ include "tokenmeter.bindir" $ }}/tokenmeter-sidecar
args:
  - --listen={{ ternary "0.0.0.0" "127.0.0.1" $daemonset }}:{{ $v.grpcPort }}
  {{- if and (not $daemonset) $v.pod.unixSocketDir }}
  - --unix-socket={{ $v.pod.unixSocketDir }}/sidecar.sock
  {{- end }}
  - --metrics-listen=0.0.0.0:{{ $v.metricsPort }}
  - --data-dir=/var/lib/tokenmeter-sidecar/queue
  - --aggregator-template={{ include "tokenmeter.shardHost" (dict "ctx" $ "index" "{i}") }}:{{ $.Values.aggregator.grpcPort }}
  - --shard-count={{ $.Values.aggregator.shards }}
  - --failure-mode={{ $v.failureMode }}
  - --max-queue-bytes={{ int64 $v.maxQueueBytes }}
  - --quota-deadline-ms={{ $v.quotaDeadlineMs }}
  - --drain-seconds={{ $v.drainSeconds }}
  {{- range $v.extraArgs }}
  - {{ . | quote }}
  {{- end }}
ports:
  - name: tm-grpc
    containerPort: {{ $v.grpcPort }}
    protocol: TCP
    {{- if and $daemonset $v.daemonset.hostPort }}
    hostPort: {{ $v.grpcPort }}
    {{- end }}
  - name: tm-metrics
    containerPort: {{ $v.metricsPort }}
    protocol: TCP
{{- if and (not $daemonset) $v.pod.nativeSidecar }}
restartPolicy: Always
{{- end }}
startupProbe:
  httpGet:
    path: /readyz
    port: tm-metrics
  periodSeconds: 1
  failureThreshold: 60
readinessProbe:
  httpGet:
    path: /readyz
    port: tm-metrics
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: tm-metrics
  periodSeconds: 10
  failureThreshold: 6
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- /* Self-contained: the AI service's pod may set no pod security context. */}}
  {{- $ids := pick $.Values.podSecurityContext "runAsUser" "runAsGroup" "seccompProfile" }}
  {{- toYaml (merge (deepCopy $.Values.containerSecurityContext) $ids) | nindent 2 }}
volumeMounts:
  - name: tokenmeter-queue
    mountPath: /var/lib/tokenmeter-sidecar
  {{- if and (not $daemonset) $v.pod.unixSocketDir }}
  - name: tokenmeter-socket
    mountPath: {{ $v.pod.unixSocketDir }}
  {{- end }}
{{- end }}

{{/* The sidecar's volumes: dict "ctx" $ "mode" ("pod" | "daemonset"). */}}
{{- define "tokenmeter.sidecar.volumes" -}}
{{- $ := .ctx -}}
- name: tokenmeter-queue
  {{- toYaml $.Values.sidecar.queueVolume | nindent 2 }}
{{- if and (eq .mode "pod") $.Values.sidecar.pod.unixSocketDir }}
- name: tokenmeter-socket
  emptyDir: {}
{{- end }}
{{- end }}
