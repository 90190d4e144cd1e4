#!/usr/bin/env bash
# The GPU record, in one run of at most 10 minutes: the notebook's GPU defaults on the dev photos (final
# fit, then its validated model), beside the plain loop at the same size, width, epochs and seed; test Dice by the
# competition's scorer, wall time, peak GPU memory. The cells run through experiments/run_cells.py (the GPU image
# has no papermill), each run pinned to its own 2 CPU cores like Colab.
#
#   bash experiments/gpu_check.sh --prepare          # here, once: .gpu/ <- ../shared's photos and tools, torchinfo
#   bash experiments/gpu_check.sh OUT SEED [SEED...] # on the GPU machine, with the .gpu/ kit copied beside
#   bash experiments/gpu_check.sh --dry-run OUT SEED [SEED...]  # here, on the CPU: the same steps at toy size
#
# The seeds run side by side: seed k's notebook on cores F+4k and F+4k+1, its plain loop on F+4k+2 and F+4k+3
# (F: FIRST_CORE, default 0; with PLAIN_LOOP=0 the notebooks take F+2k and F+2k+1; when the machine has too few
# cores, unpinned), all on the one GPU. The runs share the GPU: the wall times are an upper bound on a run alone.
# Every command stops at GPU_CHECK_DEADLINE (seconds since the epoch; default: start + 540); an unfinished run's
# row says "timeout". Writes OUT/summary.tsv (one row per run), OUT/env.txt, OUT/notebook_lines.txt and
# OUT/logs.tgz (every log).
# The notebooks train with AMP "fp16", the T4's dtype (on an H100 the notebook's own choice would be bf16), so that
# the figures speak for the T4s users train on; NB_PARAMS="AMP True" gives the GPU's own choice back.
# NB_PARAMS="NAME VALUE ..." adds notebook parameters to every notebook run (e.g. NB_PARAMS="DEPTH 5").
# PLAIN_LOOP=0 skips the plain loop when its rows for these seeds, size, width and epochs are already recorded.
set -euo pipefail
source "$(dirname "$0")/gpu_common.sh"  # ROOT (the working folder), KIT, PY, require_kit, machine_lines, can_pin

if [[ ${1:-} == --prepare ]]; then
    shared=$ROOT/../shared
    [[ -d $shared/data/persons-vikram && -d $shared/tools ]] || {
        echo "error: $shared/data/persons-vikram or $shared/tools is missing: --prepare copies them from ../shared" >&2
        exit 1; }
    rm -rf "$KIT" && mkdir -p "$KIT/shared/data" "$KIT/whl"
    cp -r "$shared/tools" "$KIT/shared/"
    cp -r "$shared/data/persons-vikram" "$KIT/shared/data/"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$KIT/whl" "torchinfo>=1.8"
    # Stored GPU selection runs (experiments/results/gpu_*.json): gpu_select.sh PAIR_WITH=NAME pairs new runs
    # with them on the device, so its summary already holds the paired gains.
    mkdir -p "$KIT/ref"
    cp "$ROOT"/experiments/results/gpu_*_s*.json "$KIT/ref/" 2> /dev/null || true
    echo "reference runs in $KIT/ref: $(ls "$KIT/ref" | sed 's/_s[0-9]*\.json$//' | sort | uniq -c | xargs || true)"
    du -sh "$KIT"
    echo "ready: copy .gpu/ with the repository to the GPU machine and run there: bash experiments/gpu_check.sh \$OUT 0 1"
    exit 0
