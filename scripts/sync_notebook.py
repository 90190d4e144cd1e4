"""Copy utils.py and host.py into obligatorio.ipynb's helper cells, so that the notebook runs alone on Colab or Kaggle.

The two files are the single source (tests/ and experiments/ import them); the notebook carries a copy of each in a
folded cell tagged `helpers`, which writes it to a temporary folder, HELPERS, and imports it from there.
tests/test_notebook.py fails while a copy differs. Usage, from the repository root:

    python scripts/sync_notebook.py           # rewrite the helper cells from utils.py and host.py
    python scripts/sync_notebook.py --check   # exit 1 if they differ (changes nothing)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "obligatorio.ipynb"
FILES = ("utils.py", "host.py")  # in the notebook's order: one helper cell each


def header(name: str) -> str:
    """The magic that writes a helper cell to HELPERS (a folder the notebook's previous cell makes)."""
    return "%%writefile {HELPERS}/" + name + "\n"


def helpers_source(name: str) -> str:
    """A helper cell's source: the magic, then the file verbatim."""
    return header(name) + (ROOT / name).read_text()


def helper_cells(nb: dict) -> dict[str, dict]:
    """{file name: its code cell}: the cells tagged `helpers`, one per file of FILES, in that order."""
    cells = [c for c in nb["cells"] if "helpers" in c.get("metadata", {}).get("tags", [])]
    names = ["".join(c["source"]).split("\n", 1)[0].removeprefix(header("").strip()) for c in cells]
    if tuple(names) != FILES:
        sys.exit(f"{NOTEBOOK.name}: expected cells tagged 'helpers' writing {', '.join(FILES)} in that order, "
                 f"found {names}")
    return dict(zip(names, cells))


def main() -> int:
    nb = json.loads(NOTEBOOK.read_text())
    cells = helper_cells(nb)
    stale = [name for name, cell in cells.items() if "".join(cell["source"]) != helpers_source(name)]
    if not stale:
        print(f"{NOTEBOOK.name}: helper cells already equal {' and '.join(FILES)}")
        return 0
    if "--check" in sys.argv[1:]:
        print(f"{NOTEBOOK.name}: the copy of {' and '.join(stale)} differs; run python scripts/sync_notebook.py")
        return 1
    for name, cell in cells.items():
        cell["source"] = helpers_source(name).splitlines(keepends=True)
    NOTEBOOK.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"{NOTEBOOK.name}: helper cells rewritten from {' and '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
