#!/usr/bin/env bash
# GPU settings compared on validation over several seeds, in one run of at most 10 minutes. Each
# (configuration, seed) is one experiments/selection.py run: the notebook's stratified split of the TRAINING photos,
# training at 384 px / base 32 / 60 epochs (AMP on the GPU) plus the configuration's own settings, full-size
# validation Dice. Test answers are never read. All runs go side by side on the one GPU, each pinned to 2 cores.
#
#   bash experiments/gpu_check.sh --prepare                          # here, once: the .gpu/ kit
#   bash experiments/gpu_select.sh OUT [NAME:KEY=VALUE,KEY=VALUE ...] # on the GPU machine, with the .gpu/ kit copied beside
#   bash experiments/gpu_select.sh --dry-run OUT [...]               # here, on the CPU: the same steps at toy size
#
# Without configurations it compares the U-Net's depth at 384 px, gpu_d4:DEPTH=4 (the paper's four levels) against
# gpu_d5:DEPTH=5 (twice the receptive field), the open question of docs/experiments.md. SEEDS (default "0 1 2") sets
# the seeds; the first configuration is the reference of the paired gains. Every run stops at GPU_SELECT_DEADLINE
# (seconds since the epoch; default: start + 560); an unfinished run leaves no result.
# PAIR_WITH=NAME pairs every configuration with NAME's stored runs instead of the first configuration: their JSON
# files, copied into the kit's ref/ folder by --prepare from experiments/results/ (gpu_* runs), must cover SEEDS;
# then all the call's runs go to candidates.
# Writes OUT/summary.txt (the table and the paired gains), OUT/results.tgz (the runs' JSON files, for
# `selection.py --summary`), OUT/env.txt and OUT/logs.tgz.
set -euo pipefail
source "$(dirname "$0")/gpu_common.sh"  # ROOT (the working folder), KIT, PY, require_kit, machine_lines, can_pin

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
OUT=${1:?usage: bash experiments/gpu_select.sh [--dry-run] OUT [NAME:KEY=VALUE,KEY=VALUE ...]}
shift
CONFIGS=("$@")
[[ ${#CONFIGS[@]} -gt 0 ]] || CONFIGS=(gpu_d4:DEPTH=4 gpu_d5:DEPTH=5)
read -ra SEEDS <<< "${SEEDS:-0 1 2}"
require_kit
for c in "${CONFIGS[@]}"; do
    [[ $c =~ ^[A-Za-z0-9_.-]+(:[A-Z_]+=[^,]+(,[A-Z_]+=[^,]+)*)?$ ]] || {
        echo "error: configuration '$c' is not NAME or NAME:KEY=VALUE,KEY=VALUE (keys: experiments/selection.py --help)" >&2
        exit 1; }
done
if [[ -n ${PAIR_WITH:-} ]]; then
    for c in "${CONFIGS[@]}"; do
        [[ ${c%%:*} != "$PAIR_WITH" ]] || { echo "error: $PAIR_WITH is both PAIR_WITH and a configuration" >&2; exit 1; }
    done
    for s in "${SEEDS[@]}"; do
        [[ -f $KIT/ref/${PAIR_WITH}_s$s.json ]] || {
            echo "error: PAIR_WITH=$PAIR_WITH but $KIT/ref/${PAIR_WITH}_s$s.json is missing: run --prepare in a checkout" \
                 "whose experiments/results/ has ${PAIR_WITH}_s*.json for seeds ${SEEDS[*]}, or drop PAIR_WITH" >&2
            exit 1; }
    done
fi
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=${GPU_SELECT_DEADLINE:-$((START + 560))}
export PYTHONUNBUFFERED=1
BASE=(-s IMG_SIZE=384 -s BASE_CHANNELS=32 -s EPOCHS=60)
if [[ $DRY == 1 ]]; then BASE=(-s IMG_SIZE=64 -s BASE_CHANNELS=8 -s EPOCHS=1); fi
NJOBS=$(( ${#CONFIGS[@]} * ${#SEEDS[@]} ))
NCORES=$(nproc)
FIRST=${FIRST_CORE:-0}  # run k on cores FIRST+2k and FIRST+2k+1 (FIRST_CORE leaves the first cores to another job)
PINNED=0
if can_pin $((FIRST + 2 * NJOBS)); then PINNED=1; fi
THREADS=2
(( PINNED == 1 )) || THREADS=$(( NCORES / NJOBS > 0 ? NCORES / NJOBS : 1 ))

WORK=$(mktemp -d /tmp/gpu_select.XXXXXX)
mkdir -p "$WORK/logs" "$WORK/sel"
DATA=$WORK/real
{
    echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?') dry-run=$DRY"
    echo "# seeds: ${SEEDS[*]}; configurations: ${CONFIGS[*]}; common: ${BASE[*]}; paired with: ${PAIR_WITH:-${CONFIGS[0]%%:*}}"
    machine_lines
    if [[ $PINNED == 1 ]]; then echo "cores: 2 per run (taskset), $NJOBS runs side by side on cores" \
        "$FIRST-$((FIRST + 2 * NJOBS - 1)) of $NCORES"
    else echo "cores: unpinned, $THREADS threads per run ($NJOBS runs on $NCORES cores)"; fi
} | tee "$OUT/env.txt"
"$PY" "$KIT/shared/tools/make_dataset.py" "$DATA" > "$WORK/logs/make_dataset.log"

one() {  # one NAME SETTINGS SEED FIRST_CORE: one selection run, stopped at the deadline
    local name=$1 settings=$2 seed=$3 left=$((DEADLINE - $(date +%s))) sets=() pin=() rc=0 kv
    (( left > 0 )) || { echo "$name seed $seed: not started (deadline)" >> "$WORK/status.txt"; return; }
    IFS=, read -ra kv <<< "$settings"
    for x in "${kv[@]}"; do [[ -n $x ]] && sets+=(-s "$x"); done
    [[ $PINNED == 1 ]] && pin=(taskset -c "$4,$(($4 + 1))")
    OMP_NUM_THREADS=$THREADS timeout "$left" "${pin[@]}" "$PY" experiments/selection.py "$DATA" "$name" --out "$WORK/sel" \
        "${BASE[@]}" "${sets[@]}" --one-seed "$seed" > "$WORK/logs/${name}_s$seed.log" 2>&1 || rc=$?
    case $rc in
        0) echo "$name seed $seed: done in $(( $(date +%s) - START )) s" ;;
        124) echo "$name seed $seed: timeout" ;;
        *) echo "$name seed $seed: failed (exit $rc)"; tail -5 "$WORK/logs/${name}_s$seed.log" ;;
    esac >> "$WORK/status.txt"
}

k=0
for s in "${SEEDS[@]}"; do
    for c in "${CONFIGS[@]}"; do
        one "${c%%:*}" "$([[ $c == *:* ]] && echo "${c#*:}" || true)" "$s" $((FIRST + 2 * k)) &
        k=$((k + 1))
    done
done
wait
REF=${CONFIGS[0]%%:*}
CANDIDATES=("${CONFIGS[@]:1}")
SUM=$WORK/sel  # what the summary reads: this call's runs, and with PAIR_WITH the stored ones beside them
if [[ -n ${PAIR_WITH:-} ]]; then
    REF=$PAIR_WITH
    CANDIDATES=("${CONFIGS[@]}")
    SUM=$WORK/paired
    mkdir -p "$SUM"
    for s in "${SEEDS[@]}"; do cp "$KIT/ref/${PAIR_WITH}_s$s.json" "$SUM/"; done
    cp "$WORK"/sel/*.json "$SUM/" 2> /dev/null || true
fi
{
    sort "$WORK/status.txt"
    echo
    if compgen -G "$WORK/sel/*.json" > /dev/null; then
        "$PY" experiments/selection.py --summary "$SUM" --ref "$REF"
        for c in "${CANDIDATES[@]}"; do
            for v in best last; do
                echo "== ${c%%:*}:$v vs $REF:$v"
                "$PY" experiments/selection.py --summary "$SUM" --pair "${c%%:*}:$v" "$REF:$v" || true
            done
        done
    else
        echo "no run finished"
    fi
} 2>&1 | tee "$OUT/summary.txt"
tar -czf "$OUT/results.tgz" -C "$WORK" $(cd "$WORK" && ls sel/*.json 2>/dev/null || true) status.txt
tar -czf "$OUT/logs.tgz" -C "$WORK" logs
echo "done in $(( $(date +%s) - START )) s"
