#!/usr/bin/env bash
# Make `iptables` (Debian package) available for the fault harness (tests/faults): partitions and
# packet loss are iptables rules inside network namespaces the harness creates. `ip` (iproute2)
# is checked too. Does nothing when both are present. Needs root only when it has to install.
set -euo pipefail

log() { echo "install-netfaults: $*" >&2; }

if command -v iptables >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then
  log "iptables and ip already present"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || { log "error: apt-get not found (Debian/Ubuntu only)"; exit 1; }
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { log "error: need root or sudo to install"; exit 1; }
  SUDO="sudo -n"
fi
apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef
  -o Dpkg::Options::=--force-confold)
log "apt-get update"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
log "apt-get install iptables iproute2"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" iptables iproute2 </dev/null >&2
command -v iptables >/dev/null 2>&1 || { log "error: iptables still missing after install"; exit 1; }
log "installed: $(iptables -V)"
