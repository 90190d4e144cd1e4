"""Copy utils.py into obligatorio.ipynb's helpers cell, so that the notebook runs alone on Colab or Kaggle.

utils.py is the single source (tests/ and experiments/ import it); the notebook carries a copy in its
folded cell tagged `helpers`, which writes that copy to a temporary folder and imports it from there.
tests/test_notebook.py fails while the two differ. Usage, from the repository root:

    python scripts/sync_notebook.py           # rewrite the helpers cell from utils.py
    python scripts/sync_notebook.py --check   # exit 1 if they differ (changes nothing)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK, UTILS = ROOT / "obligatorio.ipynb", ROOT / "utils.py"
HEADER = "%%writefile {HELPERS}\n"  # HELPERS: a path the notebook's previous cell makes


def helpers_source() -> str:
    """The helpers cell's source: the magic that writes it to HELPERS, then utils.py verbatim."""
    return HEADER + UTILS.read_text()


def helpers_cell(nb: dict) -> dict:
    """The one code cell tagged `helpers`."""
    cells = [c for c in nb["cells"] if "helpers" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        sys.exit(f"{NOTEBOOK.name}: expected one cell tagged 'helpers', found {len(cells)}")
    return cells[0]


def main() -> int:
    nb = json.loads(NOTEBOOK.read_text())
    cell = helpers_cell(nb)
    if "".join(cell["source"]) == helpers_source():
        print(f"{NOTEBOOK.name}: helpers cell already equals {UTILS.name}")
        return 0
    if "--check" in sys.argv[1:]:
        print(f"{NOTEBOOK.name}: helpers cell differs from {UTILS.name}; run python scripts/sync_notebook.py")
        return 1
    cell["source"] = helpers_source().splitlines(keepends=True)
    NOTEBOOK.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"{NOTEBOOK.name}: helpers cell rewritten from {UTILS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
