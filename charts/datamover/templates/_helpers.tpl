{{/* Names, labels and the operator's RBAC rules, shared by the templates. */}}

{{/* Base name: the release name, or release-chart when the release name does not contain the chart name. */}}
{{- define "datamover.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The operator's name: ServiceAccount, Deployment, ClusterRole and bindings all share it. */}}
{{- define "datamover.operatorName" -}}
{{- printf "%s-operator" (include "datamover.fullname" .) -}}
{{- end -}}

{{- define "datamover.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "datamover.labels" -}}
{{ include "datamover.selectorLabels" . }}
app.kubernetes.io/part-of: datamover
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The REST facade's pods: the same name and instance, component api (so the operator's selector misses them). */}}
{{- define "datamover.apiSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: api
{{- end -}}

{{- define "datamover.apiLabels" -}}
{{ include "datamover.apiSelectorLabels" . }}
app.kubernetes.io/part-of: datamover
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "datamover.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Worker image: its own values if set, else the operator's image (both entrypoints live in one image). */}}
{{- define "datamover.workerImage" -}}
{{- $repo := .Values.worker.image.repository | default .Values.image.repository -}}
{{- $tag := .Values.worker.image.tag | default (.Values.image.tag | default .Chart.AppVersion) -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* kopf peering (only one active replica) is on exactly when more than one replica runs. */}}
{{- define "datamover.peering" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{/*
Rules on namespaced resources: a ClusterRole's first rules in cluster-wide mode, a Role per watched namespace in
namespaced mode. Keep them identical to manifests/rbac.yaml (tests/unit/test_manifests.py compares them).
*/}}
{{- define "datamover.namespacedRules" -}}
# Watch MigrationJobs; patch them only to add/remove the operator's finalizer (never spec).
- apiGroups: [datamover.io]
  resources: [migrationjobs]
  verbs: [get, list, watch, patch]
# Write phase, progress and conditions.
- apiGroups: [datamover.io]
  resources: [migrationjobs/status]
  verbs: [get, patch]
# MigrationPlans: follow them, write their status, and create (and prune) the MigrationJobs of their runs.
- apiGroups: [datamover.io]
  resources: [migrationplans]
  verbs: [get, list, watch]
- apiGroups: [datamover.io]
  resources: [migrationplans/status]
  verbs: [get, patch]
- apiGroups: [datamover.io]
  resources: [migrationjobs]
  verbs: [create, delete]
# The Indexed Job that runs the workers; patch = suspend it on abort; delete = remove it once a suspended job's
# workers have stopped (a resume creates a new one).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Follow the worker pods (an abort waits for them to end); delete them when the grace period is over.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, delete]
# The per-job identity of the workers.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
# Check that referenced credentials exist (and read the destination's for the janitor). Read-only.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# An Event on each phase transition.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Read-only rules on cluster-scoped resources, needed in both modes. */}}
{{- define "datamover.clusterRules" -}}
# kopf discovers the MigrationJob resource and the namespaces it serves.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}
