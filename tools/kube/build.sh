#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl and
# CoreDNS from the Go modules pinned in tools/kube/gomod/ into $KUBE_BIN. Skips everything when
# the binaries for these pins and this Go are already there, so a second run takes a second.
# Cold on 2 cores: see README ("Running on a real Kubernetes").
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$TOOLS_KUBE/goenv.sh"
stamp=$KUBE_BIN/.stamp
want=$(cat "$TOOLS_KUBE"/gomod/*/go.mod "$TOOLS_KUBE"/gomod/*/go.sum "$TOOLS_KUBE/build.sh" <(go version) | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "kube binaries $KUBE_VERSION cached in $KUBE_BIN"
  exit 0
fi
mkdir -p "$KUBE_BIN"
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
t0=$(date +%s)
echo "building kubernetes $KUBE_VERSION ($KUBE_COMMANDS) with $(go version | cut -d' ' -f3); cold: 20+ min on 2 cores"
(cd "$TOOLS_KUBE/gomod/kubernetes" && go build -mod=readonly -ldflags "$ldflags" -o "$KUBE_BIN/" \
  $(printf "k8s.io/kubernetes/cmd/%s " $KUBE_COMMANDS))
t1=$(date +%s)
echo "building coredns $COREDNS_VERSION"
(cd "$TOOLS_KUBE/gomod/coredns" && go build -mod=readonly -ldflags "-s -w" -o "$KUBE_BIN/coredns" github.com/coredns/coredns)
t2=$(date +%s)
echo "$want" > "$stamp"
echo "built in $((t2 - t0)) s (kubernetes $((t1 - t0)) s, coredns $((t2 - t1)) s) into $KUBE_BIN"
