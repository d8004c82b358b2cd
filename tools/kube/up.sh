#!/usr/bin/env bash
# Starts a single-node Kubernetes inside the private network namespace $KUBE_NETNS: etcd,
# containerd + runc, bridge CNI, kube-apiserver, kube-controller-manager, kube-scheduler,
# CoreDNS, kubelet, kube-proxy, kube-router's network policy controller (NetworkPolicy for the
# bridge CNI's pods) and a tiny volume provisioner. Nothing listens in, or routes out
# of, the machine's own namespace. Every process is recorded in $KUBE_STATE/run/NAME.pid and
# stopped by down.sh. Idempotent: a component already running is left alone.
set -euo pipefail
. "$(dirname "$0")/env.sh"
S=$KUBE_STATE P=$KUBE_STATE/pki R=$KUBE_STATE/run L=$KUBE_STATE/logs C=$KUBE_STATE/conf
KUBECTL="$KUBE_BIN/kubectl --kubeconfig $KUBECONFIG_ADMIN"
mkdir -p "$R" "$L" "$C"

running() { [ -f "$R/$1.pid" ] && kill -0 "$(cat "$R/$1.pid")" 2>/dev/null; }
start() { # name command...: run it inside the namespace, in its own session, and record its pid
  local name=$1; shift
  if running "$name"; then return 0; fi
  setsid $NSENTER "$@" </dev/null >"$L/$name.log" 2>&1 &
  echo $! >"$R/$name.pid"
}
wait_for() { # what seconds command...: poll once a second, bounded; show the log on failure
  local what=$1 limit=$2; shift 2
  for _ in $(seq "$limit"); do
    if $NSENTER "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "up: $what not ready after ${limit}s; last lines of $L/$what.log:" >&2
  tail -n 20 "$L/$what.log" >&2 2>/dev/null || true
  return 1
}
# Paths outside $KUBE_STATE that the kubelet and containerd insist on; down.sh removes the
# ones that did not exist before.
remember_created() {
  for d in /var/log/containers /var/lib/cni /run/containerd /var/lib/kubelet; do
    if [ ! -e "$d" ] && ! grep -qx "$d" "$R/created-paths" 2>/dev/null; then echo "$d" >>"$R/created-paths"; fi
  done
  touch "$R/created-paths"
}

up_netns() {
  if ip netns list | grep -qw "$KUBE_NETNS"; then return 0; fi
  ip netns add "$KUBE_NETNS"
  ip -n "$KUBE_NETNS" link set lo up
  # The kubelet refuses a loopback node IP, and this kernel has no dummy links: a veth pair
  # with both ends inside the namespace carries the node IP.
  ip -n "$KUBE_NETNS" link add gk0 type veth peer name gk0p
  ip -n "$KUBE_NETNS" addr add "$NODE_IP/24" dev gk0
  ip -n "$KUBE_NETNS" link set gk0 up
  ip -n "$KUBE_NETNS" link set gk0p up
  ip -n "$KUBE_NETNS" route add default dev gk0 # components want a default route; it leads nowhere
}

write_configs() {
  mkdir -p "$S/cni/net.d" "$S/containerd" "$S/kubelet" "$S/pod-logs" "$S/volumes"
  cat >"$C/containerd.toml" <<EOF
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
[grpc]
  address = "$R/containerd.sock"
[ttrpc]
  address = "$R/containerd-ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_selinux = false
  # This machine withholds CAP_SYS_RESOURCE: runc cannot give the pause container the
  # negative oom_score_adj the kubelet asks for. Clamp it to containerd's own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
EOF
  cat >"$S/cni/net.d/10-graven-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "graven-bridge",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$S/cni/ipam"}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  : >"$C/resolv.conf" # pods get no upstream resolver: nothing is resolved outside the cluster
  cat >"$C/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
containerRuntimeEndpoint: unix://$R/containerd.sock
cgroupDriver: cgroupfs
# This machine has the hybrid cgroup v1 layout (kubelets from 1.35 refuse it by default).
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: ["$NODE_IP"]
resolvConf: $C/resolv.conf
podLogsDir: $S/pod-logs
maxPods: 40
# Secret volumes follow their Secret within this period (the default is 1m): the tests
# rotate a CA with steps 40 s apart (--ca-rotation-settle), which must exceed it.
syncFrequency: 10s
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOF
  cat >"$C/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_ADMIN graven-kube
        pods insecure
        ttl 5
    }
}
EOF
}

up_containerd() {
  start containerd /usr/bin/containerd --config "$C/containerd.toml"
  wait_for containerd 30 ctr -a "$R/containerd.sock" version
  local ctr="ctr -a $R/containerd.sock -n k8s.io"
  for image in pause graven; do
    $ctr images import --no-unpack=false "$KUBE_CACHE/images/$image.tar" >/dev/null
  done
  # The name the chart and examples/cluster.yaml use by default (see docs/operator.md).
  $ctr images tag --force "$GRAVEN_IMAGE" "$GRAVEN_DEFAULT_IMAGE" >/dev/null
}

