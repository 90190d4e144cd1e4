#!/usr/bin/env bash
# What only a GPU shows, in one run of at most 10 minutes: four notebook runs on the dev photos side by side,
# each on its own 2 CPU cores (like Colab), all on the one GPU, all in fp16 (the T4's dtype).
#
#   plan      the GPU defaults with TIME_BUDGET_MIN=7: the plan a budget makes (seconds per batch, so images/s; the
#             epochs), the planned and real minutes, the test Dice (summary.json)
#   ddp2      DEVICES=2 with DDP_BACKEND=gloo: two training processes sharing the one GPU, through the pre-flight,
#             SyncBatchNorm, DDP device_ids and the model sent by cloudpickle; 12 epochs, no final fit
#   one       the same with DEVICES=1, to compare with ddp2
#   ladder    section 6.5's experiments at the GPU defaults (EXPERIMENT_MIN=5), a 4-epoch main training
#
#   bash experiments/gpu_check.sh --prepare          # here, once: the .gpu/ kit (photos, tools, torchinfo)
#   bash experiments/gpu_record.sh OUT               # on the GPU machine, with the .gpu/ kit copied beside
#   bash experiments/gpu_record.sh --dry-run OUT     # here, on the CPU: the same runs at toy size
#
# The runs share the GPU, so their times are upper bounds on a run alone. Every run stops at GPU_RECORD_DEADLINE
# (seconds since the epoch; default start + 540). Writes OUT/summary.tsv (run, test Dice, wall seconds, peak GPU
# memory), OUT/results.tgz (each run's summary.json, plan.json, experiments.csv) and OUT/logs.tgz.
set -euo pipefail
source "$(dirname "$0")/gpu_common.sh"  # ROOT (the working folder), KIT, PY, require_kit, machine_lines, can_pin

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
OUT=${1:?usage: bash experiments/gpu_record.sh [--dry-run] OUT}
require_kit
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=${GPU_RECORD_DEADLINE:-$((START + 540))}
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$KIT/whl TQDM_MININTERVAL=10 PYTHONUNBUFFERED=1
WORK=$(mktemp -d /tmp/gpu_record.XXXXXX)
mkdir -p "$WORK/logs" "$WORK/results"
DATA=$WORK/real
"$PY" "$KIT/shared/tools/make_dataset.py" "$DATA" > "$WORK/logs/make_dataset.log"
"$PY" -c "import torchinfo" 2> /dev/null || "$PY" -m pip install --quiet --no-deps torchinfo >> "$WORK/logs/pip.log" 2>&1

SIZE=(-p AMP fp16) BUDGET=7 EPOCHS=12 LADDER=5
if [[ $DRY == 1 ]]; then SIZE=(-p IMG_SIZE 32 -p BASE_CHANNELS 4) BUDGET=0.3 EPOCHS=2 LADDER=0.3; fi
declare -A RUNS=(
    [plan]="-p TIME_BUDGET_MIN $BUDGET -p EXPERIMENTS False"
    [ddp2]="-p DEVICES 2 -p DDP_BACKEND gloo -p EPOCHS $EPOCHS -p FINAL_FIT False -p EXPERIMENTS False"
    [one]="-p DEVICES 1 -p EPOCHS $EPOCHS -p FINAL_FIT False -p EXPERIMENTS False"
    [ladder]="-p EXPERIMENTS True -p EXPERIMENT_MIN $LADDER -p EPOCHS 4 -p FINAL_FIT False"
)
ORDER=(plan ddp2 one ladder)
PINNED=0
if can_pin $((2 * ${#ORDER[@]} + 2)); then PINNED=1; fi  # ddp2 takes 4 cores
{
    echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?') dry-run=$DRY"
    machine_lines
    echo "cores: $([[ $PINNED == 1 ]] && echo '2 per run (taskset), 4 for ddp2' || echo unpinned)"
} | tee "$OUT/env.txt"

printf 'run\tdice\tmedian_min\twall_s\tpeak_gpu\n' > "$OUT/summary.tsv"
one_run() {  # one_run NAME FIRST_CORE NCORES
    local name=$1 pin=() t0=$SECONDS left rc=0 s wall
    read -ra params <<< "${RUNS[$name]}"
    if [[ $PINNED == 1 ]]; then pin=(taskset -c "$2-$(($2 + $3 - 1))"); fi
    left=$((DEADLINE - $(date +%s)))
    timeout "$left" "${pin[@]}" "$PY" experiments/run_cells.py obligatorio.ipynb -p DATA_DIR "$DATA" "${SIZE[@]}" \
        "${params[@]}" -p SEED 0 -p RUN_DIR "$WORK/run_$name" -p SUBMISSION_PATH "$WORK/$name.csv" \
        > "$WORK/logs/$name.log" 2>&1 || rc=$?
    wall=$((SECONDS - t0))
    if (( rc != 0 )); then
        printf '%s\t%s\t-\t%s\t-\n' "$name" "$([[ $rc == 124 ]] && echo timeout || echo "failed ($rc)")" "$wall" \
            >> "$OUT/summary.tsv"
        return 0
    fi
    s=$("$PY" "$KIT/shared/tools/score_submission.py" "$WORK/$name.csv" "$DATA/test_masks" 2>&1) || s="invalid"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$(grep -o 'dice=[0-9.]*' <<< "$s" | cut -d= -f2 || echo "$s")" \
        "$(grep -o 'median=[0-9.]* min=[0-9.]*' <<< "$s" || true)" "$wall" \
        "$(grep -o 'peak CUDA memory: [0-9.]* GiB allocated' "$WORK/logs/$name.log" | cut -d: -f2 || echo -)" \
        >> "$OUT/summary.tsv"
    mkdir -p "$WORK/results/$name"
    find "$WORK/run_$name" -maxdepth 2 \( -name summary.json -o -name plan.json -o -name experiments.csv \) \
        -exec cp --parents {} "$WORK/results/$name" \; 2> /dev/null || true
}
one_run plan 0 2 &
one_run ddp2 2 4 &
one_run one 6 2 &
one_run ladder 8 2 &
wait
tar -czf "$OUT/results.tgz" -C "$WORK" results
tar -czf "$OUT/logs.tgz" -C "$WORK" logs
echo "done in $(( $(date +%s) - START )) s; $OUT/summary.tsv:"
column -t -s $'\t' "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"
