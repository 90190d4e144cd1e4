#!/usr/bin/env bash
# Issue 10's GPU session in one device call. A session has 15 minutes of device time, the machine's start included,
# and a call at most 10, so the two prepared measurements run side by side in one call instead of one after the
# other: the test record of the notebook's GPU defaults (scripts/gpu_check.sh, without the plain loop, whose rows
# for these seeds are recorded) on the first cores, and a first stage of the depth selection on validation
# (scripts/gpu_select.sh: gpu_d4 against gpu_d5) on the next ones. The record comes first: the selection runs stop
# at SELECT_STOP seconds after the start (default 420), leaving the GPU to the record, whose commands stop at STOP
# (default 570).
#
#   bash scripts/gpu_check.sh --prepare          # here, once: the .gpu/ kit both use
#   bash scripts/gpu_session.sh OUT              # on the GPU machine (device tool: carry [".gpu"], timeout 600)
#   bash scripts/gpu_session.sh --dry-run OUT    # here, on the CPU: the same steps at toy size
#
# CHECK_SEEDS (default "0 1") and SELECT_SEEDS (default "0 1") set the seeds; NB_PARAMS reaches the record's
# notebooks. Writes OUT/check/ (gpu_check.sh's four files) and OUT/select/ (gpu_select.sh's four): the 8 files a
# device call brings back. Each script's own output is printed after both end, the record's last.
set -euo pipefail
DRY=()
if [[ ${1:-} == --dry-run ]]; then DRY=(--dry-run); shift; fi
OUT=${1:?usage: bash scripts/gpu_session.sh [--dry-run] OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
read -ra CHECK <<< "${CHECK_SEEDS:-0 1}"
START=$(date +%s)
LOGS=$(mktemp -d /tmp/gpu_session.XXXXXX)
mkdir -p "$OUT"
check_rc=0 select_rc=0
PLAIN_LOOP=0 FIRST_CORE=0 GPU_CHECK_DEADLINE=$((START + ${STOP:-570})) \
    bash "$HERE/gpu_check.sh" "${DRY[@]}" "$OUT/check" "${CHECK[@]}" > "$LOGS/check.txt" 2>&1 &
check_pid=$!
# gpu_check.sh without the plain loop pins 2 cores per seed; the selection takes the cores after them
SEEDS=${SELECT_SEEDS:-0 1} FIRST_CORE=$((2 * ${#CHECK[@]})) GPU_SELECT_DEADLINE=$((START + ${SELECT_STOP:-420})) \
    bash "$HERE/gpu_select.sh" "${DRY[@]}" "$OUT/select" > "$LOGS/select.txt" 2>&1 &
select_pid=$!
wait "$select_pid" || select_rc=$?
wait "$check_pid" || check_rc=$?
echo "== gpu_select.sh (exit $select_rc)"
cat "$LOGS/select.txt"
echo "== gpu_check.sh (exit $check_rc)"
cat "$LOGS/check.txt"
echo "session done in $(( $(date +%s) - START )) s"
(( check_rc == 0 && select_rc == 0 ))
