#!/usr/bin/env bash
# Run a command (make test-kube: pytest) as the node sees the cluster of `make kube`: inside its
# network namespace, and resolving names with the cluster's DNS (CoreDNS on $NODE_IP, with a
# pod's search path), so that clients on the node reach members by the names their certificates
# carry (NAME.NAMESPACE.svc, MEMBER.NAME-peers.NAMESPACE.svc) and verify TLS as in a pod.
# /etc/resolv.conf is replaced only in a private mount namespace: the machine's stays as it is.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
conf=$KUBE_STATE/node-resolv.conf
printf 'nameserver %s\nsearch svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n' \
  "$NODE_IP" >"$conf"
# shellcheck disable=SC2016 # $0 and $@ belong to the inner shell
exec $NSENTER unshare --mount --propagation private \
  sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$conf" "$@"
