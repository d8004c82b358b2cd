#!/usr/bin/env bash
# Makes every image the local cluster runs, without any registry:
#   pause   - tools/kube/pause.c, static          -> $PAUSE_IMAGE (the pod sandbox)
#   base    - Debian + python3 via mmdebstrap     -> $BASE_IMAGE (stands in for python:3.11-slim)
#   graven  - the repository's Dockerfile on base -> $GRAVEN_IMAGE, also tagged graven:0.1.0
# and writes each as an archive under $KUBE_CACHE/images for `ctr images import` (up.sh).
# Each is rebuilt only when its recipe (or, for graven, its sources) changed.
set -euo pipefail
. "$(dirname "$0")/env.sh"
P="$TOOLS_KUBE/podman.sh"
I=$KUBE_CACHE/images
mkdir -p "$I"
recipe_hash() { cat "$@" | sha256sum | cut -c1-16; }
graven_sources_hash() { # everything the Dockerfile copies
  (cd "$REPO_ROOT" && find Dockerfile .dockerignore pyproject.toml README.md node operator \
    -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
# --check: is the archive of Graven's image built from the current sources? (tests/kube run
# where there is no network, so they check rather than build.)
if [ "${1:-}" = --check ]; then
  if [ "$(cat "$I/graven.stamp" 2>/dev/null)" = "$(graven_sources_hash)" ] && [ -f "$I/graven.tar" ]; then
    exit 0
  fi
  echo "$GRAVEN_IMAGE is older than the sources it is built from: run 'make kube'" >&2
  exit 1
fi

# --- pause ---------------------------------------------------------------------------------
h=$(recipe_hash "$TOOLS_KUBE/pause.c" "$TOOLS_KUBE/images.sh")
if [ "$(cat "$I/pause.stamp" 2>/dev/null)" != "$h" ]; then
  rm -rf "$I/pause-root" && mkdir -p "$I/pause-root"
  gcc -Os -static -o "$I/pause-root/pause" "$TOOLS_KUBE/pause.c" && strip "$I/pause-root/pause"
  tar -C "$I/pause-root" -cf "$I/pause-rootfs.tar" .
  $P import --quiet --change 'ENTRYPOINT ["/pause"]' "$I/pause-rootfs.tar" "$PAUSE_IMAGE" >/dev/null
  rm -f "$I/pause.tar" && $P save --quiet --format docker-archive -o "$I/pause.tar" "$PAUSE_IMAGE"
  echo "$h" > "$I/pause.stamp"
fi
echo "image $PAUSE_IMAGE ready"

# --- base: Debian's python3 laid out like python:3.11-slim (pip in /usr/local, `python`) ---
h=$(recipe_hash "$TOOLS_KUBE/base-image.sh" <(echo "$DEBIAN_SUITE"))
if [ "$(cat "$I/base.stamp" 2>/dev/null)" != "$h" ]; then
  echo "making $BASE_IMAGE from Debian $DEBIAN_SUITE packages (mmdebstrap, about 2 min)"
  mkdir -p "$KUBE_CACHE/tmp"
  TMPDIR=$KUBE_CACHE/tmp mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-pip-whl,python3-setuptools-whl,ca-certificates \
    --customize-hook="chroot \"\$1\" sh -e -s < $TOOLS_KUBE/base-image.sh" \
    "$DEBIAN_SUITE" "$I/base-rootfs.tar"
  $P import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$I/base-rootfs.tar" "$BASE_IMAGE" >/dev/null
  rm -f "$I/base-rootfs.tar"
  echo "$h" > "$I/base.stamp"
fi
echo "image $BASE_IMAGE ready"

# --- graven: the Dockerfile as users build it, over the Debian-made base -------------------
# Rebuilt whenever anything the Dockerfile copies changes, without buildah's layer cache: it
# keys `RUN --mount=type=bind,from=build` on the command only, so a changed wheel would be
# silently ignored (BuildKit does not have that problem).
# pip inside the build reaches PyPI through the host's network and trusts the host's CAs
# (a TLS-inspecting egress proxy may sit in between); neither ends up in the image.
h=$(graven_sources_hash)
if [ "$(cat "$I/graven.stamp" 2>/dev/null)" != "$h" ] || [ ! -f "$I/graven.tar" ]; then
  echo "building $GRAVEN_IMAGE from the Dockerfile (about a minute: pip fetches the dependencies)"
  $P build --quiet --no-cache --pull=never --network=host \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg PYTHON_IMAGE="$BASE_IMAGE" -t "$GRAVEN_IMAGE" -f "$REPO_ROOT/Dockerfile" "$REPO_ROOT" >/dev/null
  $P image prune --force >/dev/null  # the previous build's layers
  rm -f "$I/graven.tar" && $P save --quiet --format docker-archive -o "$I/graven.tar" "$GRAVEN_IMAGE"
  echo "$h" > "$I/graven.stamp"
fi
echo "image $GRAVEN_IMAGE ready ($($P image inspect --format '{{.Id}}' "$GRAVEN_IMAGE" | cut -c1-12))"
