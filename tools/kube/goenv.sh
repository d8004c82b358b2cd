# Go settings for building Kubernetes and CoreDNS (sourced after env.sh). Caches live outside the
# repository so that a second `make kube` reuses them.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE=$KUBE_CACHE/gomod GOCACHE=$KUBE_CACHE/gocache GOTMPDIR=$KUBE_CACHE/gotmp
export GOFLAGS="-trimpath -buildvcs=false"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$GOTMPDIR"
KUBE_COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
