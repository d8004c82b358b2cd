#!/usr/bin/env bash
# Stops everything up.sh started, by the pids it recorded (newest first), and removes what it
# created: the pods' containers, mounts and cgroups, the network namespace, $KUBE_STATE and
# the few paths outside it that the kubelet and containerd insist on. Puts back the sysctls
# the kubelet changes. Keeps $KUBE_CACHE (binaries, images), so the next `make kube` is fast.
set -uo pipefail
. "$(dirname "$0")/env.sh"
R=$KUBE_STATE/run
stop_pid() { # pid [label]
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null
  for i in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  echo "stopped ${2:-pid} ($pid)"
}
stop() { [ -f "$R/$1.pid" ] && stop_pid "$(cat "$R/$1.pid")" "$1"; rm -f "$R/$1.pid"; }

stop provisioner
stop kube-router
stop kube-proxy
stop kubelet
# The pods' containers, through containerd, so that their shims exit and release their mounts.
if [ -S "$R/containerd.sock" ]; then
  ctr="ctr -a $R/containerd.sock -n k8s.io"
  for t in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  for i in $(seq 20); do [ -z "$($ctr tasks ls -q 2>/dev/null | grep -v STOPPED)" ] && break; sleep 0.25; done
  for t in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks delete -f "$t" >/dev/null 2>&1; done
  for c in $($ctr containers ls -q 2>/dev/null); do $ctr containers delete "$c" >/dev/null 2>&1; done
fi
# containerd writes each shim's pid next to its task; stop any shim still there.
for f in "$KUBE_STATE"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
  [ -f "$f" ] && stop_pid "$(cat "$f")" containerd-shim
done
stop coredns
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd
stop containerd
if [ -f "$R/sysctl.orig" ]; then sysctl -q -p "$R/sysctl.orig" && echo "restored sysctls"; fi
# Mounts left under the state dir (pod volumes, sandbox netns and shm, overlay snapshots).
grep -o " $KUBE_STATE/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
# The pods' cgroups (empty once their processes are gone), deepest first.
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
  [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
done
if ip netns list | grep -qw "$KUBE_NETNS"; then ip netns del "$KUBE_NETNS" && echo "deleted network namespace $KUBE_NETNS"; fi
if [ -f "$R/created-paths" ]; then
  while read -r d; do [ -n "$d" ] && rm -rf "$d"; done <"$R/created-paths"
fi
[ -d "$KUBE_STATE" ] && rm -rf --one-file-system "$KUBE_STATE" && echo "removed $KUBE_STATE"
exit 0
