"""experiments/gpu_check.sh: the GPU defaults scored on the dev test inside one device call (plumbing, on the CPU)."""
import os
import re
import subprocess
import tarfile

from support import ROOT, require_shared

SCRIPT = ROOT / "experiments" / "gpu_check.sh"

# The kit's make_dataset.py: the demo data in the competition layout, its last 6 training pairs moved to the test
# side with their answers in test_masks/ (as ../shared/tools/make_dataset.py does with the real photos).
LAYOUT = """import shutil, sys
from pathlib import Path
src, out = Path({src!r}), Path(sys.argv[1])
shutil.copytree(src / "train", out / "train")
for sub in ("test/images", "test_masks"):
    (out / sub).mkdir(parents=True)
for img in sorted((out / "train" / "images").iterdir())[-6:]:
    img.rename(out / "test" / "images" / img.name)
    (out / "train" / "masks" / img.name).rename(out / "test_masks" / img.name)
"""


def run(tmp_path, demo_root, *seeds, script=SCRIPT, **env):
    """`script` --dry-run OUT SEEDS with a kit holding the real scorer and the demo data laid out as above."""
    tools = tmp_path / "kit" / "shared" / "tools"
    tools.mkdir(parents=True)
    (tools / "make_dataset.py").write_text(LAYOUT.format(src=str(demo_root)))
    (tools / "score_submission.py").write_text(require_shared("tools", "score_submission.py").read_text())
    env = {**os.environ, "GPU_KIT": str(tmp_path / "kit"), **env}
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(script), "--dry-run", str(out), *seeds], capture_output=True, text=True,
                          env=env, timeout=900)
    return done, out


def test_notebook_parameters_reach_every_run_and_the_plain_loop_can_be_left_out(tmp_path, demo_root):
    done, out = run(tmp_path, demo_root, "0", NB_PARAMS="DEPTH 5", PLAIN_LOOP="0")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    assert [r[:2] for r in rows] == [["notebook_final_fit", "0"], ["notebook_validated_model", "0"]]  # no plain loop
    for r in rows:
        assert 0 <= float(r[2]) <= 1 and r[4].isdigit(), r  # the referee's Dice, the wall seconds
    assert "notebook parameters added: -p AMP fp16 -p DEPTH 5; plain loop: off" in (out / "env.txt").read_text()
    with tarfile.open(out / "logs.tgz") as tar:
        for name in ("logs/nb_final_s0.log", "logs/nb_validated_s0.log"):
            log = tar.extractfile(name).read().decode()
            first = log.splitlines()[0]  # run_cells.py's first line: the parameters it set
            assert "DEPTH = 5" in first and "AMP = 'fp16'" in first  # the T4's dtype (off on this CPU)
            assert re.search(r"Down: 2-6 +\[1, 256, 2, 2\]", log)  # the summary (5): a fifth Down, 64 px -> 2 px


def test_malformed_notebook_parameters_are_refused_before_any_work(tmp_path, demo_root):
    done, out = run(tmp_path, demo_root, "0", NB_PARAMS="DEPTH")
    assert done.returncode != 0 and "NB_PARAMS='DEPTH' is not NAME VALUE pairs" in done.stderr
    assert not out.exists()


def test_the_gpu_record_runs_its_four_notebooks_and_scores_them(tmp_path, demo_root):
    """experiments/gpu_record.sh --dry-run: the budget plan, two processes sharing a device (gloo), one process and
    the experiments ladder, each scored by the referee, with their summary.json / plan.json / experiments.csv."""
    done, out = run(tmp_path, demo_root, script=ROOT / "experiments" / "gpu_record.sh")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r[0]: r for r in (line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:])}
    assert sorted(rows) == ["ddp2", "ladder", "one", "plan"]
    for r in rows.values():
        assert 0 <= float(r[1]) <= 1, r  # a valid CSV, scored
    with tarfile.open(out / "results.tgz") as tar:
        names = tar.getnames()
        logs = tarfile.open(out / "logs.tgz").extractfile("logs/ddp2.log").read().decode()
    assert any(n.startswith("results/plan/") and n.endswith("/plan.json") for n in names)
    assert any(n.startswith("results/ladder/") and n.endswith("/experiments.csv") for n in names)
    assert "prueba previa: 2 procesos (gloo)" in logs
