#!/usr/bin/env bash
# Regenerates the pinned go.mod/go.sum under tools/kube/gomod/ (and tools/kube/certmanager/)
# for the versions in env.sh.
# Run by hand when changing KUBE_VERSION or COREDNS_VERSION, then commit the result; build.sh
# only reads these files (-mod=readonly), so every build uses the same checksummed modules.
set -euo pipefail
. "$(dirname "$0")/env.sh"
. "$TOOLS_KUBE/goenv.sh"
k8s=$TOOLS_KUBE/gomod/kubernetes
rm -rf "$k8s" && mkdir -p "$k8s" && cd "$k8s"
go mod init local/graven-kube-build >/dev/null 2>&1
modfile=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
staging_minor=v0.${KUBE_VERSION#v1.}
# k8s.io/kubernetes replaces each staging repo by a local directory; as a dependency those
# replaces are ignored, so map each one to its published v0.X.Y twin.
for repo in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile"); do
  go mod edit -replace="$repo=$repo@$staging_minor"
done
go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
go get $(printf "k8s.io/kubernetes/cmd/%s@$KUBE_VERSION " $KUBE_COMMANDS)
# Same language version and GODEBUG defaults as upstream's own go.mod (ours would say the local Go's).
go mod edit -go="$(sed -n 's/^go //p' "$modfile")" -godebug="$(sed -n 's/^godebug //p' "$modfile")"
dns=$TOOLS_KUBE/gomod/coredns
rm -rf "$dns" && mkdir -p "$dns" && cd "$dns"
go mod init local/graven-coredns-build >/dev/null 2>&1
go get "github.com/coredns/coredns@$COREDNS_VERSION"
go mod edit -go="$(go mod download -json "github.com/coredns/coredns@$COREDNS_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs sed -n 's/^go //p')"
prom=$TOOLS_KUBE/gomod/prometheus
rm -rf "$prom" && mkdir -p "$prom" && cd "$prom"
go mod init local/graven-prometheus-build >/dev/null 2>&1
go get "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"
go mod edit -go="$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs sed -n 's/^go //p')"
cm=$TOOLS_KUBE/certmanager  # our main.go lives there; only its go.mod/go.sum are regenerated
cd "$cm" && go mod edit -require="github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" && go mod tidy
echo "pinned: cert-manager $CERT_MANAGER_VERSION"
echo "pinned: kubernetes $KUBE_VERSION, coredns $COREDNS_VERSION, prometheus $PROMETHEUS_VERSION"
