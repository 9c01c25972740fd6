#!/usr/bin/env bash
# Group-level throughput on a GPU: samples/s and GPU utilisation in image and patch modes,
# float32 and --amp, at the default 1 mm grid (169 x 208 x 179); then checks of the GPU code
# paths: torch.compile, --deterministic twice (identical tables?), evaluation and
# interpretation on the GPU, and the out-of-memory message. About 6 minutes.
#
#   bash benchmarks/gpu.sh [OUT_DIR]     # from the repository root; figures in OUT_DIR/gpu.tsv,
#                                        # checks in OUT_DIR/checks.tsv
#
# Settings (environment): PY (.venv/bin/python), N_SUBJECTS (40), EPOCHS (8), BATCH (8),
# WORKERS (6), RUN_TIMEOUT (110 s per run), DEVICE (cuda; cpu only to try the script),
# CHECKS (1; 0 skips the checks), MODES ("image patch"), EXTRA (more training options, e.g.
# --cache-data; TAG names the variant in gpu.tsv), AMPS ("no yes"). Data already in OUT_DIR
# are reused.
set -euo pipefail

PY=${PY:-.venv/bin/python}
N_SUBJECTS=${N_SUBJECTS:-40}
EPOCHS=${EPOCHS:-8}
BATCH=${BATCH:-8}
WORKERS=${WORKERS:-6}
RUN_TIMEOUT=${RUN_TIMEOUT:-110}
DEVICE=${DEVICE:-cuda}
CHECKS=${CHECKS:-1}
MODES=${MODES:-image patch}
EXTRA=${EXTRA:-}
TAG=${TAG:-}
AMPS=${AMPS:-no yes}
OUT=$(realpath -m "${1:-$(mktemp -d /tmp/neurodl-gpu-XXXXXX)}")
BIDS=$OUT/bids
DERIV=$BIDS/derivatives/neurodl
mkdir -p "$OUT"

command -v nvidia-smi >/dev/null || { echo "gpu.sh: nvidia-smi not found: no NVIDIA GPU here" >&2; exit 69; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if [ -f "$DERIV/dataset_description.json" ]; then
    echo "reusing the data in $BIDS"
else
    echo "generating $N_SUBJECTS participants and extracting them (1 mm) ..."
    "$PY" -m bidsapp_dl.generate.cli "$BIDS" --kind trivial --n-subjects "$N_SUBJECTS" --seed 0 \
        --overwrite -q
    "$PY" run.py "$BIDS" "$DERIV" participant --nprocs "$(nproc)" --skip-bids-validation \
        > "$OUT/participant.log" 2>&1
fi

[ -f "$OUT/gpu.tsv" ] || printf 'mode\tarchitecture\tamp\tsamples_per_s\tepoch_s\ttrain_samples\tgpu_util_mean_pct\tgpu_util_max_pct\tgpu_mem_max_mib\n' \
    > "$OUT/gpu.tsv"

for mode in $MODES; do
    arch=Conv5_FC3
    [ "$mode" = patch ] && arch=Conv4_FC3
    for amp in $AMPS; do
        name=$mode$TAG-amp-$amp
        flags=($EXTRA)
        [ "$amp" = yes ] && flags+=(--amp)
        echo "training $name ..."
        # utilisation sampled every 200 ms while the run lasts; summarised over its epochs only
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
            -lms 200 > "$OUT/$name.smi" &
        smi=$!
        status=0
        timeout "$RUN_TIMEOUT" "$PY" run.py "$BIDS" "$DERIV" group --stages split train \
            --maps-name "$name" --overwrite --task classification --label diagnosis --mode "$mode" \
            --architecture "$arch" --n-splits 1 --validation-size 0.2 --test-size 0 \
            --epochs "$EPOCHS" --batch-size "$BATCH" --num-workers "$WORKERS" --device "$DEVICE" \
            --seed 1 ${flags[@]+"${flags[@]}"} > "$OUT/$name.log" 2>&1 || status=$?
        kill "$smi" 2>/dev/null || true
        wait "$smi" 2>/dev/null || true
        if [ "$status" -ne 0 ]; then
            echo "  $name failed (exit $status), see $OUT/$name.log" >&2
            printf '%s\t%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\n' "$mode" "$arch" "$amp" >> "$OUT/gpu.tsv"
            continue
        fi
        "$PY" - "$DERIV" "$name" "$mode" "$arch" "$amp" "$OUT/$name.smi" "$TAG" >> "$OUT/gpu.tsv" <<'EOF'
import csv, json, re, statistics, sys
from datetime import datetime
from pathlib import Path

from bidsapp_dl.extract.modes import make_extractor

deriv, name, mode, arch, amp, smi, tag = sys.argv[1:]
maps = Path(deriv, "maps", name)
with open(maps / "split-0" / "training_logs" / "training.tsv") as fh:
    epochs = [float(r["time"]) for r in csv.DictReader(fh, delimiter="\t")]
with open(maps / "groups" / "train" / "split-0" / "data.tsv") as fh:
    n_train = sum(1 for _ in csv.DictReader(fh, delimiter="\t"))
shape = tuple(json.loads((maps / "maps.json").read_text())["tensor_shape"])
extractor = make_extractor(mode, **({"patch_size": 50, "stride": 50} if mode == "patch" else {}))
samples = n_train * extractor.n_samples(shape)
epoch = statistics.median(epochs[1:])  # the first epoch warms up (cuDNN autotuning, page cache)

# the window of the measured epochs: from the end of epoch 0 to the end of the last, in the log
ends = []
for log in (Path(deriv) / "logs").glob("group-*.log"):
    text = log.read_text()
    if f"stage split, MAPS {name}\n" not in text:
        continue  # another run's log
    ends = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for line in text.splitlines() if re.search(r": split 0 epoch \d+:", line)]
