"""The notebook alone, in a Colab-like virtualenv, on a fake Colab: Run all from a Kaggle token to a scored CSV."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from colab_env import colab_venv
from fakes import make_fake_colab, make_fake_kaggle, recorded_calls
from support import NOTEBOOK, H, U, require_shared
from test_notebook import outputs_text

SECRET = "KGAT_colab-secret-token-not-real"


def set_parameters(nb: dict, **values) -> None:
    """Edit the parameters cell as a student would: NAME = value, keeping the comment."""
    (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    src = "".join(cell["source"])
    for name, value in values.items():
        src, n = re.subn(rf"^{name} = [^#\n]*?(\s*#|$)", rf"{name} = {value!r}\1", src, count=1, flags=re.M)
        assert n == 1, name
    cell["source"] = src.splitlines(keepends=True)


def small_competition(root, answers):
    """A competition-shaped download (30 train pairs, 6 test images) with the test answers kept apart."""
    H.make_demo_dataset(root, n_train=30, n_test=0, seed=3)
    (root / "test" / "images").mkdir(parents=True, exist_ok=True)
    answers.mkdir()
    for img in U.list_images(root / "train" / "images")[-6:]:
        img.rename(root / "test" / "images" / img.name)
        (root / "train" / "masks" / img.name).rename(answers / img.name)


@pytest.mark.colab
def test_notebook_alone_runs_in_a_colab_like_venv(tmp_path):
    freeze = require_shared("envs", "colab-gpu-pip-freeze.txt")
    scorer = require_shared("tools", "score_submission.py")
    venv, about = colab_venv(freeze)
    print(f"Colab-like venv: {venv} ({about})")
    py = str(venv / "bin" / "python")
    for absent in ("torchinfo", "papermill"):  # Colab ships neither
        subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", absent], capture_output=True)
        assert subprocess.run([py, "-c", f"import {absent}"], capture_output=True).returncode != 0
    torch_before = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                  text=True, check=True).stdout

    work, home = tmp_path / "content", tmp_path / "home"  # /content on Colab: the notebook and nothing else
    work.mkdir()
    home.mkdir()
    nb = json.loads(NOTEBOOK.read_text())
    set_parameters(nb, IMG_SIZE=64, BASE_CHANNELS=8, EPOCHS=2, SUBMISSION_PATH="sub.csv")
    (work / "obligatorio.ipynb").write_text(json.dumps(nb))
    small_competition(tmp_path / "download", tmp_path / "answers")
    make_fake_kaggle(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=f"{tmp_path / 'bin'}:{venv / 'bin'}:{env['PATH']}",
               PYTHONPATH=str(make_fake_colab(tmp_path / "colab")),
               FAKE_COLAB_SECRETS=json.dumps({"KAGGLE_API_TOKEN": SECRET}),  # the student's Colab secret
               FAKE_KAGGLE_RECORD=str(tmp_path / "calls.jsonl"), FAKE_KAGGLE_DATA=str(tmp_path / "download"))
    run = subprocess.run([py, str(venv / "run_notebook.py"), "obligatorio.ipynb", "out.ipynb", str(work)],
                         cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    said = outputs_text(work / "out.ipynb") if (work / "out.ipynb").exists() else ""
    assert run.returncode == 0, run.stderr[-3000:] + said[-3000:]

    assert "entorno colab" in " ".join(said.split())
    assert "instalado torchinfo>=1.8" in said  # installed because it was missing ...
    assert subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                          check=True).stdout == torch_before  # ... and torch left as it was
    (call,) = recorded_calls(tmp_path / "calls.jsonl")  # the download used the Colab secret
    assert call["auth"] == {"kind": "token", "from": "env", "secret": SECRET}
    assert SECRET not in (work / "out.ipynb").read_text()
    score = subprocess.run([sys.executable, str(scorer), str(work / "sub.csv"), str(tmp_path / "answers")],
                           capture_output=True, text=True)
    assert score.returncode == 0 and "dice=" in score.stdout, score.stdout + score.stderr
    print(score.stdout)
    assert not (work / "utils.py").exists() and shutil.which("papermill", path=str(venv / "bin")) is None
