"""Host helpers of obligatorio.ipynb, its second folded cell in 1.1: edit host.py, run scripts/sync_notebook.py.

Where the notebook runs and what it talks to: packages a host lacks, where the data is (Kaggle's input, data/, a
download, generated demo data), Kaggle credentials, download and submission, the W&B login. utils.py holds the
pipeline (data, training, inference, submission file); nothing here trains or predicts.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# --- Packages and the host ------------------------------------------------------------------------

COMPETITION = "tdl-obligatorio-2025"
COMPETITION_URL = f"https://www.kaggle.com/competitions/{COMPETITION}"
KAGGLE_INPUT = Path("/kaggle/input")  # where Kaggle mounts attached data, at some depth


def ensure_installed(module: str, requirement: str | None = None) -> None:
    """pip-install `requirement` (default: `module`) without dependencies when `module` is missing; never torch."""
    if importlib.util.find_spec(module) is not None:
        return
    if module.split(".")[0] in ("torch", "torchvision"):
        raise ImportError(f"{module} is missing: install the PyTorch build for your machine (pytorch.org); "
                          f"Colab and Kaggle ship one, which this notebook never replaces")
    # --no-deps: only dependency-free packages (torchinfo), so pip can never reinstall or upgrade torch
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", requirement or module]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{module} is missing and `{' '.join(cmd[2:])}` failed:\n{done.stderr.strip()[-1500:]}\n"
                           f"Install it by hand (pip install {requirement or module}) and run again.")
    importlib.invalidate_caches()
    print(f"instalado {requirement or module} (este entorno no lo trae)")


def detect_host() -> str:
    """Where this kernel runs: 'colab' (google.colab importable), 'kaggle' (its env var or /kaggle/input), 'local'."""
    try:
        if importlib.util.find_spec("google.colab") is not None:
            return "colab"
    except (ImportError, ValueError):  # no `google` package at all
        pass
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or KAGGLE_INPUT.is_dir():
        return "kaggle"
    return "local"


# --- Where the data is: DATA_DIR, Kaggle's input, data/, a download, the demo ---------------------

DATA_SUBDIRS = ("train/images", "train/masks", "test/images")


def is_data_root(path: Path) -> bool:
    """True when `path` holds train/images, train/masks and test/images (the competition layout)."""
    return all((path / sub).is_dir() for sub in DATA_SUBDIRS)


def find_data_roots(path: str | Path, depth: int = 2, exclude: Path | None = None) -> list[Path]:
    """Folders at or below `path` (`depth` levels, not hidden, not `exclude`) in the data layout, shallowest first."""
    path = Path(path)
    found = {p.parents[1] for d in range(depth + 1) for p in path.glob("*/" * d + "train/images")}
    return sorted((r for r in found if is_data_root(r) and exclude not in (r, *r.parents)
                   and not any(part.startswith(".") for part in r.relative_to(path).parts)),
                  key=lambda r: (len(r.parts), str(r)))


def find_data_root(path: str | Path, depth: int = 2, exclude: Path | None = None) -> Path | None:
    """The shallowest folder at or below `path` in the competition layout (see find_data_roots), or None."""
    return next(iter(find_data_roots(path, depth, exclude)), None)


def find_kaggle_data(root: str | Path | None = None, depth: int = 4) -> Path | None:
    """The competition folder wherever Kaggle mounted it below `root` (/kaggle/input); prefers the competition name."""
    root = Path(root or KAGGLE_INPUT)
    roots = find_data_roots(root, depth)
    if not roots:
        return None
    roots.sort(key=lambda p: (COMPETITION not in p.parts, len(p.parts), str(p)))
    if len(roots) > 1:
        print(f"{len(roots)} carpetas de datos bajo {root}: {', '.join(map(str, roots))}; se usa la primera "
              f"(DATA_DIR elige otra)")
    print(f"datos de Kaggle: se usa {roots[0]}")
    return roots[0]


def missing_data_message(host: str) -> str:
    """What to do when no competition data is found on Colab or Kaggle (where a silent demo run would mislead)."""
    common = ('Or set DATA_DIR to the unzipped download (the folder with train/ and test/), or DATA_DIR = "demo" '
              "for a run on generated stick figures (its scores and CSV say nothing about the competition).")
    if host == "kaggle":
        return (f"No competition data below {KAGGLE_INPUT} (searched 4 levels for train/images, train/masks and "
                f"test/images). In the notebook editor: right panel -> Input -> \"+ Add Input\" -> Competitions "
                f"-> search \"{COMPETITION}\" -> Add (join the competition and accept its rules at "
                f"{COMPETITION_URL}/rules first). Then Run all again. " + common)
    return ("No competition data and no Kaggle credentials found. To download it here:\n"
            "  1. kaggle.com -> your picture -> Settings -> API -> \"Generate New Token\"; copy the token.\n"
            "  2. Colab: the key icon (Secrets) on the left -> \"Add new secret\" named KAGGLE_API_TOKEN with the "
            "token as value, and switch on \"Notebook access\". Elsewhere: export KAGGLE_API_TOKEN, or save the token "
            "as ~/.kaggle/access_token. Or upload a file named access_token (the token) or a legacy kaggle.json "
            "next to this notebook.\n"
            f"  3. Join the competition and accept its rules: {COMPETITION_URL}/rules\n"
            "  4. Run all again.\n" + common)


def resolve_data_dir(data_dir: str | Path | None, local: str | Path = "data",
                     host: str = "local") -> tuple[Path, bool]:
    """(root, is_demo): DATA_DIR, Kaggle's input, data/, a download, or (locally) the demo; else an error with steps."""
    if str(data_dir) == "demo":
        return _demo_dataset(Path(local) / "demo"), True
    if data_dir:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(
                f"DATA_DIR={data_dir!s}: no such folder. Point DATA_DIR at the unzipped competition "
                f"download (the folder with train/images), or set DATA_DIR=None to auto-detect.")
        root = find_data_root(data_dir)
        if root is not None:
            return root, False
        if any(p for p in data_dir.iterdir() if not p.name.startswith(".")):
            raise FileNotFoundError(
                f"DATA_DIR={data_dir!s}: no folder with train/images, train/masks and test/images at or below "
                f"it, but it is not empty. Point DATA_DIR at the folder holding train/ and test/.")
        print(f"DATA_DIR={data_dir!s} está vacía: detección automática; descargas y demo van ahí")
        local = data_dir
    demo = Path(local) / "demo"
    root = find_kaggle_data() or find_data_root(local, exclude=demo)
    if root is not None:
        return root, False
    source = kaggle_credentials()
    if source:
        print(f"credencial de Kaggle: {source}")
        return download_competition(Path(local) / COMPETITION), False
    if host != "local":
        raise FileNotFoundError(missing_data_message(host))
    return _demo_dataset(demo), True


