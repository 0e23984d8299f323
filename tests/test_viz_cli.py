"""viz end to end: every view for the default model on an example image (plotly figures pass
plotly's full validation, matplotlib and raster renders are not blank), and
``python -m viz`` from an image and from a saved capture."""
import json
import re

import numpy as np
import pytest
from PIL import Image

import viz
from viz.__main__ import main
from viz.fastplot import validated


@pytest.fixture(scope="module")
def run(captured):
    return captured.model, captured.image, captured.capture, captured.path


def _not_blank(rgb):
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    assert rgb.astype(float).std() > 5


@pytest.mark.slow
def test_every_view_renders_for_the_default_model(run):
    from ddetr.gradients import box_gradients

    model, image, cap, _ = run
    q = int(cap.detections.query_index[0])
    h, w = cap.image.shape[:2]
    grads = box_gradients(model, image, q)
    enc = viz.Selection(layer=cap.encoder_layers[-1])
    scales = viz.Selection(merged=False, color_by="weight")
    plotly = [
        viz.query_figure(cap, q), viz.query_figure(cap, q, scales), viz.encoder_figure(cap, w / 3, h / 3, 2, enc),
        viz.grid_figure(cap, q), viz.heatmap_figure(cap, q), viz.heatmap_figure(cap, None, threshold=0.0),
        viz.refinement_figure(cap, q), viz.proposals_figure(cap, threshold=0.0), viz.stats_figure(cap, 0.0),
        viz.gradient_figure(cap.image, grads), viz.lesson_figure(cap, q), viz.detections_figure(cap, 0.0),
    ]
    for fig in plotly:
        validated(fig)  # raises on any property plotly does not know
        assert len(fig.data) > 1
    mpl = [
        viz.query_figure_mpl(cap, q), viz.query_figure_mpl(cap, q, scales), viz.encoder_figure_mpl(cap, w / 3, h / 3, 2, enc),
        viz.grid_figure_mpl(cap, q), viz.heatmap_figure_mpl(cap, q), viz.refinement_figure_mpl(cap, q),
        viz.proposals_figure_mpl(cap, threshold=0.0), viz.stats_figure_mpl(cap, 0.0), viz.gradient_figure_mpl(cap.image, grads),
        viz.lesson_figure_mpl(cap, q), viz.detections_figure_mpl(cap, 0.0),
    ]
    for fig in mpl:
        _not_blank(viz.figure_to_array(fig, dpi=60))
    raster = [
        viz.render_query_overlay(cap, q), viz.render_query_overlay(cap, q, scales),
        viz.render_encoder_overlay(cap, w / 3, h / 3, 2, enc), viz.render_grid(cap, q), viz.render_heatmap(cap, q),
        viz.render_refinement(cap, q), viz.render_proposals(cap, threshold=0.0), viz.render_gradient(cap.image, grads),
        viz.render_detections(cap, 0.0, selected=0),
    ]
    for rgb in raster:
        _not_blank(rgb)
    # Figure 5 data drawn as given: block averages of the gradient maps (same total, lower peak)
    for t in (t for t in plotly[9].data if t.type == "heatmap"):
        raw, avg, f = grads[t.meta], np.asarray(t.customdata), int(t.dx)
        assert avg.sum() * f * f == pytest.approx(raw[: avg.shape[0] * f, : avg.shape[1] * f].sum(), rel=1e-4)
        assert avg.max() <= raw.max() + 1e-9
    assert grads["score"].max() > 0


def test_cli_renders_a_saved_capture(run, tmp_path, capsys):
    _, _, cap, path = run
    out = tmp_path / "out"
    assert main(["--capture", str(path), "--out", str(out), "--threshold", "0", "--max-detections", "1",
                 "--formats", "png", "--quiet"]) == 0
    q = int(cap.detections.query_index[0])
    for stem in ("detections", "stats", "proposals", "heatmap_all", f"q{q}_query", f"q{q}_scales", f"q{q}_grid",
                 f"q{q}_heatmap", f"q{q}_refinement", f"q{q}_lesson", f"q{q}_encoder"):
        png = out / "figures" / f"{stem}.png"
        assert png.exists(), stem
        assert np.asarray(Image.open(png).convert("L")).std() > 5, stem
    assert not list((out / "figures").glob("*.svg"))  # --formats png
    md = (out / f"lesson_q{q}.md").read_text()
    assert "**6. Cost for this image**" in md
    html = (out / "report.html").read_text()
    assert html.count("<script type=\"application/json\"") >= 11
    figs = re.findall(r'<script type="application/json" id="fig\d+-json">(.*?)</script>', html, re.S)
    assert all(json.loads(f)["data"] for f in figs)


def test_cli_errors_name_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("viz.__main__.DEFAULT_CHECKPOINT", tmp_path / "default_model.safetensors")  # missing
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit):
        main(["--image", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
    assert "--untrained small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--capture", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")])
    assert "no capture file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--capture", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--formats", "gif"])
    assert "unknown formats" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_a_model_on_an_image(run, tmp_path):
    img = tmp_path / "scene.png"
    run[1].save(img)
    out = tmp_path / "out"
    assert main(["--image", str(img), "--untrained", "small", "--out", str(out), "--threshold", "0",
                 "--max-detections", "1", "--formats", "pdf", "--gradients", "1", "--quiet"]) == 0
    assert (out / "capture.npz").exists() and (out / "report.html").exists()
    pdfs = list((out / "figures").glob("*.pdf"))
    assert any(p.name.endswith("_gradients.pdf") for p in pdfs)
    assert all(p.read_bytes().startswith(b"%PDF") for p in pdfs)