up_etcd() {
  start etcd /usr/bin/etcd --name graven-kube --data-dir "$S/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster graven-kube=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  wait_for etcd 30 curl -sf http://127.0.0.1:2381/health
}

up_apiserver() {
  start kube-apiserver "$KUBE_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
    --client-ca-file="$P/ca.crt" --service-account-key-file="$P/sa.pub" \
    --service-account-signing-key-file="$P/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$SERVICE_CIDR" --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction --allow-privileged=true \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --cert-dir="$S/apiserver-certs"
  wait_for kube-apiserver 120 $KUBECTL get --raw /readyz
}

up_controller_manager() {
  start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig="$P/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$P/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$P/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --cert-dir="$S/kcm-certs" \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    --use-service-account-credentials=true --leader-elect=false \
    --service-cluster-ip-range="$SERVICE_CIDR"
  wait_for kube-controller-manager 60 curl -skf https://127.0.0.1:10257/healthz
}

up_scheduler() {
  start kube-scheduler "$KUBE_BIN/kube-scheduler" --kubeconfig="$P/scheduler.kubeconfig" \
    --authentication-kubeconfig="$P/scheduler.kubeconfig" \
    --authorization-kubeconfig="$P/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false
  wait_for kube-scheduler 60 curl -skf https://127.0.0.1:10259/healthz
}

up_coredns() {
  start coredns "$KUBE_BIN/coredns" -conf "$C/Corefile"
  wait_for coredns 60 curl -sf http://127.0.0.1:8181/ready
}

# The kubelet sets these machine-wide sysctls once, at start. Keep the machine's values and put
# them back as soon as it is up (and again in down.sh).
TUNABLES="vm.overcommit_memory kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
up_kubelet() {
  if [ ! -f "$R/sysctl.orig" ]; then
    for k in $TUNABLES; do echo "$k=$(sysctl -n "$k")"; done >"$R/sysctl.orig"
  fi
  start kubelet "$KUBE_BIN/kubelet" --config="$C/kubelet.yaml" \
    --kubeconfig="$P/kubelet.kubeconfig" --root-dir="$S/kubelet" --cert-dir="$S/kubelet-certs" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  wait_for kubelet 90 curl -sf http://127.0.0.1:10248/healthz
  sysctl -q -p "$R/sysctl.orig"
  wait_for kubelet 120 sh -c "$KUBECTL get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
}

up_kube_proxy() {
  # iptables mode, inside the namespace only: gives pods and the node the Service IPs.
  # conntrack values 0: leave the (partly machine-wide) conntrack sysctls alone.
  start kube-proxy "$KUBE_BIN/kube-proxy" --kubeconfig="$P/kube-proxy.kubeconfig" \
    --proxy-mode=iptables --hostname-override="$NODE_NAME" --cluster-cidr="$POD_CIDR" \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256
  wait_for kube-proxy 60 curl -sf http://127.0.0.1:10256/healthz
}

up_kube_router() {
  # The bridge CNI enforces no NetworkPolicy; kube-router's firewall does, with iptables and
  # ipset in this namespace only (no routing, no service proxy: the bridge and kube-proxy keep
  # those). Traffic between two pods on cni0 is bridged, not routed: br_netfilter must hand it
  # to iptables, a per-namespace setting on this kernel.
  $NSENTER sysctl -q -w net.bridge.bridge-nf-call-iptables=1 || {
    echo "up: cannot set net.bridge.bridge-nf-call-iptables in $KUBE_NETNS (br_netfilter missing?)" >&2
    return 1
  }
  start kube-router "$KUBE_BIN/kube-router" --kubeconfig="$KUBECONFIG_ADMIN" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --hostname-override="$NODE_NAME" --service-cluster-ip-range="$SERVICE_CIDR" \
    --health-port=20244 --metrics-port=0
  wait_for kube-router 60 curl -sf http://127.0.0.1:20244/healthz
  # its chains hooked into INPUT/FORWARD/OUTPUT: the firewall has started syncing
  wait_for kube-router 60 iptables -w 5 -n -L KUBE-ROUTER-FORWARD
}

up_provisioner() {
  $NSENTER $KUBECTL apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: graven-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: graven.dev/local-dir
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  start provisioner bash "$TOOLS_KUBE/provisioner.sh"
}

remember_created
up_netns
write_configs
bash "$TOOLS_KUBE/certs.sh" >/dev/null
up_containerd
up_etcd
up_apiserver
up_controller_manager
up_scheduler
up_coredns
up_kubelet
up_kube_proxy
up_kube_router
up_provisioner
echo "kubernetes $KUBE_VERSION is up in network namespace $KUBE_NETNS"
