"""examples/explore.ipynb runs top to bottom (nbclient, a real Jupyter kernel) and shows what it
promises: a Capture as HTML with the Figure-6 sketch, the plotly figure and the matplotlib one."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "explore.ipynb"


def _outputs(cell) -> dict:
    """mime type -> data of the cell's displayed results (execute_result / display_data)."""
    out = {}
    for o in cell.get("outputs", []):
        if o["output_type"] in ("execute_result", "display_data"):
            out.update(o["data"])
    return out


def test_committed_notebook_has_no_outputs():
    """Outputs (embedded images, plotly.js) would bloat the repository and go stale."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")


def test_example_notebook_executes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Run where a user of the checkout would: in examples/, with nothing on PYTHONPATH (the
    # notebook falls back to the checkout), and with no network.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=env)  # the kernel's environment (jupyter_client's start_kernel)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o["output_type"] != "error" for c in code for o in c.outputs)
    capture_html = _outputs(code[1])["text/html"]
    assert capture_html.startswith('<div class="ddetr-capture"') and "<svg" in capture_html
    assert "green cross = reference point" in capture_html and "data:image/jpeg;base64," in capture_html
    plotly = _outputs(code[2])
    assert "application/vnd.plotly.v1+json" in plotly or "plotly" in plotly.get("text/html", "")
    assert "image/png" in _outputs(code[3])
    printed = "".join(o.get("text", "") for o in code[4].outputs if o["output_type"] == "stream")
    assert "attention mass per level" in printed