def _demo_dataset(demo: Path) -> Path:
    """The demo dataset in `demo`, generated the first time."""
    if find_data_root(demo) is None:
        make_demo_dataset(demo)
    return demo


# --- Kaggle credentials and the download ----------------------------------------------------------

def _kaggle_config_dir() -> Path:
    """Where the Kaggle CLI reads kaggle.json: $KAGGLE_CONFIG_DIR, ~/.kaggle, or ~/.config/kaggle without ~/.kaggle."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path.home() / ".kaggle"
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return xdg if not home.exists() and (xdg / "kaggle.json").is_file() else home


def _install_secret_file(source: Path, target: Path) -> None:
    """Copy a credential file to `target` with mode 600 (folder 700); an existing different file is kept, said aloud."""
    if target.is_file():
        if target.read_bytes() != source.read_bytes():
            print(f"{source} no se copió: {target} ya existe y es distinto; la CLI de Kaggle usa {target} "
                  f"(borrarlo para usar el subido)")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.parent.chmod(0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(source.read_bytes())
    print(f"{source} copiado a {target} (permisos 600)")


def _colab_secrets(names: Sequence[str]) -> dict[str, str]:
    """Values of these Colab secrets that exist and are shared with this notebook ({} outside Colab)."""
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return {}
    values = {}
    for name in names:
        try:
            value = userdata.get(name)
        except Exception:  # SecretNotFoundError, NotebookAccessError (access not granted), timeouts
            continue
        if value:
            values[name] = value.strip()
    return values


def kaggle_credentials(uploads: str | Path = ".") -> str | None:
    """Put uploaded credential files and Colab secrets where the Kaggle CLI looks; say which it uses (None: none)."""
    uploads = Path(uploads)
    for name, target in (("access_token", Path.home() / ".kaggle" / "access_token"),
                         ("kaggle.json", _kaggle_config_dir() / "kaggle.json")):
        if (uploads / name).is_file() and (uploads / name).resolve() != target.resolve():
            _install_secret_file(uploads / name, target)
    secrets = {}  # Colab secrets, asked for only when needed (each may prompt the user for notebook access)
    if detect_host() == "colab" and not os.environ.get("KAGGLE_API_TOKEN"):
        secrets = _colab_secrets(["KAGGLE_API_TOKEN"])
        if not secrets and not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
            secrets = _colab_secrets(["KAGGLE_USERNAME", "KAGGLE_KEY"])
            secrets = secrets if len(secrets) == 2 else {}
        os.environ.update(secrets)
    from_secret = " (Colab secret)" if secrets else ""
    token_files = [Path.home() / ".kaggle" / n for n in ("access_token", "access_token.txt")]
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN" + from_secret
    for f in token_files:
        if f.is_file() and f.read_text().strip():
            return str(f)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY" + from_secret
    if (_kaggle_config_dir() / "kaggle.json").is_file():
        return str(_kaggle_config_dir() / "kaggle.json")
    return None


def kaggle_cli() -> str:
    """The `kaggle` executable: on PATH, else beside this Python (a virtualenv whose bin is not on PATH)."""
    exe = shutil.which("kaggle") or shutil.which("kaggle", path=str(Path(sys.executable).parent))
    if exe is None:
        raise FileNotFoundError("the Kaggle CLI (`kaggle`) is not installed: run `pip install kaggle`, then run again")
    return exe


def download_competition(dest: str | Path) -> Path:
    """Download and unzip the competition data with the Kaggle CLI; return the data root."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [kaggle_cli(), "competitions", "download", "-c", COMPETITION, "-p", str(dest)]
    print(f"descargando los datos de la competencia en {dest} (unos 2 GB) ...")
    done = subprocess.run(cmd, capture_output=True, text=True)  # captured: a kernel would not show it
    if done.returncode:
        said = (done.stdout + done.stderr).strip()[-1500:]
        raise RuntimeError(f"`kaggle competitions download -c {COMPETITION}` failed (exit {done.returncode}):\n"
                           f"{said}\nAccept the rules at {COMPETITION_URL}/rules with the account of your "
                           f"token, check the token, or put the unzipped data in {dest} by hand.")
    for z in dest.glob("*.zip"):
        with zipfile.ZipFile(z) as f:
            f.extractall(dest)
        z.unlink()
    root = find_data_root(dest)
    if root is None:
        raise FileNotFoundError(f"{dest}: downloaded, but no train/images, train/masks and test/images inside; "
                                f"look at its contents")
    return root


