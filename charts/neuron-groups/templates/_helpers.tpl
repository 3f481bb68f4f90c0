{{/*
Names.  Kubernetes object names and label values stop at 63 characters, so every name is
truncated there, and a trailing "-" left by the cut is trimmed.
*/}}
{{- define "neuron-groups.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "neuron-groups.fullname" -}}
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

{{/* "<fullname>-<component>", kept within 63 characters. */}}
{{- define "neuron-groups.componentName" -}}
{{- $full := include "neuron-groups.fullname" .root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" }}
{{- end }}

{{- define "neuron-groups.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels.  selectorLabels never change between releases (a Deployment's selector is immutable), so
they hold only name, instance and component; the full label set adds version and chart.
Call with (dict "root" $ "component" "operator").
*/}}
{{- define "neuron-groups.selectorLabels" -}}
app.kubernetes.io/name: {{ include "neuron-groups.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "neuron-groups.labels" -}}
{{ include "neuron-groups.selectorLabels" . }}
helm.sh/chart: {{ include "neuron-groups.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: neuron-groups
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The image reference: the digest when given (immutable), else the tag, else appVersion. */}}
{{- define "neuron-groups.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "neuron-groups.operator.serviceAccountName" -}}
{{- default (include "neuron-groups.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "neuron-groups.devicePlugin.serviceAccountName" -}}
{{- default (include "neuron-groups.componentName" (dict "root" . "component" "device-plugin")) .Values.devicePlugin.serviceAccount.name }}
{{- end }}

{{/*
The restricted container security context every long-running container here starts from: no
privilege escalation, no capabilities, read-only root filesystem.
*/}}
{{- define "neuron-groups.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Neuron devices and NeuronCores per instance type, for the Cluster Autoscaler node-template tags.
This mirrors neuron_cores.INSTANCE_TYPES; tests/charts asserts the two agree, so they cannot drift.
*/}}
{{- define "neuron-groups.instanceTypes" -}}
inf1.xlarge: {devices: 1, cores: 4}
inf1.2xlarge: {devices: 1, cores: 4}
inf1.6xlarge: {devices: 4, cores: 16}
inf1.24xlarge: {devices: 16, cores: 64}
inf2.xlarge: {devices: 1, cores: 2}
inf2.8xlarge: {devices: 1, cores: 2}
inf2.24xlarge: {devices: 6, cores: 12}
inf2.48xlarge: {devices: 12, cores: 24}
trn1.2xlarge: {devices: 1, cores: 2}
trn1.32xlarge: {devices: 16, cores: 32}
trn1n.32xlarge: {devices: 16, cores: 32}
trn2.48xlarge: {devices: 16, cores: 64}
{{- end }}
