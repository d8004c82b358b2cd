{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "graven-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, prefixed with the chart name unless it has it. */}}
{{- define "graven-operator.fullname" -}}
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

{{- define "graven-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "graven-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "graven-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "graven-operator.labels" -}}
helm.sh/chart: {{ include "graven-operator.chart" . }}
{{ include "graven-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: graven
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "graven-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "graven-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "graven-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the namespaced objects the operator reads and writes. Used by the ClusterRole
(all namespaces) or by one Role per watched namespace, so both modes grant the same verbs.
*/}}
{{- define "graven-operator.namespacedRules" -}}
# Exactly the verbs the operator uses (tests/operator/test_docs.py records them and compares).
# ConsensusClusters: watched; status, finalizers and kopf annotations written.
- apiGroups: ["graven.dev"]
  resources: ["consensusclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["graven.dev"]
  resources: ["consensusclusters/status"]
  verbs: ["patch"]
# ownerReferences with blockOwnerDeletion need update on the owner's finalizers subresource
# where the OwnerReferencesPermissionEnforcement admission plugin is enabled.
- apiGroups: ["graven.dev"]
  resources: ["consensusclusters/finalizers"]
  verbs: ["update"]
# Objects rendered for each ConsensusCluster: read, create, repair drift, delete.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
# ServiceMonitor / PrometheusRule, created only where those CRDs exist.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "prometheusrules"]
  verbs: ["get", "create", "patch", "delete"]
# The cluster's CA and certificate Secrets (garbage collection deletes them with the cluster).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# cert-manager Certificates (spec.security.certManager), used only where that CRD exists.
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Member health (pods), volumes removed with retention.whenDeleted: Delete.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "patch", "delete"]
# Events for every action the operator takes (kopf posts core/v1 events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
