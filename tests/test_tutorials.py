"""Execute every tutorial notebook end to end (real model: slow-ish, marked integration)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A `python3` kernel spec that runs this interpreter, found before any other on the path.

    Without it the spec could resolve to another Python (a user-level spec, a system Jupyter)
    that lacks tl_truth.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tl_truth tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def test_tutorials_exist():
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"


def test_tutorials_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name}: clear outputs (regenerate with tutorials/make_notebooks.py)"
                )


# The suite runs two tutorials on smaller slices: the same cells and code paths on fewer
# questions (the tutorials took 7 of `make test`'s 8.5 minutes, 04 alone 3.7). Each replaced
# text must be there, so a rewritten tutorial fails here instead of running at full size.
SMALLER = {
    "02_probe_grid.ipynb": [("limit=60)", "limit=40)")],
    "04_knows_more.ipynb": [("limit=40)", "limit=20)"), ("k=6,", "k=4,")],
}


def shrunk(nb, name: str):
    """`nb` with the replacements of `SMALLER[name]` applied to its code cells."""
    for old, new in SMALLER.get(name, []):
        cells = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
        assert cells, f"{name}: no code cell holds {old!r} (update SMALLER in this file)"
        for cell in cells:
            cell.source = cell.source.replace(old, new)
    return nb


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tutorial_runs(path, venv_kernel):
    nb = shrunk(nbformat.read(path, as_version=4), path.name)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name=venv_kernel,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
