"""scripts/gpu_select.sh: GPU settings compared on validation, side by side, inside one device call (plumbing, CPU)."""
import json
import os
import subprocess
import tarfile
import time

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_select.sh"


def kit(tmp_path, demo_root):
    """A .gpu kit whose make_dataset.py lays out the demo data instead of ../shared's photos."""
    tools = tmp_path / "kit" / "shared" / "tools"
    tools.mkdir(parents=True)
    (tools / "make_dataset.py").write_text(
        f"import shutil, sys\nshutil.copytree({str(demo_root / 'train')!r}, sys.argv[1] + '/train')\n")
    return tmp_path / "kit"


def run(tmp_path, demo_root, *configs, **env):
    env = {**os.environ, "GPU_KIT": str(kit(tmp_path, demo_root)), "SEEDS": "0", **env}
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out), *configs], capture_output=True, text=True,
                          env=env, timeout=600)
    return done, out


def test_each_configuration_trains_on_validation_splits_and_is_paired_with_the_first(tmp_path, demo_root):
    done, out = run(tmp_path, demo_root, "a:EDGE_PX=1", "b:EDGE_PX=3,EDGE_WEIGHT=5,DEPTH=5")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "a seed 0: done" in summary and "b seed 0: done" in summary
    assert "== b:best vs a:best" in summary and "== b:last vs a:last" in summary
    with tarfile.open(out / "results.tgz") as tar:
        results = {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")}
    assert set(results) == {"sel/a_s0.json", "sel/b_s0.json"}
    a, b = results["sel/a_s0.json"]["config"], results["sel/b_s0.json"]["config"]
    assert (a["EDGE_PX"], b["EDGE_PX"], b["EDGE_WEIGHT"], a["DEPTH"], b["DEPTH"]) == (1, 3, 5.0, 4, 5)
    assert a["IMG_SIZE"] == b["IMG_SIZE"] == 64 and a["EDGE_WEIGHT"] == 10  # the dry run's size; the notebook's weight
    assert {"env.txt", "logs.tgz"} <= {p.name for p in out.iterdir()}


def test_a_run_past_the_deadline_leaves_no_result_and_says_so(tmp_path, demo_root):
    done, out = run(tmp_path, demo_root, "a", GPU_SELECT_DEADLINE=str(int(time.time()) - 1))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "gpu_d4 seed 0" not in summary and "a seed 0: not started (deadline)" in summary
    assert "no run finished" in summary


def test_a_malformed_configuration_is_refused_before_any_work(tmp_path, demo_root):
    done, out = run(tmp_path, demo_root, "a:EDGE_PX")
    assert done.returncode != 0 and "configuration 'a:EDGE_PX' is not NAME or NAME:KEY=VALUE" in done.stderr
    assert not out.exists()

