#!/usr/bin/env bash
# Build the image with the CPU torch and run it as the BIDS Apps CI does: read-only, offline,
# non-root, data mounted read-only; participant level one label per run, then the group level.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-neurodl:ci}
VENV=${VENV:-.venv}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if ! command -v podman >/dev/null 2>&1; then
    echo "== installing podman"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
if [ ! -f /etc/containers/containers.conf ] || ! grep -q 'runtime = "runc"' /etc/containers/containers.conf; then
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n[engine]\nruntime = "runc"\n' \
        > /etc/containers/containers.conf
fi

BASE=docker.io/library/debian:bookworm-slim
if ! podman image exists "$BASE"; then
    echo "== making the base image from Debian packages (kept for later runs)"
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
    MIRROR=${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)}
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >/dev/null
    tar -C "$WORK/rootfs" -c . | podman import - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

echo "== building $IMAGE"
start=$(date +%s)
mounts=()
build_env=()
if [ -n "${PIP_CERT:-}" ]; then
    mounts+=(-v "$PIP_CERT:/run/host-ca.pem:ro"); build_env+=(--env PIP_CERT=/run/host-ca.pem)
fi
if [ -n "${PIP_FIND_LINKS:-}" ] && [ -d "${PIP_FIND_LINKS}" ]; then
    mounts+=(-v "$PIP_FIND_LINKS:/run/host-wheels:ro"); build_env+=(--env PIP_FIND_LINKS=/run/host-wheels)
fi
podman build --pull=never --network host "${mounts[@]}" "${build_env[@]}" \
    --build-arg TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; exit 1; }
echo "   built in $(( $(date +%s) - start )) s; $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

run() {
    podman run --rm --read-only --network none --user 1000:1000 \
        -v "$WORK/data:/data:ro" -v "$WORK/out:/out" "$IMAGE" "$@"
}

echo "== data"
"$VENV/bin/neurodl-generate" "$WORK/data" --kind trivial --n-subjects 8 --sessions 1 --seed 7 --voxel-size 6 -q
chmod -R a+rX "$WORK/data"
mkdir -p "$WORK/out" && chmod 777 "$WORK/out"

echo "== --version"
run --version | grep "^neurodl "
SMALL=(--voxel-size 8 --target-shape 24 28 24)

echo "== participant level, one label per run"
run /data /out participant --participant-label 01 "${SMALL[@]}"
run /data /out participant --participant-label sub-02 "${SMALL[@]}"
run /data /out participant --participant-label 03 04 05 06 07 08 "${SMALL[@]}" --nprocs 2

echo "== group level"
run /data /out group --task classification --maps-name ci --n-splits 2 --test-size 2 \
    --epochs 2 --batch-size 2 --seed 1 --architecture Conv4_FC3

echo "== checks"
test "$(find "$WORK/out" -name '*_desc-tensor_T1w.npy' | wc -l)" -eq 8
for f in maps.json environment.json summary.tsv groups/test/data.tsv report.html \
         split-0/best-loss/model.pt split-1/best-loss/test/test_image_level_metrics.tsv; do
    test -s "$WORK/out/maps/ci/$f" || { echo "missing maps/ci/$f"; exit 1; }
done
grep -q '"container"' "$WORK/out/maps/ci/environment.json"
test "$(find "$WORK/out/qc" -name '*_desc-tensor_T1w.png' | wc -l)" -eq 8
grep -q 'Learning curves' "$WORK/out/maps/ci/report.html"
grep -q 'sub-08_desc-tensor_T1w.png' "$WORK/out/qc.html"
"$VENV/bin/bids-validator-deno" "$WORK/out" --format json > "$WORK/validation.json" || true
"$VENV/bin/python" - "$WORK/validation.json" <<'PY'
import json, sys
issues = json.load(open(sys.argv[1]))["issues"]["issues"]
errors = [f"{i['code']} {i.get('location', '')}" for i in issues if i["severity"] == "error"]
assert not errors, errors
print("   derivative valid (bids-validator-deno: 0 errors)")
PY
echo "container test: 1 passed, 0 failed"
