#!/usr/bin/env bash
# Build the flwrmtls container image with local tools only (no image registry needed):
#   1. the base image: Debian bookworm made by mmdebstrap (python3, python3-venv,
#      ca-certificates), imported into podman as localhost/flwrmtls-base:bookworm (once);
#   2. the project and its dependencies as wheels, built on this host with Python 3.11
#      (Debian bookworm's python3 is 3.11, so the wheels' ABI matches);
#   3. deploy/container/Containerfile built by buildah from a context holding only those wheels.
# Environment: IMAGE (default localhost/flwrmtls:dev), EXTRAS (optional dependencies, e.g.
# "apps" for the template app), PYTHON (a Python 3.11 with pip, default: .venv/bin/python),
# WORK (scratch directory, default build/container). Needs: mmdebstrap, podman, buildah.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
image=${IMAGE:-localhost/flwrmtls:dev}
extras=${EXTRAS:-}
python=${PYTHON:-$repo/.venv/bin/python}
work=${WORK:-$repo/build/container}
base=localhost/flwrmtls-base:bookworm

for tool in mmdebstrap podman buildah runc; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: $tool is missing: apt-get install mmdebstrap podman buildah runc" >&2
        exit 1
    }
done
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
    echo "build.sh: $python is Python $version; the image's Python is 3.11: set PYTHON" >&2
    exit 1
fi
mkdir -p "$work"
if ! podman image exists "$base"; then
    echo "build.sh: making the base image $base with mmdebstrap"
    mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
        bookworm "$work/base.tar"
    podman import --quiet --change 'CMD ["/bin/sh"]' "$work/base.tar" "$base" >/dev/null
    rm -f "$work/base.tar"
fi
rm -rf "$work/context"
mkdir -p "$work/context/wheels"
echo "build.sh: building wheels${extras:+ (with [$extras])}"
"$python" -m pip wheel --quiet --wheel-dir "$work/context/wheels" "$repo${extras:+[$extras]}"
cp "$repo/deploy/container/Containerfile" "$work/context/Containerfile"
echo "build.sh: building $image"
buildah bud --quiet --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
    --build-arg EXTRAS="$extras" --tag "$image" --file "$work/context/Containerfile" \
    "$work/context" >/dev/null
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
