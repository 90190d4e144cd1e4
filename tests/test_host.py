"""Colab and Kaggle: host detection, Kaggle credentials, data found wherever Kaggle mounts it, no silent demo."""
from __future__ import annotations

import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import pytest
from fakes import make_fake_colab, make_fake_kaggle, recorded_calls
from support import H, U

SECRET = "KGAT_0123456789abcdef-not-a-real-token"
KAGGLE_VARS = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_KERNEL_RUN_TYPE",
               "XDG_CONFIG_HOME")


@pytest.fixture
def clean_host(tmp_path, monkeypatch):
    """A local machine with no Kaggle credentials, no /kaggle/input, HOME and cwd in tmp_path."""
    for var in KAGGLE_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(H, "KAGGLE_INPUT", tmp_path / "no-kaggle-input")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(H, "make_demo_dataset", partial(H.make_demo_dataset, n_train=4, n_test=2, size=64))  # fast
    return home


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch, demo_root):
    """The fake `kaggle` CLI first on PATH, serving demo_root as the competition zip; returns its record file."""
    make_fake_kaggle(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    record = tmp_path / "kaggle-calls.jsonl"
    monkeypatch.setenv("FAKE_KAGGLE_RECORD", str(record))
    monkeypatch.setenv("FAKE_KAGGLE_DATA", str(demo_root))
    return record


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """google.colab importable (with userdata reading $FAKE_COLAB_SECRETS) for this test only."""
    monkeypatch.syspath_prepend(str(make_fake_colab(tmp_path / "colab")))
    yield
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        del sys.modules[name]


def test_host_detection(clean_host, monkeypatch, tmp_path):
    assert H.detect_host() == "local"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert H.detect_host() == "kaggle"
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    (tmp_path / "kaggle-input").mkdir()
    monkeypatch.setattr(H, "KAGGLE_INPUT", tmp_path / "kaggle-input")
    assert H.detect_host() == "kaggle"


def test_colab_detected_when_google_colab_is_importable(clean_host, fake_colab):
    assert H.detect_host() == "colab"


# --- every way to authenticate leads to one download call with that credential --------------------------------


def _env_token(home, work, mp):
    mp.setenv("KAGGLE_API_TOKEN", SECRET)


def _colab_secret_token(home, work, mp):
    mp.setenv("FAKE_COLAB_SECRETS", json.dumps({"KAGGLE_API_TOKEN": SECRET}))


def _colab_secret_legacy(home, work, mp):
    mp.setenv("FAKE_COLAB_SECRETS", json.dumps({"KAGGLE_USERNAME": "student", "KAGGLE_KEY": SECRET}))


def _home_access_token(home, work, mp):
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "access_token").write_text(SECRET + "\n")


def _uploaded_access_token(home, work, mp):
    (work / "access_token").write_text(SECRET + "\n")


def _uploaded_kaggle_json(home, work, mp):
    (work / "kaggle.json").write_text(json.dumps({"username": "student", "key": SECRET}))


def _home_kaggle_json(home, work, mp):
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "student", "key": SECRET}))


def _config_dir_kaggle_json(home, work, mp):
    cfg = work.parent / "cfg"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "student", "key": SECRET}))
    mp.setenv("KAGGLE_CONFIG_DIR", str(cfg))


def _env_username_key(home, work, mp):
    mp.setenv("KAGGLE_USERNAME", "student")
    mp.setenv("KAGGLE_KEY", SECRET)


CREDENTIALS = {  # name: (setup, the credential the CLI uses, its file mode if a file)
    "KAGGLE_API_TOKEN env": (_env_token, ("token", "env"), None),
    "KAGGLE_API_TOKEN Colab secret": (_colab_secret_token, ("token", "env"), None),
    "KAGGLE_USERNAME/KEY Colab secrets": (_colab_secret_legacy, ("legacy", "env"), None),
    "~/.kaggle/access_token": (_home_access_token, ("token", "home/.kaggle/access_token"), None),
    "access_token uploaded next to the notebook": (_uploaded_access_token, ("token", "home/.kaggle/access_token"),
                                                   "0o600"),
    "kaggle.json uploaded next to the notebook": (_uploaded_kaggle_json, ("legacy", "home/.kaggle/kaggle.json"),
                                                  "0o600"),
    "~/.kaggle/kaggle.json": (_home_kaggle_json, ("legacy", "home/.kaggle/kaggle.json"), None),
    "KAGGLE_CONFIG_DIR/kaggle.json": (_config_dir_kaggle_json, ("legacy", "cfg/kaggle.json"), None),
    "KAGGLE_USERNAME/KAGGLE_KEY env": (_env_username_key, ("legacy", "env"), None),
}


