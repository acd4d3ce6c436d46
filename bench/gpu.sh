#!/usr/bin/env bash
# Every figure that bench/RESULTS.md's "GPU (owed)" section owes, in ONE call on a fresh GPU machine.
#
#     bash bench/gpu.sh               # on the lent H200 (the device call is in bench/RESULTS.md)
#     bash bench/gpu.sh --cpu-check   # here: the very same steps, tiny models and counts, on the CPU
#
# Steps, in order of what matters most, each under a time limit cut to what is left of the budget
# (GPU_BENCH_BUDGET_S: 480 s on the GPU, so a 540 s device call ends in time):
#   probe            python, packages, GPU, a measured bf16 matmul ceiling       (bench/gpu_report.py)
#   build-sd15       SD-1.5 architecture, random weights, saved as a local folder (bench/build_random.py)
#   bench-sd15       bare vs pipeline img/s, ratio, TFLOP/image, TFLOP/s, limit   (bench/pipeline_vs_bare.py)
#   build-sdxl       SDXL architecture, random weights
#   bench-sdxl       as bench-sd15, 1024 px
#   invariance-sd15  a row alone vs in a batch, bf16: max pixel difference /255  (bench/batch_invariance.py)
#   invariance-sdxl
#   summary          $OUT/summary.json, every figure and each step's status     (bench/gpu_report.py)
# A step that runs out of time is killed; pipeline_vs_bare writes its JSON after each phase, so
# what it measured before stays. A failed step does not stop the ones after it.
#
# $OUT (the device tool's folder; a new temp folder when unset) gets at most 6 files (the limit is 8):
#   summary.json  gpu.log  sd15.json  sdxl.json  invariance-sd15.json  invariance-sdxl.json
#
# Packages: the device's python3 (3.12, torch 2.11, transformers) lacks diffusers, open_clip, c2pa,
# polars and Ray. bench/gpu_wheels.sh packs all but Ray into .whl/site.tar.xz (carry `.whl`);
# this script unpacks it when present. Ray cannot travel (too large): without it the pipeline
# runs with --backend in-process, and the summary says so (backend, backend_reason).
#
# Settings (env): OUT, PY (python), BACKEND (ray | in-process), GPU_BENCH_BUDGET_S,
# SD15_MODEL / SDXL_MODEL (a model spec instead of building one, e.g. embedded:tiny-sd),
# SD15_IMAGES / SDXL_IMAGES (candidates per pipeline and bare run), GPU_BENCH_WORK (scratch).
set -uo pipefail

MODE=gpu
case "${1:-}" in
    --cpu-check|--dry) MODE=cpu ;;
    "") ;;
    *) echo "usage: bash bench/gpu.sh [--cpu-check]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$(mktemp -d /tmp/gpu-bench-out-XXXXXX)}
WORK=${GPU_BENCH_WORK:-$(mktemp -d /tmp/gpu-bench-work-XXXXXX)}
mkdir -p "$OUT" "$WORK/models"
LOG=$OUT/gpu.log
: > "$WORK/steps.tsv"
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

say() { echo "$*" | tee -a "$LOG"; }

if [ "$MODE" = gpu ]; then
    PY=${PY:-python3}
    BUDGET=${GPU_BENCH_BUDGET_S:-480}
    TINY=""
    COMMON=(--device cuda --dtype bfloat16)
    PEAK=989   # H100/H200 dense bf16 by the datasheet; the probe also measures a matmul ceiling
    SD15=(--width 512 --height 512 --steps 25 --guidance 7.5 --batch-size 16 --images "${SD15_IMAGES:-160}")
    SDXL=(--width 1024 --height 1024 --steps 30 --guidance 5 --batch-size 8 --images "${SDXL_IMAGES:-32}")
    INV_SD15=(--width 512 --height 512 --steps 25 --guidance 7.5 --batch-size 16)
    INV_SDXL=(--width 1024 --height 1024 --steps 30 --guidance 5 --batch-size 8)
    CAPS=(probe=90 build-sd15=120 bench-sd15=170 build-sdxl=150 bench-sdxl=230 invariance-sd15=60 invariance-sdxl=90)
else
    PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
    BUDGET=${GPU_BENCH_BUDGET_S:-1200}
    TINY="--tiny"
    COMMON=(--device cpu --dtype bfloat16)   # the GPU run's dtype: a bf16-only failure shows here
    PEAK=1     # a nominal figure: it only exercises the limit arithmetic
    SD15=(--width 64 --height 64 --steps 2 --guidance 7.5 --batch-size 2 --images "${SD15_IMAGES:-6}")
    SDXL=(--width 64 --height 64 --steps 2 --guidance 5 --batch-size 2 --images "${SDXL_IMAGES:-6}")
    INV_SD15=(--width 64 --height 64 --steps 2 --guidance 7.5 --batch-size 3)
    INV_SDXL=(--width 64 --height 64 --steps 2 --guidance 5 --batch-size 3)
    CAPS=(probe=120 build-sd15=120 bench-sd15=300 build-sdxl=120 bench-sdxl=300 invariance-sd15=120
          invariance-sdxl=120)
fi
DEADLINE=$((START + BUDGET))
RESERVE=20   # kept back for the summary

