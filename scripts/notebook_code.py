"""The notebook's code as the repository's tools read it: the cells with a tag, and what they define.

The U-Net (cells tagged `unet`), the loss (`loss`) and the training step (`step`) are defined in
obligatorio.ipynb, where graders read them, not in utils.py. The tests, the benchmark and the experiments
load them from those cells, so that they exercise the notebook's own definitions:

    from notebook_code import definitions
    nb = definitions("unet", "loss", "step")
    nb["UNet"], nb["DiceBCELoss"], nb["train_one_epoch"]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "obligatorio.ipynb"


def cells(tag: str, notebook: Path = NOTEBOOK) -> list[str]:
    """Source of the notebook's code cells carrying `tag`, in order."""
    nb = json.loads(Path(notebook).read_text())
    return ["".join(c["source"]) for c in nb["cells"]
            if c["cell_type"] == "code" and tag in c.get("metadata", {}).get("tags", [])]


def definitions(*tags: str, notebook: Path = NOTEBOOK) -> dict:
    """The namespace after executing the cells with these tags, in this order, with the notebook's imports that
    those cells use (torch, nn, F, np, ndimage, and utils as U) preloaded."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import utils as U

    # a module name no import finds: cloudpickle sends these definitions by value, as it does the notebook's
    ns: dict = {"__name__": "obligatorio", "torch": torch, "nn": torch.nn, "F": F, "np": np, "ndimage": ndimage,
                "U": U}
    for tag in tags:
        found = cells(tag, notebook)
        if not found:
            raise LookupError(f"{notebook}: no code cell is tagged {tag!r}; tag the cell that defines it")
        for source in found:
            exec(source, ns)
    return ns
