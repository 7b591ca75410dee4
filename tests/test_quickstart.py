"""examples/quickstart.ipynb: stored without outputs, and it runs top to bottom and learns `easy`."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # end to end: see docs/development.md for the fast tier

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 7
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_runs_and_learns(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The test reads the notebook's history back through one extra cell, appended to this copy only.
    nb.cells.append(nbformat.v4.new_code_cell("import json; print('HISTORY' + json.dumps(history))"))
    monkeypatch.setenv("QRSU_DATA_DIR", os.fspath(tmp_path / "data"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": os.fspath(tmp_path)}}).execute()
    except Exception as e:  # nbclient's CellExecutionError carries the failing cell's traceback
        pytest.fail(f"the quickstart notebook failed: {e}")
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    history = json.loads(printed.split("HISTORY", 1)[1])
    assert len(history["test_acc"]) == 10
    assert history["test_acc"][-1] >= 0.99  # the seed notebook's default level, learnt
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert (tmp_path / "data").is_dir()  # the dataset went where QRSU_DATA_DIR points
