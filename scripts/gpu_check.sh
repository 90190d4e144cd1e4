#!/usr/bin/env bash
# The GPU check of issue 10, prepared so that a lent GPU's minutes go to measuring: the notebook's GPU defaults on
# the dev photos (final fit, then its validated model), beside the plain loop at the same size, width, epochs and
# seed; test Dice by the competition's scorer, wall time, peak GPU memory. The cells run through
# scripts/run_cells.py (the GPU image has no papermill), pinned to 2 CPU cores like Colab.
#
#   bash scripts/gpu_check.sh --prepare          # here, once: .gpu/ <- ../shared's photos and tools, torchinfo wheel
#   bash scripts/gpu_check.sh OUT SEED [SEED...] # on the GPU machine (device tool: carry [".gpu"], OUT=$OUT)
#   bash scripts/gpu_check.sh --dry-run OUT      # here, on the CPU: the same steps at toy size (64 px, 1 epoch)
#
# Writes OUT/summary.tsv (one row per run) and OUT/<run>.log. Each seed takes about 5 min on an H100 (2 trainings
# of 60 epochs at 384 px + the plain loop); a seed is skipped when less than GPU_CHECK_SECONDS_PER_SEED (330) are
# left before GPU_CHECK_DEADLINE (seconds since the epoch; default: start + 540, inside one 10-minute call).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIT=$ROOT/.gpu
PY=python3
[[ -x $ROOT/.venv/bin/python ]] && PY=$ROOT/.venv/bin/python

if [[ ${1:-} == --prepare ]]; then
    shared=$ROOT/../shared
    [[ -d $shared/data/persons-vikram && -d $shared/tools ]] || {
        echo "error: $shared/data/persons-vikram or $shared/tools is missing: --prepare copies them from ../shared" >&2
        exit 1; }
    rm -rf "$KIT" && mkdir -p "$KIT/shared/data" "$KIT/whl"
    cp -r "$shared/tools" "$KIT/shared/"
    cp -r "$shared/data/persons-vikram" "$KIT/shared/data/"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$KIT/whl" "torchinfo>=1.8"
    du -sh "$KIT"
    echo "ready: carry [\".gpu\"] and run: bash scripts/gpu_check.sh \$OUT 0 (then \$OUT 1 in a second call)"
    exit 0
fi

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
OUT=${1:?usage: bash scripts/gpu_check.sh OUT SEED [SEED...] | --dry-run OUT | --prepare}
shift
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0)
[[ -d $KIT/shared/tools ]] || { echo "error: $KIT is missing: run 'bash scripts/gpu_check.sh --prepare' here first, then carry .gpu" >&2; exit 1; }
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=${GPU_CHECK_DEADLINE:-$((START + 540))}
PER_SEED=${GPU_CHECK_SECONDS_PER_SEED:-330}
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$KIT/whl  # the notebook installs torchinfo itself: from the carried wheel
export TQDM_MININTERVAL=10 PYTHONUNBUFFERED=1  # progress bars: a line per 10 s in the logs
PIN=()
if command -v taskset > /dev/null && [[ $(nproc) -gt 2 ]]; then PIN=(taskset -c 0,1); fi

WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
DATA=$WORK/real
SIZE=(); PLAIN=(384 60 --base 32)
if [[ $DRY == 1 ]]; then SIZE=(-p IMG_SIZE 64 -p EPOCHS 1 -p BASE_CHANNELS 8); PLAIN=(64 1 --base 8); fi

{
    echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?') dry-run=$DRY"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.is_available())"
    echo "cores used: ${PIN[*]:-all $(nproc)}"
} | tee "$OUT/env.txt"
"$PY" "$KIT/shared/tools/make_dataset.py" "$DATA" > "$OUT/make_dataset.log"

printf 'run\tseed\tdice\tmedian_min\twall_s\tpeak_gpu\n' > "$OUT/summary.tsv"
score() {  # score CSV NAME SEED WALL PEAK: one summary row from the competition's scorer
    local s
    s=$("$PY" "$KIT/shared/tools/score_submission.py" "$1" "$DATA/test_masks" 2>&1) || s="invalid: $s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$(grep -o 'dice=[0-9.]*' <<< "$s" | cut -d= -f2 || echo "$s")" \
        "$(grep -o 'median=[0-9.]* min=[0-9.]*' <<< "$s" || true)" "$4" "$5" | tee -a "$OUT/summary.tsv"
}
timed() {  # timed NAME CMD...: run CMD with its log in OUT/NAME.log; prints the wall seconds
    local name=$1 t0=$SECONDS
    shift
    "$@" > "$OUT/$name.log" 2>&1 || {
        echo "error: $name failed, see $OUT/$name.log" >&2; tail -20 "$OUT/$name.log" >&2; return 1; }
    echo $((SECONDS - t0))
}
nb() {  # nb ARGS...: the notebook's cells with these -p parameters
    "${PIN[@]}" "$PY" scripts/run_cells.py obligatorio.ipynb -p DATA_DIR "$DATA" "${SIZE[@]}" "$@"
}
peak() { grep -o 'peak CUDA memory: [0-9.]* GiB allocated, [0-9.]* GiB reserved' "$OUT/$1.log" | cut -d: -f2 || echo "-"; }

for s in "${SEEDS[@]}"; do
    if (( $(date +%s) + PER_SEED > DEADLINE )); then echo "seed $s skipped: under $PER_SEED s left"; continue; fi
    run=$WORK/run$s
    w=$(timed "nb_final_s$s" nb -p SEED "$s" -p RUN_DIR "$run" -p SUBMISSION_PATH "$WORK/nb$s.csv")
    score "$WORK/nb$s.csv" "notebook_final_fit" "$s" "$w" "$(peak "nb_final_s$s")"
    w=$(timed "nb_validated_s$s" nb -p SEED "$s" -p RUN_DIR "$run" -p FINAL_FIT False \
        -p SUBMISSION_PATH "$WORK/nbval$s.csv")
    score "$WORK/nbval$s.csv" "notebook_validated_model" "$s" "$w" "-"
    w=$(timed "plain_s$s" "${PIN[@]}" "$PY" "$KIT/shared/tools/plain_loop.py" "$DATA" "${PLAIN[@]}" --seed "$s" \
        --out "$WORK/plain$s.csv")
    score "$WORK/plain$s.csv" "plain_loop ${PLAIN[*]}" "$s" "$w" "-"
done
grep -hE "^batch [0-9]+:|min en esta sesión|tamaño completo" "$OUT"/nb_*.log > "$OUT/notebook_lines.txt" || true
echo "done in $(( $(date +%s) - START )) s; $OUT/summary.tsv:"
column -t -s $'\t' "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"