@pytest.mark.parametrize("way", list(CREDENTIALS))
def test_each_credential_leads_to_a_download(way, clean_host, fake_kaggle, monkeypatch, capsys, tmp_path,
                                             demo_root, request):
    setup, (kind, source), file_mode = CREDENTIALS[way]
    setup(clean_host, tmp_path / "work", monkeypatch)
    host = "local"
    if "Colab" in way:
        request.getfixturevalue("fake_colab")
        host = "colab"
    root, is_demo = H.resolve_data_dir(None, local="data", host=host)
    assert not is_demo and (root / "train" / "images").is_dir()
    assert len(U.list_images(root / "test" / "images")) == len(U.list_images(demo_root / "test" / "images"))
    (call,) = recorded_calls(fake_kaggle)
    assert call["argv"][:4] == ["competitions", "download", "-c", H.COMPETITION]
    assert call["auth"]["kind"] == kind and call["auth"]["secret"] == SECRET
    if source == "env":
        assert call["auth"]["from"] == "env"
    else:
        assert call["auth"]["from"].endswith(source)
    if file_mode:
        assert call["auth"]["mode"] == file_mode
        assert oct((clean_host / ".kaggle").stat().st_mode & 0o777) == "0o700"
    said = capsys.readouterr()
    assert SECRET not in said.out + said.err  # a secret is never printed
    assert not list((tmp_path / "work").glob("data/**/access_token")) and not list(
        (tmp_path / "work").glob("data/**/kaggle.json"))  # and never written where the data (or a repo) is


def test_colab_secrets_are_asked_for_only_when_needed(clean_host, fake_colab, monkeypatch, tmp_path):
    asked = tmp_path / "asked.txt"
    monkeypatch.setenv("FAKE_COLAB_ASKED", str(asked))
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"KAGGLE_API_TOKEN": SECRET, "KAGGLE_USERNAME": "u",
                                                         "KAGGLE_KEY": "k"}))
    assert H.kaggle_credentials() == "KAGGLE_API_TOKEN (Colab secret)"  # the CLI prefers the token
    assert asked.read_text().split() == ["KAGGLE_API_TOKEN"]  # so the legacy key was not asked for
    assert H.kaggle_credentials() == "KAGGLE_API_TOKEN"  # now in the environment: nothing asked again
    assert asked.read_text().split() == ["KAGGLE_API_TOKEN"]


def test_an_uploaded_file_never_replaces_a_different_existing_one(clean_host, fake_kaggle, capsys, tmp_path):
    _home_access_token(clean_host, None, None)
    (tmp_path / "work" / "access_token").write_text("another-token")
    assert H.kaggle_credentials().endswith(".kaggle/access_token")
    assert (clean_host / ".kaggle" / "access_token").read_text().strip() == SECRET
    assert "ya existe y es distinto" in capsys.readouterr().out


def test_a_failed_download_says_what_to_do(clean_host, fake_kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "1")
    with pytest.raises(RuntimeError, match=r"(?s)Forbidden.*Accept the rules at https://www.kaggle.com/competitions/"):
        H.resolve_data_dir(None, host="colab")


def test_no_kaggle_cli_is_a_clear_error(clean_host, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "empty-bin" / "python"))
    with pytest.raises(FileNotFoundError, match="pip install kaggle"):
        H.kaggle_cli()


# --- no credentials: demo locally, a clear stop on Colab and Kaggle ---------------------------------------------


def test_without_data_or_credentials_only_a_local_run_falls_back_to_the_demo(clean_host, fake_kaggle):
    for host, says in (("colab", "KAGGLE_API_TOKEN"), ("kaggle", "Add Input")):
        with pytest.raises(FileNotFoundError, match=says) as err:
            H.resolve_data_dir(None, host=host)
        assert 'DATA_DIR = "demo"' in str(err.value) and H.COMPETITION_URL in str(err.value)
    assert not (clean_host.parent / "work" / "data" / "demo").exists()
    root, is_demo = H.resolve_data_dir(None, host="local")
    assert is_demo and root == Path("data") / "demo"
    assert recorded_calls(fake_kaggle) == []  # no credentials: the CLI was never called


def test_demo_only_when_asked_for_on_a_host(clean_host):
    root, is_demo = H.resolve_data_dir("demo", host="colab")
    assert is_demo and len(U.list_images(root / "train" / "images")) == 4


# --- Kaggle input: found wherever it is mounted -----------------------------------------------------------------


def _layout(root, rel, demo_root):
    """Mount demo_root's data at root/rel like Kaggle does (read-only links are enough)."""
    target = root / rel
    target.mkdir(parents=True)
    for sub in ("train", "test"):
        (target / sub).symlink_to(demo_root / sub)
    return target


