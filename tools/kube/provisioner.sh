#!/usr/bin/env bash
# A minimal volume provisioner for the local cluster (StorageClass graven-local, the default):
# each Pending claim of that class gets a directory under $KUBE_STATE/volumes and a `local`
# PersistentVolume bound to it (the kubelet applies the pod's fsGroup to local volumes); a
# volume whose claim was deleted is deleted with its directory. Polls once a second; runs
# inside the namespace, started and stopped by up.sh/down.sh.
set -uo pipefail
. "$(dirname "$0")/env.sh"
K="$KUBE_BIN/kubectl --kubeconfig $KUBECONFIG_ADMIN --request-timeout=10s"
V=$KUBE_STATE/volumes
claims='{range .items[*]}{.metadata.namespace} {.metadata.name} {.metadata.uid} {.status.phase} {.spec.storageClassName} {.spec.resources.requests.storage}{"\n"}{end}'
volumes='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}'
provision() { # namespace name uid size
  local pv=pvc-$3
  mkdir -p "$V/$pv"
  $K create -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $pv
  labels: {graven.dev/local-dir: "true"}
  annotations: {pv.kubernetes.io/provisioned-by: graven.dev/local-dir}
spec:
  capacity: {storage: $4}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: graven-local
  claimRef: {namespace: $1, name: $2, uid: $3}
  local: {path: $V/$pv}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]
YAML
}
while sleep 1; do
  $K get pvc -A -o jsonpath="$claims" 2>/dev/null | while read -r ns name uid phase class size; do
    if [ "$phase" = Pending ] && [ "$class" = graven-local ] && ! $K get pv "pvc-$uid" >/dev/null 2>&1; then
      provision "$ns" "$name" "$uid" "$size" && echo "provisioned pvc-$uid for $ns/$name"
    fi
  done
  $K get pv -l graven.dev/local-dir=true -o jsonpath="$volumes" 2>/dev/null | while read -r pv phase; do
    case $phase in Released | Failed)
      $K delete pv "$pv" --wait=false >/dev/null && rm -rf "${V:?}/$pv" && echo "deleted $pv" ;;
    esac
  done
done
