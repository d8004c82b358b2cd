#!/usr/bin/env bash
# The pinned kubectl, inside the cluster's network namespace, as cluster admin.
. "$(dirname "$0")/env.sh"
exec $NSENTER "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"