cap() { local kv; for kv in "${CAPS[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

# step NAME COMMAND…: run under min(its cap, what is left of the budget); log; record its status.
step() {
    local name=$1; shift
    local left=$((DEADLINE - RESERVE - $(date +%s))) limit
    limit=$(cap "$name")
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        say "=== $name: skipped, ${left}s of the budget left"
        printf '%s\tskipped\t0\t%s\t-1\n' "$name" "$limit" >> "$WORK/steps.tsv"
        return 1
    fi
    say "=== $name (limit ${limit}s, $(( $(date +%s) - START ))s in) $(date -u +%H:%M:%S)"
    echo "+ $*" >> "$LOG"
    local t0 rc status
    t0=$(date +%s)
    timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$LOG" > "$WORK/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$limit" "$rc" >> "$WORK/steps.tsv"
    say "=== $name: $status (rc $rc) in $(( $(date +%s) - t0 ))s"
    if [ "$status" != ok ]; then
        echo "--- last lines of $name:"; tail -n 30 "$WORK/$name.log"; echo "---"
    fi
    [ "$status" = ok ]
}

say "bench/gpu.sh --mode $MODE, budget ${BUDGET}s, OUT=$OUT, WORK=$WORK, $(date -u '+%F %T') UTC"
command -v nvidia-smi >/dev/null && nvidia-smi >> "$LOG" 2>&1

# Packages that do not exist on the device machine travel as one tarball (bench/gpu_wheels.sh).
PYTHONPATH=$ROOT
SITE_TAR=${SITE_TAR:-.whl/site.tar.xz}
if [ -f "$SITE_TAR" ] && [ "${NO_SITE:-0}" != 1 ]; then
    if "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
            "$SITE_TAR" "$WORK/site" >> "$LOG" 2>&1; then
        PYTHONPATH=$WORK/site:$ROOT
        say "packages from $SITE_TAR: $(tr '\n' ' ' < "$WORK/site/ASSET_PIPELINE_WHEELS.txt")"
    else
        say "could not unpack $SITE_TAR: going on with what the machine has"
    fi
else
    say "no $SITE_TAR: using the packages $PY has"
fi
# The CPU check hides Ray as the device machine lacks it, so that the backend below is chosen as
# there and no stray `import ray` can hide here (BACKEND=ray checks the Ray backend instead).
if [ "$MODE" = cpu ] && [ "${BACKEND:-}" != ray ]; then
    mkdir -p "$WORK/no-ray/ray"
    echo 'raise ImportError("ray is hidden by bench/gpu.sh --cpu-check: the device machine has none")' \
        > "$WORK/no-ray/ray/__init__.py"
    PYTHONPATH=$WORK/no-ray:$PYTHONPATH
    say "cpu-check: Ray hidden (as on the device machine)"
fi
export PYTHONPATH

if [ -n "${BACKEND:-}" ]; then
    REASON="set by BACKEND=$BACKEND"
elif "$PY" -c "import ray" >/dev/null 2>&1; then
    BACKEND=ray
    REASON="ray importable"
else
    BACKEND=in-process
    REASON="Ray is not installed on the device machine and its wheel (79 MB for cp312) cannot travel within the \
64 MiB a call carries: the same stages run one after the other in one process, so encode/sign/write/verify are \
not overlapped with generation as Ray's writer actors overlap them on a GPU node (the ratio is a lower bound)"
fi
say "backend: $BACKEND ($REASON)"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PY" -c '
import json, sys
mode, started, budget, commit, backend, reason, peak = sys.argv[2:]
json.dump({"mode": mode, "started": int(started), "budget_s": int(budget), "commit": commit, "backend": backend,
           "backend_reason": reason, "peak_tflops": float(peak)}, open(sys.argv[1], "w"))
' "$WORK/meta.json" "$MODE" "$START" "$BUDGET" "$COMMIT" "$BACKEND" "$REASON" "$PEAK"

step probe "$PY" bench/gpu_report.py probe "$WORK/env.json"

BENCH=(--backend "$BACKEND" --peak-tflops "$PEAK" "${COMMON[@]}")
for arch in sd15 sdxl; do
    var=${arch^^}_MODEL
    model=${!var:-}
    if [ -z "$model" ]; then
        model=$WORK/models/$arch-random
        step "build-$arch" "$PY" bench/build_random.py "$arch" "$model" $TINY || { rm -rf "$model"; continue; }
    fi
    if [ "$arch" = sd15 ]; then settings=("${SD15[@]}"); else settings=("${SDXL[@]}"); fi
    step "bench-$arch" "$PY" bench/pipeline_vs_bare.py --model "$model" "${settings[@]}" "${BENCH[@]}" \
        --json "$OUT/$arch.json"
    echo "$model" > "$WORK/model-$arch"
done
for arch in sd15 sdxl; do
    [ -f "$WORK/model-$arch" ] || continue
    if [ "$arch" = sd15 ]; then settings=("${INV_SD15[@]}"); else settings=("${INV_SDXL[@]}"); fi
    step "invariance-$arch" "$PY" bench/batch_invariance.py --model "$(cat "$WORK/model-$arch")" "${settings[@]}" \
        "${COMMON[@]}" --json "$OUT/invariance-$arch.json"
done

say "=== summary ($(( $(date +%s) - START ))s in)"
"$PY" bench/gpu_report.py summary "$OUT" "$WORK" 2>&1 | tee -a "$LOG"
[ -f "$OUT/summary.json" ] || echo '{"bench": "gpu", "error": "the summary step failed: see gpu.log"}' > "$OUT/summary.json"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,temperature.gpu --format=csv >> "$LOG" 2>&1
say "done in $(( $(date +%s) - START ))s; \$OUT holds $(find "$OUT" -type f | wc -l) files: $(cd "$OUT" && ls | tr '\n' ' ')"
failed=$(grep -vc $'\tok\t' "$WORK/steps.tsv")
[ "$MODE" = cpu ] && [ -z "${GPU_BENCH_WORK:-}" ] && rm -rf "$WORK"
[ "$failed" = 0 ]   # exit 1 when a step failed, timed out or was skipped; $OUT is written either way
