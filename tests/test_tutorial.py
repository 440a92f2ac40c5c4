"""docs/tutorial.ipynb runs top to bottom in a fresh kernel, and what it shows holds: the simulator equals
the quantized reference, and Lava equals the simulator."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.lava
def test_the_tutorial_runs_and_its_checks_hold():
    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    # per cell; the training cell takes about 2 min alone here, and over 15 min once it shared both cores with
    # other jobs
    NotebookClient(notebook, timeout=2400, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.outputs if o.get("name") == "stdout")
    assert "simulator == reference in every spike and current: True" in printed
    assert "Lava == simulator: True" in printed
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if "image/png" in
              o.get("data", {})]
    assert len(images) == 1  # the sample grid
