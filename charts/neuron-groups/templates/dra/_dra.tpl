{{/* The DRA driver's ServiceAccount name; the admission policy matches exactly this user. */}}
{{- define "neuron-groups.dra.serviceAccountName" -}}
{{- default (include "neuron-groups.componentName" (dict "root" . "component" "dra-driver")) .Values.dra.serviceAccount.name }}
{{- end }}

{{/* The user a driver pod acts as. */}}
{{- define "neuron-groups.dra.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "neuron-groups.dra.serviceAccountName" . }}
{{- end }}
