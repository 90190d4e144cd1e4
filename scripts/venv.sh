# Sourced by run.sh and test.sh: makes .venv (Python >= 3.10) and installs the requirements file $1.
# torch/torchvision are installed here, pinned, only when the venv has none (requirements.txt does
# not pin them so that Colab/Kaggle keep their own builds). Override with TORCH_SPEC="torch==X torchvision==Y".
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: Python >= 3.10 is needed, '$PY' is $("$PY" --version 2>&1). Set PYTHON=python3.11 (or newer)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating virtualenv .venv with $("$PY" --version)"
  "$PY" -m venv .venv || { echo "error: '$PY -m venv' failed; on Debian/Ubuntu: apt install python3-venv" >&2; exit 1; }
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch, torchvision" 2>/dev/null; then
  echo "installing ${TORCH_SPEC:=torch==2.14.1 torchvision==0.29.1} (a few GB, once)"
  # --no-cache-dir: a CUDA build is ~6 GB in .venv; a cached copy of its wheels would need ~3 GB more disk.
  # shellcheck disable=SC2086
  python -m pip install -q --no-cache-dir $TORCH_SPEC || {
    echo "error: scripts/venv.sh could not install $TORCH_SPEC into .venv (pip's error is above). It needs about" \
         "6 GB of disk and $(df -Ph . | awk 'NR==2 {print $4}') are free here: on 'No space left on device', free" \
         "space and run the command again." >&2
    exit 1
  }
fi
python -m pip install -q -r "$1"
