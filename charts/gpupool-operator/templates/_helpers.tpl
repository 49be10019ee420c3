{{/* The chart name, or nameOverride. */}}
{{- define "gpupool-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: fullnameOverride, else release name (+ chart name). */}}
{{- define "gpupool-operator.fullname" -}}
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

{{- define "gpupool-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpupool-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpupool-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpupool-operator.labels" -}}
helm.sh/chart: {{ include "gpupool-operator.chart" . }}
{{ include "gpupool-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: gpupool
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gpupool-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpupool-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpupool-operator.leaseName" -}}
{{- default (include "gpupool-operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "gpupool-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
A list of strings as CEL string literals: 'a', 'b'.
*/}}
{{- define "gpupool-operator.quotedList" -}}
{{- $items := list -}}
{{- range . }}{{ $items = append $items (printf "'%s'" .) }}{{ end -}}
{{- join ", " $items -}}
{{- end -}}
