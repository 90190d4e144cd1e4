"""The notebook: structure (parameters, no outputs, the U-Net classes) and headless runs."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import NOTEBOOK, ROOT, U, notebook_cells

PARAMS = ["DATA_DIR", "RUN_DIR", "SUBMISSION_PATH", "IMG_SIZE", "BATCH_SIZE", "EPOCHS", "BASE_CHANNELS", "SEED"]


def test_one_parameters_cell_with_the_documented_names():
    cells = notebook_cells("parameters")
    assert len(cells) == 1
    ns: dict = {}
    exec(cells[0], ns)
    assert all(name in ns for name in PARAMS)
    assert ns["DATA_DIR"] is None and ns["BATCH_SIZE"] == "auto"


def test_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert max(len("".join(c["source"]).splitlines()) for c in code) <= 40, "keep cells short"


def test_unet_blocks_and_the_paper_exact_variant(unet_ns):
    for name in ("DoubleConv", "Down", "Up", "OutConv", "UNet"):
        assert name in unet_ns
    UNet = unet_ns["UNet"]
    paper = UNet(base=64, padding=0, batch_norm=False).to("meta")
    assert paper(torch.empty(1, 3, 572, 572, device="meta")).shape == (1, 1, 388, 388)
    assert sum(p.numel() for p in paper.parameters()) == 31_031_745  # 31.0 M, as in the paper's network
    ours = UNet(base=8)
    assert ours(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def run_notebook(tmp_path, *params: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a copy of the notebook (with utils.py beside it) headless in tmp_path via papermill."""
    for f in ("obligatorio.ipynb", "utils.py"):
        shutil.copy(ROOT / f, tmp_path / f)
    cmd = [sys.executable, "-m", "papermill", "obligatorio.ipynb", "out.ipynb", "--cwd", str(tmp_path)]
    for p in params:
        cmd += ["-p", *p.split("=", 1)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def test_headless_run_auto_detects_the_demo_data_and_writes_a_valid_csv(tmp_path):
    home = tmp_path / "home"  # no kaggle.json there: auto-detection must end at the demo dataset
    home.mkdir()
    out = run_notebook(tmp_path, "EPOCHS=2", "SUBMISSION_PATH=sub.csv", env={"HOME": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEMO DATASET" in (tmp_path / "out.ipynb").read_text()
    assert U.validate_submission(tmp_path / "sub.csv", tmp_path / "data" / "demo" / "test" / "images") == 12
    run_dir = tmp_path / "runs" / "demo_128px_b16_e2_s42"
    assert {"best.pt", "last.pt", "curves.png"} <= {p.name for p in run_dir.iterdir()}
    again = run_notebook(tmp_path, "EPOCHS=2", "SUBMISSION_PATH=sub.csv", env={"HOME": str(home)})
    assert again.returncode == 0, again.stderr[-3000:]
    text = (tmp_path / "out.ipynb").read_text()
    assert "resumed from" in text and "sub_1.csv" in text  # resumed, and the first CSV was kept


def test_headless_run_with_a_wrong_data_dir_fails_clearly(tmp_path):
    out = run_notebook(tmp_path, f"DATA_DIR={tmp_path / 'missing'}")
    assert out.returncode != 0
    assert "missing: no such folder" in out.stderr + (tmp_path / "out.ipynb").read_text()


@pytest.mark.slow
def test_notebook_on_real_photos_scores_above_the_floor(tmp_path, real_root):
    """Real photos, short CPU budget; the floor was measured (see README) with margin for noise."""
    scorer = ROOT.parent / "shared" / "tools" / "score_submission.py"
    out = run_notebook(tmp_path, f"DATA_DIR={real_root}", "IMG_SIZE=128", "BASE_CHANNELS=16", "EPOCHS=12",
                       "SEED=0", "SUBMISSION_PATH=real.csv")
    assert out.returncode == 0, out.stderr[-3000:]
    score = subprocess.run([sys.executable, str(scorer), str(tmp_path / "real.csv"), str(real_root / "test_masks")],
                           capture_output=True, text=True, check=True)
    dice = float(score.stdout.strip().splitlines()[-1].split("=")[1])
    assert dice >= REAL_FLOOR, score.stdout


REAL_FLOOR = 0.80
