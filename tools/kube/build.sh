#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl,
# CoreDNS and Prometheus from the Go modules pinned in tools/kube/gomod/ into $KUBE_BIN. Each
# group is skipped when its binaries for these pins and this Go are already there, so a second
# run takes a second. Cold on 2 cores: see README ("Running on a real Kubernetes").
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$TOOLS_KUBE/goenv.sh"
mkdir -p "$KUBE_BIN"
gov=$(go version)
built=0
group() { # name module-dir ldflags output-dir-or-file packages...: go build unless cached
  local name=$1 dir=$TOOLS_KUBE/gomod/$2 ldflags=$3 out=$4; shift 4
  local stamp=$KUBE_BIN/.$name.stamp want
  want=$(cat "$dir/go.mod" "$dir/go.sum" <(echo "$gov $ldflags $*") | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  local t0; t0=$(date +%s)
  echo "building $name (cold: many minutes on 2 cores)"
  (cd "$dir" && go build -mod=readonly -ldflags "$ldflags" -o "$out" "$@")
  echo "$want" >"$stamp"
  echo "built $name in $(($(date +%s) - t0)) s"
  built=1
}
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
k8s="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
group "kubernetes-$KUBE_VERSION" kubernetes "$k8s" "$KUBE_BIN/" \
  $(printf "k8s.io/kubernetes/cmd/%s " $KUBE_COMMANDS)
group "coredns-$COREDNS_VERSION" coredns "-s -w" "$KUBE_BIN/coredns" github.com/coredns/coredns
group "prometheus-$PROMETHEUS_RELEASE" prometheus \
  "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_RELEASE" \
  "$KUBE_BIN/prometheus" github.com/prometheus/prometheus/cmd/prometheus
[ $built = 1 ] || echo "kube binaries $KUBE_VERSION cached in $KUBE_BIN"
