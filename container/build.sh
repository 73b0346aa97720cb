#!/usr/bin/env bash
# Builds DepthID's image from the Bento, as `make image` (cpu) and `make image-gpu` (gpu) run it:
#
#   container/build.sh cpu|gpu IMAGE
#
# Both variants build container/Containerfile on the Bento's src, from BASE_IMAGE; where
# BASE_IMAGE cannot be pulled, from the Debian base container/debian_base.sh makes (DEBIAN_BASE,
# cached in IMAGE_CACHE). cpu: stages `image`, then `smoke`; gpu: `gpu-image` (torch's CUDA
# build, onnxruntime-gpu), then `gpu-smoke`. The smoke stage (container/smoke.py) must pass
# before IMAGE is tagged. Both pass the building machine's pip settings into the build's install
# steps only (container/pip_settings.py). Settings, from the environment (the Makefile sets them):
# ENGINE (podman|docker), PYTHON (the venv's), BASE_IMAGE, DEBIAN_BASE, IMAGE_CACHE.
set -euo pipefail
variant=${1:?cpu or gpu} image=${2:?image name:tag}
cd "$(dirname "$0")/.."
case $variant in
# The stages of container/Containerfile: the smoke stage to pass, the image to tag.
cpu) smoke_target=smoke image_target=image ;;
gpu) smoke_target=gpu-smoke image_target=gpu-image ;;
*)
    echo "image: unknown variant $variant (cpu or gpu)" >&2
    exit 2
    ;;
esac
: "${ENGINE:=podman}" "${PYTHON:=.venv/bin/python}" "${IMAGE_CACHE:=$HOME/.cache/depthid}"
: "${BASE_IMAGE:=docker.io/library/python:3.11-slim-bookworm}"
: "${DEBIAN_BASE:=localhost/depthid-base:bookworm}"
bentoml=$(dirname "$PYTHON")/bentoml
started=$SECONDS
say() { echo "image: [$((SECONDS - started)) s] $*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/depthid-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --force-rm: a failed stage's working containers go too (podman keeps them otherwise, each
# holding its layers on disk). podman's default (OCI) isolation needs cgroups and rlimits a CI
# container may not grant; chroot isolation builds RUN steps without them.
engine_build=("$ENGINE" build --force-rm)
[ "$ENGINE" = podman ] && engine_build+=(--isolation chroot)

say "bentoml build (bentofile.yaml: what goes into the image)"
tag=$(BENTOML_DO_NOT_TRACK=true "$bentoml" build --output tag | sed -n 's/^__tag__://p')
bento=$(BENTOML_DO_NOT_TRACK=true "$bentoml" get "$tag" -o path)
say "bento $tag at $bento"

# (In a variable first: a failure there stops the script, which `< <(...)` would not.)
pip_out=$("$PYTHON" container/pip_settings.py "$work/pip" --engine "$ENGINE")
mapfile -t pip_args <<<"$pip_out"
say "pip settings passed to the build: ${pip_args[*]}"

base=$BASE_IMAGE
if ! "$ENGINE" image inspect "$base" >/dev/null 2>&1 &&
    ! timeout 120 "$ENGINE" pull -q "$base" >/dev/null 2>&1; then
    say "$base cannot be pulled here: building on $DEBIAN_BASE from Debian packages"
    container/debian_base.sh "$ENGINE" "$DEBIAN_BASE" "$IMAGE_CACHE"
    base=$DEBIAN_BASE
fi
# The build context: the Bento's files and the build's two scripts, nothing else.
mkdir "$work/context"
cp -a "$bento/src" "$work/context/src"
cp container/install_packages.py container/smoke.py "$work/context/"
build=("${engine_build[@]}" -f container/Containerfile --build-arg "BASE_IMAGE=$base"
    "${pip_args[@]}")
smoke_image=localhost/depthid-smoke:$$
say "building $image_target on $base, then $smoke_target (the server answering all four models)"
"${build[@]}" --target "$smoke_target" -t "$smoke_image" "$work/context"
# Every stage up to the image's is cached by now: this only tags it.
previous=$("$ENGINE" image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)
"${build[@]}" --target "$image_target" -t "$image" "$work/context" >/dev/null
"$ENGINE" rmi "$smoke_image" >/dev/null
# The image this one replaces (an older code layer), so rebuilds do not fill the disk; its
# layers that the new image shares stay.
if [ -n "$previous" ] && [ "$previous" != "$("$ENGINE" image inspect "$image" --format '{{.Id}}')" ]; then
    "$ENGINE" rmi "$previous" >/dev/null 2>&1 || true
fi

size=$("$ENGINE" image inspect "$image" --format '{{.Size}}')
say "built $image: $((size / 1000000)) MB"