@pytest.mark.parametrize("rel", [
    H.COMPETITION,                                  # classic: /kaggle/input/<competition>
    "competitions/" + H.COMPETITION,                # one folder level more above the competition's
    "my-person-photos",                             # the data re-uploaded as a renamed dataset
    "datasets/someone/persons-copy/unzipped",       # and with extra folder levels
])
def test_kaggle_data_found_wherever_it_is_mounted(rel, clean_host, tmp_path, demo_root, monkeypatch, capsys):
    kin = tmp_path / "kaggle-input"
    (kin / "other-dataset" / "train").mkdir(parents=True)  # an unrelated input: no masks, no test
    target = _layout(kin, rel, demo_root)
    monkeypatch.setattr(H, "KAGGLE_INPUT", kin)
    assert H.resolve_data_dir(None, host="kaggle") == (target, False)
    assert f"datos de Kaggle: se usa {target}" in capsys.readouterr().out


def test_kaggle_prefers_the_competition_folder_and_says_so(clean_host, tmp_path, demo_root, monkeypatch, capsys):
    kin = tmp_path / "kaggle-input"
    _layout(kin, "a-copy", demo_root)
    comp = _layout(kin, "competitions/" + H.COMPETITION, demo_root)
    assert H.find_kaggle_data(kin) == comp
    assert "2 carpetas de datos bajo" in capsys.readouterr().out


def test_kaggle_search_depth_is_bounded(clean_host, tmp_path, demo_root):
    kin = tmp_path / "kaggle-input"
    _layout(kin, "a/b/c/d/e", demo_root)  # five levels down: too deep
    assert H.find_kaggle_data(kin) is None


# --- missing packages ----------------------------------------------------------------------------------------


def test_ensure_installed_calls_pip_only_when_missing_and_never_for_torch(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(H.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        H.subprocess.CompletedProcess(cmd, 0, "", ""))
    H.ensure_installed("json")  # present: nothing to do
    assert calls == []
    H.ensure_installed("surely_not_a_module_xyz", "surely-not-a-module-xyz>=1")
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "surely-not-a-module-xyz>=1"]]
    assert "instalado surely-not-a-module-xyz>=1" in capsys.readouterr().out
    monkeypatch.setattr(H.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="never replaces"):
        H.ensure_installed("torchvision")
    assert len(calls) == 1


def test_ensure_installed_failure_names_the_package(monkeypatch):
    monkeypatch.setattr(H.subprocess, "run", lambda cmd, **kw: H.subprocess.CompletedProcess(cmd, 1, "", "no network"))
    with pytest.raises(RuntimeError, match=r"(?s)surely_not_a_module_xyz is missing.*no network.*pip install"):
        H.ensure_installed("surely_not_a_module_xyz")


def test_fake_cli_refuses_without_credentials(clean_host, fake_kaggle, tmp_path):
    """The fake is strict like the real CLI: it exits 1 when no credential is visible (so the tests above mean it)."""
    done = H.subprocess.run([shutil.which("kaggle"), "competitions", "download", "-c", "x", "-p", str(tmp_path)],
                            capture_output=True, text=True)
    assert done.returncode == 1 and "must authenticate" in done.stderr


def test_submit_then_poll_until_kaggle_has_scored_it(clean_host, fake_kaggle, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "t0ken")
    monkeypatch.setenv("FAKE_KAGGLE_SCORE", "0.9011")
    csv_path = tmp_path / "sub.csv"
    csv_path.write_text("id,encoded_pixels\n")
    H.kaggle_submit(csv_path, "first, run 1")
    H.kaggle_submit(csv_path, "second")  # listed first by Kaggle: the message picks the right one
    assert H.kaggle_score("first, run 1", wait_s=5, every_s=0.1) == "0.9011"  # pending at the first poll
    polls = [c for c in recorded_calls(fake_kaggle) if c["argv"][1] == "submissions"]
    assert len(polls) == 2 and all(c["auth"]["secret"] == "t0ken" for c in recorded_calls(fake_kaggle))
    assert H.kaggle_score("never submitted", wait_s=0.3, every_s=0.1) is None  # bounded: gives up, says nothing
    assert "subido a Kaggle: sub.csv (first, run 1)" in capsys.readouterr().out


def test_copy_for_kaggle_writes_submission_csv_in_the_working_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(H, "KAGGLE_WORKING", tmp_path / "working")
    source = tmp_path / "submission_20261207-120000.csv"
    source.write_text("id,encoded_pixels\n1.png,1 2\n")
    assert H.copy_for_kaggle(source).read_text() == source.read_text()
    assert (tmp_path / "working" / "submission.csv").exists() and source.exists()  # the timestamped one stays
