"""Run a notebook's code cells in order in one Python process, without Jupyter (papermill's -p, minus the kernel).

    python experiments/run_cells.py obligatorio.ipynb [-p NAME VALUE ...]

For machines that have the notebook's libraries but no papermill / nbclient / IPython (a bare GPU image): the
values given with -p are set right after the cell tagged `parameters`, as papermill does (a VALUE that reads as a
Python literal is one, anything else a string). `%%writefile PATH` cells are written to PATH (`{name}` expanded
from the notebook's variables, as IPython does); any other cell magic or shell escape stops the run with its cell
number. Figures use the Agg backend (nothing is shown), cell outputs go to stdout, display() prints text, and the
last lines report each cell's time and, on CUDA, the peak GPU memory.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path


def parse_value(text: str) -> object:
    """A -p value as papermill reads it: a Python literal (3, 0.5, True, None, "x") or else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cell_source(cell: dict, ns: dict, number: int, nb_path: Path) -> str | None:
    """The cell's Python source; a `%%writefile` cell is written out here and yields None."""
    src = "".join(cell["source"])
    first, _, body = src.partition("\n")
    if first.startswith("%%writefile"):
        target = Path(first.split(maxsplit=1)[1].strip().format(**ns))
        target.write_text(body)
        print(f"Writing {target}")
        return None
    for line in src.splitlines():
        if line.lstrip().startswith(("%", "!")):
            sys.exit(f"error: {nb_path} cell {number} uses IPython syntax this runner does not handle: "
                     f"{line.strip()!r}. Run the notebook with papermill or Jupyter instead.")
    return src


def display(*objs: object) -> None:
    """IPython's display() as text: tables (pandas) whole, anything else by repr."""
    for obj in objs:
        print(obj.to_string() if hasattr(obj, "to_string") else repr(obj))


def run(nb_path: Path, params: dict[str, object]) -> dict:
    """Execute the code cells of nb_path in one namespace; returns that namespace."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    cells = json.loads(nb_path.read_text())["cells"]
    if params and not any("parameters" in c["metadata"].get("tags", []) for c in cells):
        sys.exit(f"error: {nb_path} has no cell tagged 'parameters', so -p has nowhere to go")
    ns: dict = {"__name__": "__main__", "display": display}
    timings = []
    for number, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        src = cell_source(cell, ns, number, nb_path)
        t0 = time.perf_counter()
        if src:
            exec(compile(src, f"<{nb_path.name} cell {number}>", "exec"), ns)
        if "parameters" in cell["metadata"].get("tags", []) and params:
            ns.update(params)
            print("# parameters: " + ", ".join(f"{k} = {v!r}" for k, v in params.items()))
        timings.append((number, time.perf_counter() - t0))
    print("\n# cell times (s): " + ", ".join(f"{n}: {t:.1f}" for n, t in timings if t >= 0.5))
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gib = 2 ** 30
        print(f"# peak CUDA memory: {torch.cuda.max_memory_allocated() / gib:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / gib:.2f} GiB reserved (this process; training in other "
              f"processes, DEVICES > 1, is not counted)")
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path)
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args()
    run(args.notebook, {name: parse_value(value) for name, value in args.parameter})


if __name__ == "__main__":
    main()
