# Sourced by experiments/gpu_check.sh and experiments/gpu_select.sh: the repo root (made the working folder), the .gpu kit,
# the Python to run, and the helpers both GPU calls share.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
KIT=${GPU_KIT:-$ROOT/.gpu}  # the tests point it at a kit of their own
PY=python3
if [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; fi

require_kit() {  # stop, saying what to do, when the kit was not prepared and copied
    [[ -d $KIT/shared/tools ]] || {
        echo "error: $KIT is missing: run 'bash experiments/gpu_check.sh --prepare' here first, then copy .gpu/ with the repository" >&2
        exit 1; }
}
machine_lines() {  # the GPU and its driver; Python, torch, torchvision, whether CUDA is available
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.is_available())"
}
can_pin() {  # can_pin CORES: taskset exists and the machine has at least CORES cores
    command -v taskset > /dev/null && (( $(nproc) >= $1 ))
}
