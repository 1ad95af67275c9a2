{{/*
The pod template both workloads run (workload.kind: StatefulSet or Deployment), at the
indentation of spec.template; the output starts with a newline.
*/}}
{{- define "wharf.podTemplate" -}}
{{- $root := include "wharf.storageRoot" . }}
{{- $port := include "wharf.port" . | int }}
    metadata:
      labels:
        {{- include "wharf.labels" . | nindent 8 }}
        app.kubernetes.io/component: server
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # a changed wharf.yaml rolls the pods
        checksum/config: {{ include "wharf.config" . | sha256sum }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      serviceAccountName: {{ include "wharf.serviceAccountName" . }}
      automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
      # no <SERVICE>_SERVICE_HOST / _PORT variables: Wharf does not use them, and a Service named
      # wharf would inject WHARF_SERVICE_HOST, WHARF_PORT, ... beside Wharf's own WHARF_ keys
      enableServiceLinks: false
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      {{- with .Values.podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: wharf
          image: {{ include "wharf.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          args: ["serve", "--config", "/etc/wharf/wharf.yaml"]
          ports:
            - name: http
              containerPort: {{ $port }}
              protocol: TCP
          env:
            # the image sets WHARF_STORAGE__ROOT too, and the environment wins over the file:
            # keep both on the mounted data volume
            - name: WHARF_STORAGE__ROOT
              value: {{ $root | quote }}
            - name: TMPDIR
              value: /tmp
            {{- if include "wharf.cluster" . }}
            # the address the other replicas fetch blobs from this pod at
            {{- if eq .Values.workload.kind "StatefulSet" }}
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- else }}
            - name: POD_IP
              valueFrom:
                fieldRef:
                  fieldPath: status.podIP
            {{- end }}
            - name: WHARF_CLUSTER__ADVERTISE_URL
              value: {{ include "wharf.advertiseUrl" . | quote }}
            {{- end }}
            {{- if .Values.redis.existingSecret }}
            - name: WHARF_REDIS__URL
              valueFrom:
                secretKeyRef:
                  name: {{ .Values.redis.existingSecret }}
                  key: {{ .Values.redis.existingSecretKey | default "url" }}
            {{- end }}
            {{- if .Values.database.existingSecret }}
            # the PostgreSQL URL (it carries the password) only as a reference to the Secret
            - name: WHARF_DATABASE__URL
              valueFrom:
                secretKeyRef:
                  name: {{ .Values.database.existingSecret }}
                  key: {{ .Values.database.existingSecretKey | default "url" }}
            {{- end }}
            {{- range $i, $u := .Values.config.upstreams }}
            {{- if $u.passwordSecret }}
            {{- if eq (include "wharf.upstreamSecretMode" (dict "upstream" $u "index" $i)) "env" }}
            - name: {{ include "wharf.upstreamPasswordEnv" $u.name }}
              valueFrom:
                secretKeyRef:
                  name: {{ $u.passwordSecret.name }}
                  key: {{ $u.passwordSecret.key | default "password" }}
            {{- end }}
            {{- end }}
            {{- end }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with .Values.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- if .Values.startupProbe.enabled }}
          startupProbe:
            {{- include "wharf.probe" (dict "probe" .Values.startupProbe "tls" .Values.tls.existingSecret) | nindent 12 }}
          {{- end }}
          {{- if .Values.livenessProbe.enabled }}
          livenessProbe:
            {{- include "wharf.probe" (dict "probe" .Values.livenessProbe "tls" .Values.tls.existingSecret) | nindent 12 }}
          {{- end }}
          {{- if .Values.readinessProbe.enabled }}
          readinessProbe:
            {{- include "wharf.probe" (dict "probe" .Values.readinessProbe "tls" .Values.tls.existingSecret) | nindent 12 }}
          {{- end }}
          {{- with .Values.securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .Values.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: config
              mountPath: /etc/wharf/wharf.yaml
              subPath: wharf.yaml
              readOnly: true
            - name: data
              mountPath: {{ $root }}
            - name: tmp
              mountPath: /tmp
            {{- if .Values.tls.existingSecret }}
            # a directory, not subPath: a renewed Secret reaches the pod, and Wharf reloads it
            - name: tls
              mountPath: {{ include "wharf.tlsDir" . }}
              readOnly: true
            {{- end }}
            {{- if .Values.s3.existingSecret }}
            - name: s3-keys
              mountPath: {{ include "wharf.s3SecretDir" . }}
              readOnly: true
            {{- end }}
            {{- if .Values.cluster.existingSecret }}
            - name: cluster-secret
              mountPath: {{ include "wharf.clusterSecretDir" . }}
              readOnly: true
            {{- end }}
            {{- range $i, $u := .Values.config.upstreams }}
            {{- if $u.passwordSecret }}
            {{- if eq (include "wharf.upstreamSecretMode" (dict "upstream" $u "index" $i)) "file" }}
            - name: upstream-secret-{{ $i }}
              mountPath: {{ include "wharf.upstreamSecretDir" $i }}
              readOnly: true
            {{- end }}
            {{- end }}
            {{- end }}
            {{- with .Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "wharf.fullname" . }}
        - name: tmp
          {{- if .Values.tmpDir.sizeLimit }}
          emptyDir:
            sizeLimit: {{ .Values.tmpDir.sizeLimit }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- if .Values.tls.existingSecret }}
        - name: tls
          secret:
            secretName: {{ .Values.tls.existingSecret }}
            defaultMode: 0440
            items:
              - key: tls.crt
                path: tls.crt
              - key: tls.key
                path: tls.key
        {{- end }}
        {{- if .Values.s3.existingSecret }}
        - name: s3-keys
          secret:
            secretName: {{ .Values.s3.existingSecret }}
            defaultMode: 0440
            items:
              - key: {{ .Values.s3.accessKeyIdKey }}
                path: access_key_id
              - key: {{ .Values.s3.secretAccessKeyKey }}
                path: secret_access_key
        {{- end }}
        {{- if .Values.cluster.existingSecret }}
        # the secret every replica signs its requests to the others with (config.cluster.secret_file)
        - name: cluster-secret
          secret:
            secretName: {{ .Values.cluster.existingSecret }}
            defaultMode: 0440
            items:
              - key: {{ .Values.cluster.secretKey | default "secret" }}
                path: secret
        {{- end }}
        {{- if and .Values.persistence.enabled (eq .Values.workload.kind "Deployment") }}
        # one volume every replica mounts (ReadWriteMany): the shared store
        - name: data
          persistentVolumeClaim:
            claimName: {{ .Values.persistence.existingClaim | default (printf "%s-data" (include "wharf.fullname" .)) }}
        {{- end }}
        {{- if not .Values.persistence.enabled }}
        - name: data
          {{- if .Values.persistence.emptyDir.sizeLimit }}
          emptyDir:
            sizeLimit: {{ .Values.persistence.emptyDir.sizeLimit }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- end }}
        {{- range $i, $u := .Values.config.upstreams }}
        {{- if $u.passwordSecret }}
        {{- if eq (include "wharf.upstreamSecretMode" (dict "upstream" $u "index" $i)) "file" }}
        - name: upstream-secret-{{ $i }}
          secret:
            secretName: {{ $u.passwordSecret.name }}
            defaultMode: 0440
            items:
              - key: {{ $u.passwordSecret.key | default "password" }}
                path: password
        {{- end }}
        {{- end }}
        {{- end }}
        {{- with .Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.topologySpreadConstraints }}
      # replicas spread over nodes / zones; an entry without labelSelector selects this release's pods
      topologySpreadConstraints:
        {{- range . }}
        - {{- toYaml (merge (deepCopy .) (dict "labelSelector" (dict "matchLabels" (include "wharf.selectorLabels" $ | fromYaml)))) | nindent 10 }}
        {{- end }}
      {{- end }}
{{- end }}