fi

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
OUT=${1:?usage: bash experiments/gpu_check.sh OUT SEED [SEED...] | --dry-run OUT SEED [SEED...] | --prepare}
shift
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0)
read -ra NB_EXTRA <<< "${NB_PARAMS:-}"
if (( ${#NB_EXTRA[@]} % 2 )) || [[ ${#NB_EXTRA[@]} -gt 0 && ! " ${NB_EXTRA[*]} " =~ ^(\ [A-Z_]+\ [^ ]+)+\ $ ]]; then
    echo "error: NB_PARAMS='${NB_PARAMS:-}' is not NAME VALUE pairs (notebook parameters, e.g. NB_PARAMS=\"DEPTH 5\")" >&2
    exit 1
fi
NB_P=(-p AMP fp16)  # the T4's dtype; a later -p AMP (from NB_PARAMS) wins
for ((i = 0; i < ${#NB_EXTRA[@]}; i += 2)); do NB_P+=(-p "${NB_EXTRA[i]}" "${NB_EXTRA[i + 1]}"); done
PLAIN_ON=${PLAIN_LOOP:-1}
require_kit
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=${GPU_CHECK_DEADLINE:-$((START + 540))}
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$KIT/whl  # torchinfo from the kit's wheel
export TQDM_MININTERVAL=10 PYTHONUNBUFFERED=1  # progress bars: a line per 10 s in the logs
NCORES=$(nproc)
FIRST=${FIRST_CORE:-0}  # the first core this call pins (another job may take the ones before)
STRIDE=$([[ $PLAIN_ON == 0 ]] && echo 2 || echo 4)  # cores per seed: the notebook's 2, and the plain loop's 2
PINNED=0
if can_pin $((FIRST + STRIDE * ${#SEEDS[@]})); then PINNED=1; fi

WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
DATA=$WORK/real
SIZE=(); PLAIN=(384 60 --base 32)
if [[ $DRY == 1 ]]; then SIZE=(-p IMG_SIZE 64 -p EPOCHS 1 -p BASE_CHANNELS 8); PLAIN=(64 1 --base 8); fi

{
    echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?') dry-run=$DRY seeds=${SEEDS[*]}"
    echo "# notebook parameters added: ${NB_P[*]:-none}; plain loop: $([[ $PLAIN_ON == 0 ]] && echo off || echo on)"
    machine_lines
    if [[ $PINNED == 1 ]]; then echo "cores: 2 per run (taskset), ${#SEEDS[@]} seeds side by side on cores" \
        "$FIRST-$((FIRST + STRIDE * ${#SEEDS[@]} - 1)) of $NCORES"
    else echo "cores: unpinned ($NCORES for ${#SEEDS[@]} seeds side by side)"; fi
} | tee "$OUT/env.txt"
"$PY" "$KIT/shared/tools/make_dataset.py" "$DATA" > "$LOGS/make_dataset.log"
# Installed once here: the notebooks, started together, would otherwise run pip at the same time.
"$PY" -c "import torchinfo" 2> /dev/null || "$PY" -m pip install --quiet --no-deps torchinfo >> "$LOGS/pip.log" 2>&1

printf 'run\tseed\tdice\tmedian_min\twall_s\tpeak_gpu\n' > "$OUT/summary.tsv"
score() {  # score CSV NAME SEED WALL PEAK: one summary row from the competition's scorer
    local s
    s=$("$PY" "$KIT/shared/tools/score_submission.py" "$1" "$DATA/test_masks" 2>&1) || s="invalid: $s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$(grep -o 'dice=[0-9.]*' <<< "$s" | cut -d= -f2 || echo "$s")" \
        "$(grep -o 'median=[0-9.]* min=[0-9.]*' <<< "$s" || true)" "$4" "$5" >> "$OUT/summary.tsv"
}
timed() {  # timed NAME CMD...: CMD with its log in LOGS/NAME.log, stopped at the deadline; prints the wall seconds
    local name=$1 t0=$SECONDS left=$((DEADLINE - $(date +%s))) rc=0
    shift
    (( left > 0 )) || { echo "timeout"; return 1; }
    timeout "$left" "$@" > "$LOGS/$name.log" 2>&1 || rc=$?
    if (( rc == 124 )); then echo "timeout"; return 1; fi
    if (( rc != 0 )); then echo "failed"; tail -20 "$LOGS/$name.log" >&2; return 1; fi
    echo $((SECONDS - t0))
}
peak() { grep -o 'peak CUDA memory: [0-9.]* GiB allocated, [0-9.]* GiB reserved' "$LOGS/$1.log" | cut -d: -f2 || echo "-"; }
cores() {  # cores FIRST: the taskset prefix for cores FIRST and FIRST+1 when pinning, else nothing
    [[ $PINNED == 1 ]] && echo "taskset -c $1,$(($1 + 1))" || true
}

scored() {  # scored ROW SEED LOG CSV PEAK CMD...: CMD timed; its CSV's summary row, or the row of an unfinished run
    local row=$1 s=$2 log=$3 csv=$4 want_peak=$5 w
    shift 5
    if ! w=$(timed "$log" "$@"); then
        printf '%s\t%s\t%s\t-\t-\t-\n' "$row" "$s" "$w" >> "$OUT/summary.tsv"; return 1
    fi
    score "$csv" "$row" "$s" "$w" "$([[ $want_peak == 1 ]] && peak "$log" || echo "-")"
}

notebook_chain() {  # notebook_chain SEED CORE: final fit, then the validated model from the same RUN_DIR
    local s=$1 pc nb
    read -ra pc <<< "$(cores "$2")"
    nb=("${pc[@]}" "$PY" experiments/run_cells.py obligatorio.ipynb -p DATA_DIR "$DATA" "${SIZE[@]}" "${NB_P[@]}"
        -p SEED "$s" -p RUN_DIR "$WORK/run$s")
    scored notebook_final_fit "$s" "nb_final_s$s" "$WORK/nb$s.csv" 1 \
        "${nb[@]}" -p SUBMISSION_PATH "$WORK/nb$s.csv" || return 0
    scored notebook_validated_model "$s" "nb_validated_s$s" "$WORK/nbval$s.csv" 0 \
        "${nb[@]}" -p FINAL_FIT False -p SUBMISSION_PATH "$WORK/nbval$s.csv" || true
}
plain_chain() {  # plain_chain SEED CORE: the plain loop at the same size, width, epochs and seed
    local s=$1 pc
    read -ra pc <<< "$(cores "$2")"
    scored "plain_loop ${PLAIN[*]}" "$s" "plain_s$s" "$WORK/plain$s.csv" 0 \
        "${pc[@]}" "$PY" "$KIT/shared/tools/plain_loop.py" "$DATA" "${PLAIN[@]}" --seed "$s" --out "$WORK/plain$s.csv" \
        || true
}

k=0
for s in "${SEEDS[@]}"; do
    notebook_chain "$s" $((FIRST + STRIDE * k)) &
    [[ $PLAIN_ON == 0 ]] || plain_chain "$s" $((FIRST + STRIDE * k + 2)) &
    k=$((k + 1))
done
wait
shopt -s nullglob  # no notebook log when the deadline came before any run started
for f in "$LOGS"/nb_*.log; do  # each run's batch, validation Dice, times and GPU memory, without progress bars
    echo "== $(basename "$f" .log)"
    grep -E "^batch [0-9]+:|mejor Dice de validación|min en esta sesión|modelo final|peak CUDA" "$f" | grep -v "it/s" || true
done > "$OUT/notebook_lines.txt"
tar -czf "$OUT/logs.tgz" -C "$WORK" logs
echo "done in $(( $(date +%s) - START )) s; $OUT/summary.tsv:"
column -t -s $'\t' "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"
