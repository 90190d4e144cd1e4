"""The notebook's code as the repository's tools read it: the cells with a tag, and what they define.

The U-Net is defined in obligatorio.ipynb, where graders read it, not in utils.py. The tests, the benchmark
and the experiments load it from the cells tagged `unet`, so that they exercise the notebook's own definition:

    from notebook_code import definitions
    UNet = definitions("unet")["UNet"]
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

NOTEBOOK = Path(__file__).resolve().parents[1] / "obligatorio.ipynb"


def cells(tag: str, notebook: Path = NOTEBOOK) -> list[str]:
    """Source of the notebook's code cells carrying `tag`, in order."""
    nb = json.loads(Path(notebook).read_text())
    return ["".join(c["source"]) for c in nb["cells"]
            if c["cell_type"] == "code" and tag in c.get("metadata", {}).get("tags", [])]


def definitions(*tags: str, notebook: Path = NOTEBOOK) -> dict:
    """The namespace after executing the cells with these tags, in notebook order (torch and nn preloaded)."""
    ns: dict = {"torch": torch, "nn": torch.nn}
    for tag in tags:
        found = cells(tag, notebook)
        if not found:
            raise LookupError(f"{notebook}: no code cell is tagged {tag!r}; tag the cell that defines it")
        for source in found:
            exec(source, ns)
    return ns
