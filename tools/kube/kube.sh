#!/usr/bin/env bash
# `make kube`: a real single-node Kubernetes for Graven, made on this machine from pinned parts.
#   1. Debian packages (etcd, containerd, runc, CNI plugins, podman/buildah, mmdebstrap)
#   2. Kubernetes + CoreDNS binaries from Go modules (cold: see README; cached: seconds)
#   3. images: pause, a Debian python base, and Graven's image from the Dockerfile
#   4. everything started inside the network namespace $KUBE_NETNS
# Prints the admin kubeconfig's path. `make kube-down` stops and removes it all.
set -euo pipefail
. "$(dirname "$0")/env.sh"
step() { echo "== $* ($(date -u +%T))"; }
t0=$(date +%s)
step "debian packages";      bash "$TOOLS_KUBE/packages.sh"
step "kubernetes binaries";  bash "$TOOLS_KUBE/build.sh"
step "images";               bash "$TOOLS_KUBE/images.sh"
step "start";                bash "$TOOLS_KUBE/up.sh"
echo "ready in $(( $(date +%s) - t0 )) s"
echo "kubeconfig: $KUBECONFIG_ADMIN  (the API is reachable inside network namespace $KUBE_NETNS only)"
echo "kubectl:    tools/kube/kubectl.sh get nodes    (pinned kubectl $KUBE_VERSION, run in the namespace)"
