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


@pytest.fixture(scope="module")
def shipped_captures():
    """Captures of one example scene by the shipped model: decoder sampling of the detections'
    queries, and one with no decoder sampling at all."""
    from PIL import Image

    import ddetr
    from ddetr.assets import default_checkpoint, example_dirs

    model, _ = ddetr.load(default_checkpoint())
    image = Image.open(example_dirs()["synthetic"] / "synthetic_01.png")
    with ddetr.capture(model, queries="detections", encoder=False) as with_decoder:
        model.predict(image)
    with ddetr.capture(model, encoder=False, decoder=False) as without:
        model.predict(image)
    return with_decoder.captures[0], without.captures[0]


def test_capture_html_draws_the_points_the_capture_holds(shipped_captures):
    """Every circle of the sketch is one (head, level, point) sample of the best detection's
    query at the last decoder layer, at its image position (scaled to the shown size)."""
    import re

    import numpy as np

    from ddetr.capture_html import MAX_SIDE

    cap = shipped_captures[0]
    html = cap._repr_html_()
    query, layer = int(cap.detections.query_index[0]), cap.decoder_layers[-1]
    pts = cap.decoder_points(layer=layer, query=query)
    scale = MAX_SIDE / max(cap.image.shape[:2])
    circles = np.array([[float(x), float(y)] for x, y in re.findall(r'<circle cx="([-\d.]+)" cy="([-\d.]+)"', html)])
    # Drawn lightest first (the heaviest on top).
    expected = (pts["image_px"].reshape(-1, 2) * scale)[np.argsort(pts["weights"].reshape(-1), kind="stable")]
    assert circles.shape == expected.shape == (cap.meta["n_heads"] * cap.meta["n_levels"] * cap.meta["n_points"], 2)
    np.testing.assert_allclose(circles, expected, atol=0.051)
    cx, cy = (np.asarray(pts["reference_image_px"])[0, :2] * scale).tolist()
    assert f'd="M{cx - 7:.1f},{cy:.1f}H{cx + 7:.1f}' in html  # the green cross on the reference
    assert f"(query {query}), decoder layer {layer}" in html
    assert "<script" not in html and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_capture_html_without_decoder_sampling_says_so(shipped_captures):
    html = shipped_captures[1]._repr_html_()
    assert "<svg" not in html and "decoder=True" in html
    assert html.startswith('<div class="ddetr-capture"')
