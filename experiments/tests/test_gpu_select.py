"""experiments/gpu_select.sh: GPU settings compared on validation, side by side, in one device call (plumbing, CPU)."""
import json
import os
import subprocess
import tarfile
import time

import pytest
from support import ROOT

SCRIPT = ROOT / "experiments" / "gpu_select.sh"


def kit(tmp_path, demo_root, ref: dict | None = None):
    """A .gpu kit whose make_dataset.py lays out the demo data instead of ../shared's photos; `ref` (file name ->
    result dict) is put in its ref/ folder, as --prepare copies stored runs there."""
    tools = tmp_path / "kit" / "shared" / "tools"
    tools.mkdir(parents=True)
    (tools / "make_dataset.py").write_text(
        f"import shutil, sys\nshutil.copytree({str(demo_root / 'train')!r}, sys.argv[1] + '/train')\n")
    (tmp_path / "kit" / "ref").mkdir()
    for name, result in (ref or {}).items():
        (tmp_path / "kit" / "ref" / name).write_text(json.dumps(result))
    return tmp_path / "kit"


def results(out) -> dict:
    """The result files of a call, by their path in results.tgz."""
    with tarfile.open(out / "results.tgz") as tar:
        return {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")}


def run(tmp_path, demo_root, *configs, ref=None, **env):
    env = {**os.environ, "GPU_KIT": str(kit(tmp_path, demo_root, ref)), "SEEDS": "0", **env}
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out), *configs], capture_output=True, text=True,
                          env=env, timeout=600)
    return done, out


@pytest.fixture(scope="module")
def two_configs(tmp_path_factory, demo_root):
    """One call with two configurations, seed 0 (its results also serve as stored runs below)."""
    return run(tmp_path_factory.mktemp("two"), demo_root, "a:EDGE_PX=1", "b:EDGE_PX=3,EDGE_WEIGHT=5,DEPTH=5")


def test_each_configuration_trains_on_validation_splits_and_is_paired_with_the_first(two_configs):
    done, out = two_configs
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "a seed 0: done" in summary and "b seed 0: done" in summary
    assert "== b:best vs a:best" in summary and "== b:last vs a:last" in summary
    runs = results(out)
    assert set(runs) == {"sel/a_s0.json", "sel/b_s0.json"}
    a, b = runs["sel/a_s0.json"]["config"], runs["sel/b_s0.json"]["config"]
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


def test_pair_with_pairs_the_candidates_with_stored_runs_and_returns_only_the_new_ones(tmp_path, demo_root,
                                                                                     two_configs):
    stored = results(two_configs[1])["sel/a_s0.json"]
    done, out = run(tmp_path / "second", demo_root, "b:EDGE_PX=3", ref={"a_s0.json": stored}, PAIR_WITH="a")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "b seed 0: done" in summary and "a seed 0" not in summary  # the stored configuration is not retrained
    assert "== b:best vs a:best" in summary and "b:last minus a:last, paired on seeds 0:" in summary
    assert set(results(out)) == {"sel/b_s0.json"}
    missing = run(tmp_path / "third", demo_root, "b:EDGE_PX=3", PAIR_WITH="a", SEEDS="0 1")
    assert missing[0].returncode != 0 and "a_s0.json is missing" in missing[0].stderr and not missing[1].exists()
