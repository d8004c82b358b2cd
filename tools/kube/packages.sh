#!/usr/bin/env bash
# Installs the Debian packages the local Kubernetes needs (apt-get update first). Versions are
# pinned to the upstream release with Debian's security revisions allowed (deb12u*): an exact
# revision would break as soon as Debian publishes a fix and drops the old one.
# Never starts their services (policy-rc.d), never waits for input.
set -euo pipefail
PACKAGES=(
  "etcd-server=3.4.23-*"                           # the apiserver's store
  "containerd=1.6.20~ds1-*"                        # CRI runtime for the kubelet (1.6: see env.sh)
  "runc=1.1.5+ds1-*"                               # crun refuses this hybrid cgroup layout
  "containernetworking-plugins=1.1.1+ds1-*"        # bridge + host-local + loopback CNI
  "podman=4.3.1+ds1-*" "buildah=1.28.2+ds1-*"      # build Graven's image from its Dockerfile
  "mmdebstrap=1.3.5-*"                             # the Debian base image, from Debian packages
  "conntrack=1:1.4.7-*" "socat=1.7.4.4-*" "ethtool=1:6.1-*"  # kube-proxy / port-forward
  "ipset=7.17-*"                                   # kube-router's NetworkPolicy firewall
  "uidmap=1:4.13+dfsg1-*" "iptables=1.8.9-*" "openssl" "curl"
)
missing=()
for p in "${PACKAGES[@]}"; do
  name=${p%%=*}; want=${p#*=}
  have=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$name" 2>/dev/null || true)
  # shellcheck disable=SC2053  # $want is a glob on purpose
  if [[ $p == "$name" && $have == ii* ]] || [[ ${have#ii  } == $want && $have == ii* ]]; then
    continue
  fi
  missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "debian packages present"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d own_policy=0
if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod 0755 $policy; own_policy=1; fi
trap 'if [ $own_policy = 1 ]; then rm -f $policy; fi' EXIT
echo "apt-get install ${missing[*]}"
apt-get update -q </dev/null >/dev/null
apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
  -o Dpkg::Options::=--force-confold "${missing[@]}" </dev/null >/dev/null
