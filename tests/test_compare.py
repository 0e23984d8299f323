"""A/B comparison: a checkpoint against itself changes nothing; a known change shows up where
it was made; the command writes both views and the numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ddetr
from ddetr import faults
from ddetr.capture import capture
from ddetr.diagnose import read_images
from viz.__main__ import main as viz_main
from viz.compare import (check_comparable, compare_figure, compare_figure_mpl, compare_query, layer_differences,
                         matching_query)

torch.set_num_threads(min(2, torch.get_num_threads()))
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "default_model.safetensors"
IMAGE = ROOT / "examples" / "synthetic" / "synthetic_01.png"


def _capture(model, image):
    with capture(model) as s:
        model.predict(image)
    return s.captures[0]


@pytest.fixture(scope="module")
def pair():
    model, _ = ddetr.load(SHIPPED)
    image = read_images(IMAGE.parent, 2)[1]
    starved, _ = faults.starved_levels(model, "decoder", 2, level=0)  # B: the last layer cannot read level 0
    return _capture(model, image), _capture(starved, image), _capture(model, image)


def test_a_checkpoint_against_itself_changes_nothing(pair):
    a, _, again = pair
    q = int(a.arrays["det/query_index"][0])
    d = compare_query(a, again, q)
    assert (d.query_b, d.iou) == (q, pytest.approx(1.0))
    np.testing.assert_allclose(d.level_mass_a, d.level_mass_b)
    assert np.all(d.weight_change == 0) and np.all(d.point_shift == 0)
    np.testing.assert_allclose(d.level_mass_a.sum(), 1.0, atol=1e-3)


def test_a_starved_level_shows_in_the_difference(pair):
    a, b, _ = pair
    q = int(a.arrays["det/query_index"][0])
    d = compare_query(a, b, q)
    assert d.layer == 2 and d.iou > 0.5
    assert d.level_mass_b[0] < 1e-3 < d.level_mass_a[0]
    assert d.level_mass_change[0] == pytest.approx(-d.level_mass_a[0], abs=1e-3)
    assert np.all(d.weight_change >= d.level_mass_a[0] * 0.5 - 1e-3)  # every head lost its level-0 mass
    before = compare_query(a, b, q, layer=1)  # earlier layers are the same model: same query, same weights
    assert before.query_b == q and np.allclose(before.weight_change, 0, atol=1e-3)
    layers = layer_differences(a, b)
    assert layers["decoder/2"]["level_mass"][1][0] < 1e-3 and layers["encoder/0"]["level_mass"][0] == \
        layers["encoder/0"]["level_mass"][1]


def test_matching_query_follows_the_box_not_the_index(pair):
    a, b, _ = pair
    q = int(a.arrays["det/query_index"][0])
    qb, iou = matching_query(a, b, q, layer=0)
    assert iou == pytest.approx(1.0) and qb == q  # layer 0 is identical in A and B


def test_incomparable_captures_are_refused(pair):
    a, _, _ = pair
    other = _capture(ddetr.load(SHIPPED)[0], read_images(IMAGE.parent, 1)[0])
    with pytest.raises(ValueError, match="different images"):
        check_comparable(a, other)
    odd = ddetr.build_model(ddetr.preset("small", n_points=2, num_classes=9)).eval()
    with pytest.raises(ValueError, match="n_points"):
        check_comparable(a, _capture(odd, a.image))


def test_figures_hold_both_views_and_the_differences(pair):
    a, b, _ = pair
    d = compare_query(a, b, int(a.arrays["det/query_index"][0]))
    fig = compare_figure(a, b, d)
    kinds = [t.type for t in fig.data]
    assert kinds.count("image") == 1 and kinds.count("bar") == 5
    assert fig.data[0].z.shape[1] > 2 * a.image.shape[1] * 0.5  # the two views side by side
    import matplotlib.pyplot as plt

    plt.close(compare_figure_mpl(a, b, d))


def test_compare_command(tmp_path):
    out = tmp_path / "ab"
    assert viz_main(["--compare", str(SHIPPED), str(SHIPPED), "--image", str(IMAGE), "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "compare.json").read_text())
    assert info["query"]["weight_change"] == [0.0] * 8 and set(info["layers"]) >= {"encoder/0", "decoder/2"}
    assert (out / "compare.png").stat().st_size > 0 and "plotly" in (out / "compare.html").read_text()[:200000]
    with pytest.raises(SystemExit) as e:
        viz_main(["--compare", str(SHIPPED), str(SHIPPED), "--out", str(out)])
    assert e.value.code == 2
