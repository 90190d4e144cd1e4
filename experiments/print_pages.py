"""How many pages an executed notebook prints: nbconvert's HTML, printed to PDF by a headless Chromium.

    python experiments/print_pages.py outputs/obligatorio_<time>.ipynb            # the body: no helpers, no appendix
    python experiments/print_pages.py EXECUTED.ipynb --whole --pdf out.pdf        # every cell, and keep the PDF

Needs `pip install nbconvert` and Chromium (`apt-get install chromium`). The body leaves out the folded helper cells
(tagged `helpers`) and everything from the heading "## Apéndice A" on, as a grader printing the story would.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def body(nb: dict) -> dict:
    """The notebook without its helper cells and its appendix."""
    cells = []
    for c in nb["cells"]:
        if c["cell_type"] == "markdown" and "".join(c["source"]).startswith("## Apéndice A"):
            break
        if "helpers" not in c.get("metadata", {}).get("tags", []):
            cells.append(c)
    return {**nb, "cells": cells}


def pages(notebook: Path, whole: bool = False, pdf: Path | None = None) -> int:
    """Pages of the printed notebook (A4, Chromium's default margins)."""
    import nbformat
    from nbconvert import HTMLExporter

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: Chromium is not installed: apt-get install chromium (Debian/Ubuntu), then run again")
    nb = nbformat.read(notebook, as_version=4)
    html, _ = HTMLExporter().from_notebook_node(nb if whole else nbformat.from_dict(body(nb)))
    with tempfile.TemporaryDirectory() as tmp:
        page, out = Path(tmp) / "nb.html", Path(tmp) / "nb.pdf"
        page.write_text(html)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                        f"--user-data-dir={tmp}/profile", f"--print-to-pdf={out}", page.as_uri()],
                       check=True, capture_output=True, timeout=300)
        data = out.read_bytes()
        if pdf is not None:
            shutil.copy(out, pdf)
    return len(re.findall(rb"/Type\s*/Page\b", data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--whole", action="store_true", help="print every cell, helpers and appendix included")
    ap.add_argument("--pdf", type=Path, help="keep the PDF here")
    a = ap.parse_args()
    print(f"{a.notebook}: {pages(a.notebook, a.whole, a.pdf)} pages ({'whole' if a.whole else 'body'})")


if __name__ == "__main__":
    main()
