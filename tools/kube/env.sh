# Shared settings for tools/kube/*.sh (sourced, not run). Everything pinned lives here.
# The cache (Go modules, Go build cache, binaries, base images) survives `make kube-down`;
# the state (etcd, containerd, kubelet, certificates, logs) is removed by it.
KUBE_VERSION=v1.34.4          # k8s.io/kubernetes module: control plane, kubelet, kube-proxy, kubectl
COREDNS_VERSION=v1.14.7       # github.com/coredns/coredns module: cluster DNS
# github.com/prometheus/prometheus module v0.307.3 = Prometheus 3.7.3: Debian's prometheus is
# built without Kubernetes service discovery, which tests/kube needs against this apiserver.
PROMETHEUS_VERSION=v0.307.3
PROMETHEUS_RELEASE=3.7.3     # the release that module version is
# github.com/cert-manager/cert-manager module: its controllers (tools/kube/certmanager/main.go)
# and CRDs, for tests/kube/test_certmanager.py. The version is pinned in that go.mod too.
CERT_MANAGER_VERSION=v1.21.2
# github.com/cloudnativelabs/kube-router/v2 module: only its network policy controller runs
# (tools/kube/up.sh), so that the bridge CNI's pods get NetworkPolicy enforced. v2.1.0 is the
# only version the module proxy here serves; it has known security flaws, acceptable for a test
# cluster closed in its own network namespace. The version is pinned in tools/kube/kuberouter/go.mod.
KUBE_ROUTER_VERSION=v2.1.0
DEBIAN_SUITE=bookworm         # base image of Graven's image, made with mmdebstrap from Debian packages
KUBE_CACHE=${GRAVEN_KUBE_CACHE:-/var/cache/graven-kube}
KUBE_STATE=${GRAVEN_KUBE_STATE:-/var/lib/graven-kube}
KUBE_BIN=$KUBE_CACHE/bin/$KUBE_VERSION
KUBE_NETNS=graven-kube        # the private network namespace everything runs in
NODE_NAME=graven-node
NODE_IP=10.99.0.1             # inside the namespace only (a veth pair carries it)
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
APISERVER_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
KUBECONFIG_ADMIN=$KUBE_STATE/pki/admin.kubeconfig
TOOLS_KUBE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TOOLS_KUBE/../.." && pwd)
# Enter the namespace without a new mount namespace: `ip netns exec` remounts /sys, which hides
# the cgroup mounts the kubelet needs.
NSENTER="nsenter --net=/run/netns/$KUBE_NETNS"
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Images (made by images.sh; nothing is pulled). GRAVEN_IMAGE is also tagged with the name the
# chart and examples/cluster.yaml use by default (graven:0.1.0 = docker.io/library/graven:0.1.0).
PAUSE_IMAGE=localhost/graven-kube/pause:1
BASE_IMAGE=localhost/graven-kube/python:3.11-$DEBIAN_SUITE
GRAVEN_IMAGE=localhost/graven:0.1.0
GRAVEN_DEFAULT_IMAGE=docker.io/library/graven:0.1.0
