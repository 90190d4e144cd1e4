"""experiments/run_cells.py: the notebook's cells without Jupyter (for the GPU image, which has no papermill)."""
import importlib.util
import json
import subprocess
import sys

import pytest
from support import ROOT

spec = importlib.util.spec_from_file_location("run_cells", ROOT / "experiments" / "run_cells.py")
run_cells = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_cells)


def notebook(path, *cells) -> None:
    """Write a minimal notebook of (source, tags) code cells and one markdown cell."""
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# title\n", "!not code"]}]
          + [{"cell_type": "code", "metadata": {"tags": tags}, "source": src, "outputs": [], "execution_count": None}
             for src, tags in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def test_parameters_are_set_after_their_cell_and_writefile_expands_variables(tmp_path, capsys):
    nb = tmp_path / "nb.ipynb"
    notebook(nb, ("A = 1\nB = 'x'\nC = None\n", ["parameters"]),
             (f"OUT = {str(tmp_path / 'h.py')!r}\n", []),
             ("%%writefile {OUT}\nVALUE = A * 10\n", []),
             ("exec(open(OUT).read())\nimport pandas as pd\ndisplay(pd.DataFrame({'col': [B]}))\n", []))
    ns = run_cells.run(nb, {"A": 3, "C": "demo"})
    assert (tmp_path / "h.py").read_text() == "VALUE = A * 10\n"
    assert ns["VALUE"] == 30 and ns["B"] == "x" and ns["C"] == "demo"  # -p values win, the others stay
    assert "col" in capsys.readouterr().out  # display() printed the table as text


def test_values_parse_like_papermill():
    assert [run_cells.parse_value(v) for v in ("3", "0.5", "True", "None", "'a b'", "/tmp/x", "demo")] == \
        [3, 0.5, True, None, "a b", "/tmp/x", "demo"]


def test_other_ipython_syntax_and_missing_parameters_cell_stop_with_the_cell_number(tmp_path):
    nb = tmp_path / "nb.ipynb"
    notebook(nb, ("x = 1\n", ["parameters"]), ("!pip install something\n", []))
    with pytest.raises(SystemExit, match=r"cell 2 uses IPython syntax.*!pip install something"):
        run_cells.run(nb, {})
    notebook(nb, ("x = 1\n", []))
    with pytest.raises(SystemExit, match="no cell tagged 'parameters'"):
        run_cells.run(nb, {"x": 2})


def test_command_line_runs_a_notebook(tmp_path):
    nb = tmp_path / "nb.ipynb"
    notebook(nb, ("N = 1\n", ["parameters"]), ("print('N is', N * 2)\n", []))
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_cells.py"), str(nb), "-p", "N", "21"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "N is 42" in done.stdout and "# parameters: N = 21" in done.stdout
