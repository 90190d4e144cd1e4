"""Stand-ins for the hosts' outside world: a fake `kaggle` CLI and a fake `google.colab` package.

The fake CLI authenticates the way the real Kaggle CLI 2.0.2 does (Colab's version: an API token
from KAGGLE_API_TOKEN or ~/.kaggle/access_token, then the legacy KAGGLE_USERNAME/KAGGLE_KEY or
kaggle.json), records what it was given as one JSON line, "downloads" a folder as a zip, takes
submissions and lists them as 2.0.2 does with --csv, scored (FAKE_KAGGLE_SCORE) from the second listing on.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FAKE_KAGGLE = r'''#!{python}
import json, os, shutil, sys
from pathlib import Path

home = Path(os.path.expanduser("~"))
cfg = os.environ.get("KAGGLE_CONFIG_DIR") or (home / ".kaggle" if (home / ".kaggle").exists()
                                              else home / ".config" / "kaggle")
token_file, json_file = home / ".kaggle" / "access_token", Path(cfg) / "kaggle.json"
mode = lambda p: oct(p.stat().st_mode & 0o777)
if os.environ.get("KAGGLE_API_TOKEN"):
    auth = {{"kind": "token", "from": "env", "secret": os.environ["KAGGLE_API_TOKEN"]}}
elif token_file.is_file():
    auth = {{"kind": "token", "from": str(token_file), "secret": token_file.read_text().strip(),
             "mode": mode(token_file)}}
elif os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
    auth = {{"kind": "legacy", "from": "env", "secret": os.environ["KAGGLE_KEY"]}}
elif json_file.is_file():
    auth = {{"kind": "legacy", "from": str(json_file), "secret": json.loads(json_file.read_text())["key"],
             "mode": mode(json_file)}}
else:
    sys.exit("You must authenticate before you can call the Kaggle API.")
with open(os.environ["FAKE_KAGGLE_RECORD"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "auth": auth}}) + "\n")
if os.environ.get("FAKE_KAGGLE_FAIL"):
    sys.exit("403 Client Error: Forbidden. You must accept this competition's rules before downloading.")
args = sys.argv[1:]
state = Path(os.environ["FAKE_KAGGLE_RECORD"] + ".submissions.json")  # what was submitted, and how often polled
subs = json.loads(state.read_text()) if state.exists() else []
if args[:2] == ["competitions", "submit"]:
    name = os.path.basename(args[args.index("-f") + 1])
    subs.insert(0, {{"file": name, "m": args[args.index("-m") + 1], "polls": 0}})
    state.write_text(json.dumps(subs))
    print("Successfully submitted to the competition")
elif args[:2] == ["competitions", "submissions"]:
    assert "--csv" in args, args
    print("fileName,date,description,status,publicScore,privateScore")
    for s in subs:  # as the Kaggle CLI 2.0.2 prints them: scored from the second poll on
        s["polls"] += 1
        done = s["polls"] > 1
        status = "COMPLETE" if done else "PENDING"
        print(f"{{s['file']}},2026-12-07 12:00:00,\"{{s['m']}}\",SubmissionStatus.{{status}},"
              f"{{os.environ.get('FAKE_KAGGLE_SCORE', '0.8765') if done else ''}},")
    state.write_text(json.dumps(subs))
else:
    assert args[:2] == ["competitions", "download"], args
    slug, dest = args[args.index("-c") + 1], args[args.index("-p") + 1]
    shutil.make_archive(os.path.join(dest, slug), "zip", os.environ["FAKE_KAGGLE_DATA"])
    print(f"Downloading {{slug}}.zip to {{dest}}")
'''

FAKE_USERDATA = '''"""Fake google.colab.userdata: secrets from the JSON in $FAKE_COLAB_SECRETS."""
import json
import os


class SecretNotFoundError(Exception):
    pass


def get(key):
    if os.environ.get("FAKE_COLAB_ASKED"):  # a file recording which secrets were asked for
        with open(os.environ["FAKE_COLAB_ASKED"], "a") as f:
            f.write(key + "\\n")
    secrets = json.loads(os.environ.get("FAKE_COLAB_SECRETS", "{}"))
    if key not in secrets:
        raise SecretNotFoundError(f"Secret {key} does not exist.")
    return secrets[key]
'''


def make_fake_kaggle(bin_dir: Path) -> Path:
    """Write the fake `kaggle` executable into bin_dir (put bin_dir first on PATH to use it)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "kaggle"
    exe.write_text(FAKE_KAGGLE.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def make_fake_colab(root: Path) -> Path:
    """A folder holding an importable google.colab with userdata (put it on PYTHONPATH)."""
    pkg = root / "google" / "colab"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("from . import userdata  # noqa: F401\n")
    (pkg / "userdata.py").write_text(FAKE_USERDATA)
    return root


def recorded_calls(record: Path) -> list[dict]:
    """What a fake (the Kaggle CLI, wandb) was given, one dict per call: its JSON lines in `record`."""
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


FAKE_WANDB = '''"""Fake wandb: login, init, log and finish recorded as JSON lines in $FAKE_WANDB_RECORD."""
import json
import os


def _record(**fields):
    with open(os.environ["FAKE_WANDB_RECORD"], "a") as f:
        f.write(json.dumps(fields, default=str) + "\\n")


def login(key=None):
    _record(call="login", key_given=bool(key))


class Run:
    def __init__(self, kw):
        self.name = kw.get("name")

    def log(self, row):
        _record(call="log", name=self.name, row=row)

    def finish(self):
        _record(call="finish", name=self.name)


def init(project=None, config=None, **kw):
    _record(call="init", project=project, config=config, **kw)
    return Run(kw)
'''


def make_fake_wandb(root: Path) -> Path:
    """A folder holding an importable fake `wandb` (put it on PYTHONPATH)."""
    (root / "wandb").mkdir(parents=True, exist_ok=True)
    (root / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    return root