util, mem = [], []
for row in open(smi):
    parts = [p.strip() for p in row.split(",")]
    if len(parts) != 3 or not parts[1].isdigit():
        continue
    t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
    if len(ends) >= 2 and ends[0] <= t <= ends[-1]:
        util.append(float(parts[1]))
        mem.append(float(parts[2]))
mean = f"{statistics.mean(util):.0f}" if util else "NA"
peak = f"{max(util):.0f}" if util else "NA"
memory = f"{max(mem):.0f}" if mem else "NA"
print(f"{mode}{tag}\t{arch}\t{amp}\t{samples / epoch:.1f}\t{epoch:.3f}\t{samples}\t{mean}\t{peak}\t{memory}")
EOF
        tail -n 1 "$OUT/gpu.tsv"
    done
done

echo
column -t -s $'\t' "$OUT/gpu.tsv" 2>/dev/null || cat "$OUT/gpu.tsv"
echo "figures: $OUT/gpu.tsv"
[ "$CHECKS" = 1 ] || exit 0

# ---- checks: each one a command, its exit status, and what its outputs show ----
printf 'check\tstatus\twall_s\tdetail\n' > "$OUT/checks.tsv"
common=(--task classification --label diagnosis --n-splits 1 --validation-size 0.2 --test-size 0.2
        --batch-size "$BATCH" --num-workers "$WORKERS" --device "$DEVICE" --seed 2 --overwrite)
check() {  # check NAME ARGS...: run one command, record its exit status and wall time
    local name=$1 start status=0
    shift
    echo "check $name ..."
    start=$(date +%s%N)
    timeout "$RUN_TIMEOUT" "$@" > "$OUT/check-$name.log" 2>&1 || status=$?
    printf '%s\t%s\t%s\t' "$name" "$status" "$(( ($(date +%s%N) - start) / 1000000000 ))" >> "$OUT/checks.tsv"
}
note() { printf '%s\n' "$*" | head -n 1 >> "$OUT/checks.tsv"; }

# torch.compile (with --amp): its epoch times, against the --amp run above
check compile "$PY" run.py "$BIDS" "$DERIV" group --stages split train --maps-name compile \
    --mode image --architecture Conv5_FC3 --epochs 4 --amp --compile "${common[@]}"
note "epoch s: $("$PY" -c 'import csv, sys
print(" ".join(r["time"] for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")))' \
    "$DERIV/maps/compile/split-0/training_logs/training.tsv" 2>&1 | tail -n 1)"

# --deterministic twice: training, evaluation and interpretation on the GPU; tables compared
for run in a b; do
    check "deterministic-$run" "$PY" run.py "$BIDS" "$DERIV" group \
        --stages split train evaluate interpret --maps-name "det-$run" --mode image \
        --architecture Conv5_FC3 --epochs 3 --deterministic --amp "${common[@]}"
    note "$(find "$DERIV/maps/det-$run" -name '*.nii.gz' 2>/dev/null | wc -l) saliency maps"
done
printf 'deterministic-identical\tNA\tNA\t' >> "$OUT/checks.tsv"
note "$("$PY" -c '
import sys
from pathlib import Path
a, b = (Path(sys.argv[1], "maps", f"det-{r}") for r in "ab")
files = sorted(p.relative_to(a) for p in a.rglob("*.tsv") if "training_logs" in p.parts
               or p.name.endswith(("_prediction.tsv", "_metrics.tsv")))
def table(path):  # the epoch durations (column time) differ from run to run, by nature
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    drop = rows[0].index("time") if rows and "time" in rows[0] else None
    return [[v for i, v in enumerate(r) if i != drop] for r in rows]
diff = [str(f) for f in files if not (b / f).exists() or table(a / f) != table(b / f)]
print(f"{len(files) - len(diff)}/{len(files)} tables identical (epoch times aside)"
      + (f"; differ: {diff[:4]}" if diff else ""))
' "$DERIV" 2>&1)"

# out of GPU memory: a process allowed a sliver of the card must exit 69 with advice
check oom "$PY" -c '
import runpy, sys, torch
torch.cuda.set_per_process_memory_fraction(0.0003)
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
' "$BIDS" "$DERIV" group --stages split train --maps-name oom --mode image \
    --architecture Conv5_FC3 --epochs 1 "${common[@]}"
note "$(grep -o 'neurodl: error: .*' "$OUT/check-oom.log" | cut -c1-240 || echo 'no message')"

echo
column -t -s $'\t' "$OUT/checks.tsv" 2>/dev/null || cat "$OUT/checks.tsv"
echo "checks: $OUT/checks.tsv"
