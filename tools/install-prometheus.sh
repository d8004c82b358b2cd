#!/usr/bin/env bash
# Make `promtool` (and the `prometheus` server binary) available from Debian's `prometheus`
# package. Does nothing when promtool is already on PATH. Never starts the service and never
# waits for input. Needs root (or sudo without a password) only when it has to install.
set -euo pipefail

log() { echo "install-prometheus: $*" >&2; }

if command -v promtool >/dev/null 2>&1; then
  log "promtool already present: $(command -v promtool)"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || { log "error: apt-get not found (Debian/Ubuntu only)"; exit 1; }

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { log "error: need root or sudo to install"; exit 1; }
  SUDO="sudo -n"
fi

export DEBIAN_FRONTEND=noninteractive

# policy-rc.d exit 101 tells invoke-rc.d not to start services during the install; only put one
# in place if none exists, and remove only our own.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 0755 "$policy"
  own_policy=1
fi
cleanup() { if [[ "$own_policy" == 1 ]]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef
  -o Dpkg::Options::=--force-confold)
log "apt-get update"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
log "apt-get install prometheus"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" prometheus </dev/null >&2

command -v promtool >/dev/null 2>&1 || { log "error: promtool still missing after install"; exit 1; }
log "installed: $(promtool --version 2>&1 | head -n1)"
