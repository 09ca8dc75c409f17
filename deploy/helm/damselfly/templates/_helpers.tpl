{{/* Names and labels shared by every object. */}}
{{- define "damselfly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "damselfly.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "damselfly.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "damselfly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: damselfly
{{- end -}}

{{/* selectorLabels takes (dict "ctx" $ "component" "manager"). */}}
{{- define "damselfly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "damselfly.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "damselfly.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "damselfly.managerAddr" -}}
{{- printf "%s-manager.%s.svc:%d" (include "damselfly.fullname" .) .Release.Namespace (int .Values.manager.grpcPort) -}}
{{- end -}}

{{/* The first scheduler, for installs without a manager. */}}
{{- define "damselfly.schedulerAddr" -}}
{{- printf "%s-scheduler-0.%s-scheduler-headless.%s.svc:%d" (include "damselfly.fullname" .) (include "damselfly.fullname" .) .Release.Namespace (int .Values.scheduler.port) -}}
{{- end -}}

{{/* How a component finds its schedulers: the manager's list, or the first scheduler. */}}
{{- define "damselfly.schedulerArgs" -}}
{{- if .Values.manager.enabled }}
- --manager={{ include "damselfly.managerAddr" . }}
- --scheduler=
{{- else }}
- --scheduler={{ include "damselfly.schedulerAddr" . }}
{{- end }}
{{- end -}}

{{/* mTLS and bootstrap-token flags (security settings shared by all components). */}}
{{- define "damselfly.securityArgs" -}}
{{- if .Values.tls.existingSecret }}
- --tls-cert=/etc/damselfly/tls/tls.crt
- --tls-key=/etc/damselfly/tls/tls.key
- --tls-ca=/etc/damselfly/tls/ca.crt
{{- end }}
{{- if .Values.bootstrapToken.existingSecret }}
- --bootstrap-token-file=/etc/damselfly/bootstrap/{{ .Values.bootstrapToken.key }}
{{- end }}
{{- end -}}

{{- define "damselfly.securityMounts" -}}
{{- if .Values.tls.existingSecret }}
- name: tls
  mountPath: /etc/damselfly/tls
  readOnly: true
{{- end }}
{{- if .Values.bootstrapToken.existingSecret }}
- name: bootstrap-token
  mountPath: /etc/damselfly/bootstrap
  readOnly: true
{{- end }}
{{- end -}}

{{- define "damselfly.securityVolumes" -}}
{{- if .Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0400
{{- end }}
{{- if .Values.bootstrapToken.existingSecret }}
- name: bootstrap-token
  secret:
    secretName: {{ .Values.bootstrapToken.existingSecret }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{/* Probes on /healthy of the named port. A degraded daemon answers 200: ready. */}}
{{- define "damselfly.probes" -}}
readinessProbe:
  httpGet:
    path: /healthy
    port: {{ .port }}
  periodSeconds: {{ .ctx.Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .ctx.Values.probes.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthy
    port: {{ .port }}
  initialDelaySeconds: {{ .ctx.Values.probes.liveness.initialDelaySeconds }}
  periodSeconds: {{ .ctx.Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .ctx.Values.probes.liveness.failureThreshold }}
{{- end -}}

{{/* Checks that reject combinations the components cannot run. */}}
{{- define "damselfly.validate" -}}
{{- if and (not .Values.manager.enabled) (gt (int .Values.scheduler.replicas) 1) -}}
{{- fail "scheduler.replicas > 1 needs the manager (manager.enabled): without it daemons know only the first scheduler" -}}
{{- end -}}
{{- if and .Values.manager.enabled (eq .Values.manager.database.type "sqlite") (gt (int .Values.manager.replicas) 1) -}}
{{- fail "manager.replicas > 1 needs manager.database.type=postgres (SQLite is one file on one volume)" -}}
{{- end -}}
{{- if not (has .Values.manager.database.type (list "sqlite" "postgres")) -}}
{{- fail "manager.database.type must be sqlite or postgres" -}}
{{- end -}}
{{- if and (eq .Values.manager.database.type "postgres") (not .Values.manager.database.postgres.existingSecret) -}}
{{- fail "manager.database.type=postgres needs manager.database.postgres.existingSecret (a Secret holding the DSN)" -}}
{{- end -}}
{{- end -}}
