#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl,
# CoreDNS and Prometheus from the Go modules pinned in tools/kube/gomod/, cert-manager's
# controllers (tools/kube/certmanager/: our main over the pinned cert-manager module, with its
# CRDs copied beside it) and kube-router (tools/kube/kuberouter/: upstream's command, run as a
# NetworkPolicy firewall only) into $KUBE_BIN. Each
# group is skipped when its binaries for these pins and this Go are already there, so a second
# run takes a second. Cold on 2 cores: see README ("Running on a real Kubernetes").
#   build.sh --check   builds nothing; exits 1 (naming what is missing) unless every binary of
#                      these pins is cached (.ci/run runs the real-cluster suite only then),
#                      except the small groups (cert-manager, kube-router: minutes, not an
#                      hour), which it names and leaves to `make kube` to build
set -euo pipefail
check=0; [ "${1:-}" = --check ] && check=1
. "$(dirname "$0")/env.sh"
if [ $check = 1 ]; then
  # the stamps name the Go that built the binaries: no Go here, nothing counts as cached
  command -v go >/dev/null || { echo "no go on PATH: nothing counts as cached" >&2; exit 1; }
  KUBE_COMMANDS=$(sed -n 's/^KUBE_COMMANDS="\(.*\)"/\1/p' "$TOOLS_KUBE/goenv.sh")
else
  . "$TOOLS_KUBE/goenv.sh"
fi
[ $check = 1 ] || mkdir -p "$KUBE_BIN"
gov=$(go version)
built=0
missing=() quick=()
QUICK_GROUPS="cert-manager-$CERT_MANAGER_VERSION kube-router-$KUBE_ROUTER_VERSION"
group() { # name module-dir ldflags output-dir-or-file packages...: go build unless cached
  # module-dir: under tools/kube/gomod/, or (ending in /) under tools/kube/
  local name=$1 dir=$TOOLS_KUBE/gomod/$2 ldflags=$3 out=$4
  [[ $2 == */ ]] && dir=$TOOLS_KUBE/${2%/}
  shift 4
  local stamp=$KUBE_BIN/.$name.stamp want
  want=$(cat "$dir/go.mod" "$dir/go.sum" $(ls "$dir"/*.go 2>/dev/null) <(echo "$gov $ldflags $*") \
    | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  if [ $check = 1 ]; then
    if [[ " $QUICK_GROUPS " == *" $name "* ]]; then quick+=("$name"); else missing+=("$name"); fi
    return 0
  fi
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
# cert-manager: the controllers a CA Issuer needs (tests/kube/test_certmanager.py runs them),
# and the CRDs of the same module for the test to install (after the build, in its stamp).
certmanager_crds() {
  local mod
  mod=$(cd "$TOOLS_KUBE/certmanager" && go list -mod=readonly -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
  mkdir -p "$KUBE_BIN/cert-manager-crds"
  cp "$mod"/deploy/crds/cert-manager.io_*.yaml "$KUBE_BIN/cert-manager-crds/"
}
cm_stamp=$KUBE_BIN/.cert-manager-$CERT_MANAGER_VERSION.stamp
cm_before=$(cat "$cm_stamp" 2>/dev/null || true)
group "cert-manager-$CERT_MANAGER_VERSION" certmanager/ "-s -w" "$KUBE_BIN/graven-cert-manager" .
if [ $check = 0 ] && { [ "$cm_before" != "$(cat "$cm_stamp")" ] || ! [ -d "$KUBE_BIN/cert-manager-crds" ]; }; then
  certmanager_crds
fi
# kube-router: upstream's command, pinned by the tool line of tools/kube/kuberouter/go.mod
group "kube-router-$KUBE_ROUTER_VERSION" kuberouter/ \
  "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
  "$KUBE_BIN/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
if [ $check = 1 ]; then
  [ -d "$KUBE_BIN/cert-manager-crds" ] || quick+=("cert-manager-crds")
  [ ${#missing[@]} = 0 ] || { echo "not cached in $KUBE_BIN: ${missing[*]}" >&2; exit 1; }
  [ ${#quick[@]} = 0 ] || echo "make kube builds (minutes): ${quick[*]}"
  echo "kube binaries $KUBE_VERSION cached in $KUBE_BIN"
  exit 0
fi
[ $built = 1 ] || echo "kube binaries $KUBE_VERSION cached in $KUBE_BIN"