# --- Demo data: stick figures on textured backgrounds ---------------------------------------------

def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    """A random textured background: gradient, stripes or blobs, with noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(3)
    if kind == 0:
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) % 1.0
    elif kind == 1:
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 12) * (xx * rng.uniform(-1, 1) + yy))
    else:
        t = np.zeros((size, size))
        for _ in range(12):
            cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
            t += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)
        t = t / t.max()
    img = c1 * t[..., None] + c2 * (1 - t[..., None]) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _draw_person(draw: ImageDraw.ImageDraw, mdraw: ImageDraw.ImageDraw, rng: np.random.Generator,
                 size: int) -> None:
    """Draw one stick-figure-like person (head, torso, arms, legs) on the image and its mask."""
    h = size * rng.uniform(0.15, 0.9)  # person height: tiny to frame-filling
    cx, top = rng.uniform(0.1, 0.9) * size, rng.uniform(0.0, 0.9) * size - h * 0.3
    u = h / 8
    skin, cloth, legs = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(3))
    parts = [
        ("ellipse", (cx - 0.5 * u, top, cx + 0.5 * u, top + 1.2 * u), skin),
        ("rect", (cx - 1.0 * u, top + 1.3 * u, cx + 1.0 * u, top + 4.3 * u), cloth),
        ("line", (cx - 0.9 * u, top + 1.5 * u, cx - rng.uniform(1.5, 2.5) * u, top + rng.uniform(3, 5) * u), cloth),
        ("line", (cx + 0.9 * u, top + 1.5 * u, cx + rng.uniform(1.5, 2.5) * u, top + rng.uniform(3, 5) * u), cloth),
        ("line", (cx - 0.5 * u, top + 4.2 * u, cx - rng.uniform(0.5, 1.5) * u, top + 8 * u), legs),
        ("line", (cx + 0.5 * u, top + 4.2 * u, cx + rng.uniform(0.5, 1.5) * u, top + 8 * u), legs),
    ]
    for kind, xy, colour in parts:
        for d, fill in ((draw, colour), (mdraw, 1)):
            if kind == "ellipse":
                d.ellipse(xy, fill=fill)
            elif kind == "rect":
                d.rounded_rectangle(xy, radius=0.4 * u, fill=fill)
            else:
                d.line(xy, fill=fill, width=max(2, int(0.6 * u)))


def make_demo_image(rng: np.random.Generator, size: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic photo (textured background, 0-3 people, some gray/sepia) and its {0,1} mask."""
    img = _texture(rng, size)
    mask = Image.new("L", (size, size), 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        _draw_person(draw, mdraw, rng, size)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    a = np.asarray(img).astype(np.float32)
    style = rng.random()
    if style < 0.15:  # black-and-white photo
        a = np.repeat(a.mean(axis=2, keepdims=True), 3, axis=2)
    elif style < 0.25:  # sepia
        a = a @ np.array([[0.393, 0.349, 0.272], [0.769, 0.686, 0.534], [0.189, 0.168, 0.131]])
    return a.clip(0, 255).astype(np.uint8), np.array(mask, dtype=np.uint8)


def make_demo_dataset(root: str | Path, n_train: int = 48, n_test: int = 12, size: int = 800,
                      seed: int = 0) -> Path:
    """Write a synthetic dataset in the competition layout (train/images, train/masks, test/images)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = rng.permutation(np.arange(1, 10 * (n_train + n_test) + 1))[: n_train + n_test]
    for sub in ("train/images", "train/masks", "test/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        img, mask = make_demo_image(rng, size)
        split = "train" if k < n_train else "test"
        Image.fromarray(img).save(root / split / "images" / f"{n}.png", compress_level=1)  # same pixels, 2x faster
        if split == "train":
            Image.fromarray(mask).save(root / "train" / "masks" / f"{n}.png", compress_level=1)
    return root


# --- Weights & Biases -----------------------------------------------------------------------------

def init_wandb(project: str, config: dict, **run_kw):
    """A W&B run when WANDB_API_KEY (env or Colab secret) and wandb are there; else None, said aloud."""
    key = os.environ.get("WANDB_API_KEY") or _colab_secrets(["WANDB_API_KEY"]).get("WANDB_API_KEY")
    if not key:
        print("W&B: sin WANDB_API_KEY (variable de entorno o secreto de Colab); se entrena sin registrar")
        return None
    try:
        import wandb
    except ImportError:
        print("W&B: falta el paquete (pip install wandb); se entrena sin registrar")
        return None
    wandb.login(key=key)
    return wandb.init(project=project, config=config, **run_kw)


# --- Kaggle submission ----------------------------------------------------------------------------

def kaggle_submit(csv_path: str | Path, message: str) -> None:
    """Submit a CSV to the competition with the Kaggle CLI; `message` names it in the submissions list."""
    cmd = [kaggle_cli(), "competitions", "submit", "-c", COMPETITION, "-f", str(csv_path), "-m", message]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"`kaggle competitions submit` failed (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr).strip()[-1500:]}\nSubmit {csv_path} by hand: "
                           f"{COMPETITION_URL}/submissions -> Submit Prediction.")
    print(f"subido a Kaggle: {Path(csv_path).name} ({message})")


def kaggle_score(message: str, wait_s: float = 300, every_s: float = 15) -> str | None:
    """The public score of the submission named `message`, once Kaggle has scored it; None after wait_s seconds."""
    deadline = time.time() + wait_s
    while True:
        done = subprocess.run([kaggle_cli(), "competitions", "submissions", "-c", COMPETITION, "--csv"],
                              capture_output=True, text=True)
        text = done.stdout[done.stdout.find("fileName,"):] if done.returncode == 0 else ""
        row = next((r for r in csv.DictReader(io.StringIO(text)) if r.get("description") == message), None)
        status = (row or {}).get("status", "").rsplit(".", 1)[-1].lower()  # CLI 2.x: SubmissionStatus.COMPLETE
        if status == "complete" and row["publicScore"]:
            return row["publicScore"]
        if status == "error":
            raise RuntimeError(f"Kaggle could not score the submission {message!r}: look at {COMPETITION_URL}/"
                               f"submissions and check the CSV (U.validate_submission)")
        if time.time() + every_s > deadline:
            return None
        time.sleep(every_s)


KAGGLE_WORKING = Path(os.environ.get("TDL_KAGGLE_WORKING", "/kaggle/working"))  # tests point it elsewhere


def copy_for_kaggle(csv_path: str | Path) -> Path:
    """Copy the CSV to /kaggle/working/submission.csv, the name Kaggle's notebooks and tutorials write."""
    target = KAGGLE_WORKING / "submission.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(csv_path, target)
    print(f"copia para Kaggle: {target} (la salida del notebook que se elige al enviar)")
    return target
