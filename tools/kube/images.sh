#!/usr/bin/env bash
# Makes every image the local cluster runs, without any registry:
#   pause   - tools/kube/pause.c, static          -> $PAUSE_IMAGE (the pod sandbox)
#   base    - Debian + python3 via mmdebstrap     -> $BASE_IMAGE (stands in for python:3.11-slim)
#   graven  - the repository's Dockerfile on base -> $GRAVEN_IMAGE, also tagged graven:0.1.0
# and writes each as an archive under $KUBE_CACHE/images for `ctr images import` (up.sh).
# pause and base are rebuilt only when their recipe changes; graven is rebuilt every run
# (podman's layer cache makes an unchanged tree a few seconds).
set -euo pipefail
. "$(dirname "$0")/env.sh"
P="$TOOLS_KUBE/podman.sh"
I=$KUBE_CACHE/images
mkdir -p "$I"
recipe_hash() { cat "$@" | sha256sum | cut -c1-16; }

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
# pip inside the build reaches PyPI through the host's network and trusts the host's CAs
# (a TLS-inspecting egress proxy may sit in between); neither ends up in the image.
$P build --quiet --pull=never --network=host \
  --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  --build-arg PYTHON_IMAGE="$BASE_IMAGE" -t "$GRAVEN_IMAGE" -f "$REPO_ROOT/Dockerfile" "$REPO_ROOT" >/dev/null
id=$($P image inspect --format '{{.Id}}' "$GRAVEN_IMAGE")
if [ "$(cat "$I/graven.id" 2>/dev/null)" != "$id" ] || [ ! -f "$I/graven.tar" ]; then
  rm -f "$I/graven.tar" && $P save --quiet --format docker-archive -o "$I/graven.tar" "$GRAVEN_IMAGE"
  echo "$id" > "$I/graven.id"
fi
echo "image $GRAVEN_IMAGE ready (${id:0:12})"
