#!/usr/bin/env bash
# podman with its storage in the kube cache (so image layers survive `make kube-down`), the
# cgroupfs manager (no systemd here) and runc (crun refuses this machine's hybrid cgroup layout).
. "$(dirname "$0")/env.sh"
mkdir -p "$KUBE_CACHE/podman/tmp"
exec podman --root "$KUBE_CACHE/podman/storage" --runroot "$KUBE_CACHE/podman/run" \
  --cgroup-manager=cgroupfs --events-backend=file --runtime /usr/sbin/runc \
  --tmpdir "$KUBE_CACHE/podman/tmp" "$@"
