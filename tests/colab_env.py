"""A virtualenv with Colab's package versions, for running obligatorio.ipynb as Colab's "Run all" would.

Versions come from Colab's published `pip freeze` (../shared/envs/colab-gpu-pip-freeze.txt), used as
pip constraints, so every package the notebook imports (and its kernel) gets Colab's version, and
nothing Colab lacks (torchinfo, papermill) is installed. Python 3.13 with torch 2.11.0 / torchvision
0.26.0 as on Colab when a python3.13 is found; else this Python with the repository's pinned torch.
The venv is cached under ~/.cache/tdl-unet (or $TDL_CACHE), keyed by everything that shapes it.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

# what the notebook imports (ipywidgets: tqdm.auto's bars on Colab), plus the kernel and the runner of "Run all"
PACKAGES = ["numpy", "pandas", "pillow", "matplotlib", "scipy", "tqdm", "ipywidgets", "kaggle", "ipykernel", "ipython",
            "jupyter_client", "nbclient", "nbformat"]
COLAB_TORCH = ["torch==2.11.0", "torchvision==0.26.0"]  # Colab's 2.11.0+cu128: PyPI's 2.11.0 is the same code
PINNED_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]  # the repo's pins, on this machine's disk
# CUDA wheels and build tools differ between Colab's cu128 build and PyPI's: not constrained
UNCONSTRAINED = ("cuda-", "nvidia-", "triton", "torch", "pip", "setuptools", "wheel")

RUNNER = """import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
try:  # stops at the first failing cell, like "Run all"
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": sys.argv[3]}}).execute()
finally:
    nbformat.write(nb, sys.argv[2])
"""


def python313() -> str | None:
    """A Python 3.13 interpreter on this machine ($COLAB_PYTHON, PATH, pyenv, /usr), or None."""
    candidates = [os.environ.get("COLAB_PYTHON"), shutil.which("python3.13"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")), reverse=True),
                  "/usr/local/bin/python3.13", "/usr/bin/python3.13"]
    for exe in filter(None, candidates):
        done = subprocess.run([exe, "-c", "import sys, venv; print(sys.version_info[:2] == (3, 13))"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == "True":
            return exe
    return None


def constraints(freeze: Path) -> str:
    """Colab's `pip freeze` as pip constraints: pinned lines only, local versions (+cu128) and CUDA wheels dropped."""
    lines = []
    for line in freeze.read_text().splitlines():
        if "==" not in line or "@" in line or line.lower().startswith(UNCONSTRAINED):
            continue
        lines.append(line.split("+")[0])
    return "\n".join(lines) + "\n"


def colab_venv(freeze: Path) -> tuple[Path, str]:
    """(venv folder, description), built once and cached; raises with pip's output when the build fails."""
    py = python313()
    python, torch_spec = (py, COLAB_TORCH) if py else (sys.executable, PINNED_TORCH)
    version = subprocess.run([python, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    spec = constraints(freeze)
    key = hashlib.sha256("\n".join([spec, version, *torch_spec, *PACKAGES, RUNNER]).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("TDL_CACHE", Path.home() / ".cache" / "tdl-unet"))
    venv = cache / f"colab-venv-{key}"
    about = f"{version}, {' '.join(torch_spec)}, Colab's versions of {', '.join(PACKAGES)}"
    ok = venv / "ok"  # written last: a half-built venv is rebuilt
    if ok.exists() and ok.read_text() == about:
        return venv, about
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    (venv / "colab-constraints.txt").write_text(spec)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir",
                           "-c", str(venv / "colab-constraints.txt"), *torch_spec, *PACKAGES],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building the Colab-like venv {venv} failed:\n{done.stderr[-3000:]}")
    (venv / "run_notebook.py").write_text(RUNNER)
    ok.write_text(about)
    return venv, about
