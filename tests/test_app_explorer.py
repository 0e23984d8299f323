"""The explorer's session owner and tab registry, without Gradio or a server: fast."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer import urlstate
from explorer.models import ModelRegistry
from explorer.session import Explorer
from explorer.state import SessionStore, UserError
from explorer.views import TABS, Drawn, Tab, draw, register

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    from ddetr.data.synthetic import render_scene
    from app import random_model

    d = tmp_path_factory.mktemp("examples")
    render_scene(11)[0].save(d / "scene.png")
    torch.set_num_threads(2)
    return Explorer(ModelRegistry(random_model(0)), SessionStore(), {"synthetic": {"scene.png": d / "scene.png"}})


@pytest.fixture
def session(explorer):
    s = explorer.store.create(explorer.registry.startup_name)
    s.view.threshold = 0.0
    explorer.run(s, explorer.example_path("scene.png"), example="scene.png")
    return s


def test_nothing_here_imports_gradio():
    code = ("import sys; import explorer.session, explorer.views, explorer.status, explorer.urlstate; "
            "sys.exit('gradio' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_registry_entries_are_unique_and_a_new_tab_is_one_entry(session, explorer):
    assert list(TABS)[:3] == ["interactive", "trajectory", "proposals"] and len(set(TABS)) == len(TABS)
    with pytest.raises(ValueError, match="twice"):
        register(Tab("grid", "again", "", lambda c, s, v: Drawn()))
    with pytest.raises(ValueError, match="body"):
        Tab("x", "x", "", lambda c, s, v: Drawn(), body="video")
    register(Tab("probe", "Probe", "help", lambda c, sel, v: Drawn(f"query {sel.query} layer {sel.decoder.layer}"),
                 body="markdown"))
    try:
        assert explorer.draw_tab(session, "probe").note == f"query {explorer.query(session)} layer -1"
    finally:
        del TABS["probe"]


def test_every_tab_draws_for_a_detection_and_for_a_pixel(explorer, session):
    for target in (("detection", 0), ("pixel", (20.0, 30.0))):
        session.target = target
        for tab_id in TABS:
            drawn = explorer.draw_tab(session, tab_id)
            assert isinstance(drawn, Drawn) and (drawn.note or drawn.body is not None), (target, tab_id)
    assert draw("learn", None, None, session.view).note.startswith("*Run an image first")


def test_a_refused_change_changes_nothing(explorer, session):
    explorer.set_view(session, layer=1, heads=(2, 3))
    before = (session.view, session.target)
    for bad in (dict(heads=()), dict(levels=()), dict(heads=(99,)), dict(enc_level=9), dict(layer=42)):
        with pytest.raises(UserError):
            explorer.set_view(session, **bad)
        assert (session.view, session.target) == before


def test_clicking_a_point_picks_it_and_names_the_cells_it_reads(explorer, session):
    from explorer.status import status

    for merged in (True, False):
        explorer.set_view(session, merged=merged, heads=None)
        session.target = ("detection", 0)
        table, _ = explorer.table(session)
        k = int(np.argmax(table.weight))
        panel = next(p for p in explorer.attention_panels(session) if p.level in (None, int(table.level[k])))
        x, y = table.image_px[k]
        explorer.click_attention(session, panel.left + (x - panel.origin[0]) * panel.scale - 0.5,
                                 panel.top + (y - panel.origin[1]) * panel.scale - 0.5)
        assert session.point == (int(table.head[k]), int(table.level[k]), int(table.point[k]))
        assert session.target == ("detection", 0)
        assert f"head {table.head[k]} · level {table.level[k]}" in status(explorer, session)


def test_the_hover_map_names_what_a_click_there_picks(explorer, session):
    """Every point the attention picture draws is in the hover map, at its place in the picture,
    with the cells a click there names; a click at a map entry picks that point."""
    from explorer.hover import hover_map
    from viz.canvas import level_grid_lines
    from viz.overlay import read_cells

    for merged in (True, False):
        explorer.set_view(session, merged=merged, heads=None)
        session.target = ("detection", 0)
        table, _ = explorer.table(session)
        panels = explorer.attention_panels(session)
        m = hover_map(explorer, session)
        pic = explorer.attention_image(session)
        assert (m["w"], m["h"]) == (pic.shape[1], pic.shape[0])
        assert len(m["pts"]) == len(table)  # one panel per point: merged, or its level's
        heaviest = max(m["pts"], key=lambda p: p[3])
        u, v, r, w, text, cells = heaviest
        k = int(np.argmax(table.weight))
        assert w == pytest.approx(float(table.weight[k]))
        assert text.startswith(f"head {table.head[k]} · level {table.level[k]} · point {table.point[k]} ·")
        lvl = int(table.level[k])
        panel = next(p for p in panels if p.level in (None, lvl))
        assert (u, v) == pytest.approx((panel.left + (table.image_px[k, 0] - panel.origin[0]) * panel.scale,
                                        panel.top + (table.image_px[k, 1] - panel.origin[1]) * panel.scale), abs=0.06)
        xs, ys = level_grid_lines(session.capture.geometry, lvl)
        expect = [(panel.left + (xs[cx] - panel.origin[0]) * panel.scale,
                   panel.top + (ys[cy] - panel.origin[1]) * panel.scale, bw)
                  for cx, cy, bw in read_cells(table.level_px[k], session.capture.geometry.valid_wh[lvl])]
        assert len(expect) >= 1
        np.testing.assert_allclose([(c[0], c[1], c[4]) for c in cells], expect, atol=0.06)
        explorer.click_attention(session, u - 0.5, v - 0.5)  # the same pixel the pointer is over
        assert session.point == (int(table.head[k]), int(table.level[k]), int(table.point[k]))
    session.target = None
    assert hover_map(explorer, session) is None


def test_read_cells_match_grid_sample():
    """The four cells and weights named for a point are grid_sample's (align_corners=False)."""
    from viz.overlay import read_cells

    rng = np.random.default_rng(0)
    H, W = 5, 7
    fmap = torch.tensor(rng.random((1, 1, H, W)))
    for _ in range(50):
        px = rng.uniform(-0.4, [W + 0.4, H + 0.4])  # level pixels, cell centres at i + 0.5
        grid = torch.tensor(px / [W, H] * 2 - 1).view(1, 1, 1, 2)
        ref = torch.nn.functional.grid_sample(fmap, grid, mode="bilinear", padding_mode="zeros",
                                              align_corners=False).item()
        ours = sum(w * float(fmap[0, 0, cy, cx]) for cx, cy, w in read_cells(px, (W, H)))
        assert ours == pytest.approx(ref, abs=1e-9)


def test_grid_click_selects_that_layer_and_single_head(explorer, session):
    session.target = ("detection", 0)
    shape = explorer.draw_tab(session, "grid").body.shape[:2]
    layers, heads = session.capture.decoder_layers, session.capture.meta["n_heads"]
    h, w = shape
    for r, c in ((0, 0), (len(layers) - 1, heads - 1), (1, 3)):
        explorer.click_tab(session, "grid", (c + 0.5) * w / heads, (r + 0.5) * h / len(layers))
        assert session.view.layer == layers[r] and session.view.heads == (c,)


def test_url_state_round_trip(explorer, session):
    explorer.select_detection(session, 2)
    explorer.set_view(session, layer=1, heads=(0, 5), levels=(1, 2))
    session.active_tab = "learn"
    q = urlstate.encode(urlstate.of_session(explorer, session))
    assert q == "example=scene.png&det=2&layer=1&heads=0,5&levels=1,2&tab=learn"
    from urllib.parse import parse_qsl

    st = urlstate.parse(dict(parse_qsl(q)))
    assert (st.example, st.det, st.layer, st.heads, st.levels, st.tab) == ("scene.png", 2, 1, (0, 5), (1, 2), "learn")
    assert urlstate.parse({"det": "two", "heads": "1,x"}).problems
    session.example = None  # an upload
    assert urlstate.encode(urlstate.of_session(explorer, session)) == ""


def test_pictures_are_drawn_at_the_size_shown(explorer, session):
    explorer.set_box(session, 500, 300)
    h, w = session.capture.image.shape[:2]
    pic = explorer.detections_image(session)
    assert max(pic.shape[1] / 500, pic.shape[0] / 300) == pytest.approx(1.0, abs=0.01)
    assert explorer.attention_image(session).shape[1] <= 500 and explorer.attention_image(session).shape[0] <= 300
    explorer.set_view(session, zoom=True)
    x0, y0, x1, y1 = explorer.zoom_rect(session)
    assert (x1 - x0) * (y1 - y0) <= w * h


def test_bf16_explorer_captures_what_a_bf16_predict_gives(explorer, tmp_path):
    """``--precision bf16`` reaches the model: the session's detections are those of
    ``predict(precision="bf16")``, and fp32 detections differ from them."""
    from ddetr.data.synthetic import render_scene

    image = render_scene(11)[0]
    bf16 = Explorer(explorer.registry, SessionStore(), explorer.examples, precision="bf16")
    s = bf16.store.create(bf16.registry.startup_name)
    bf16.run(s, bf16.example_path("scene.png"), example="scene.png")
    model = bf16.registry.get(bf16.registry.startup_name).model
    want = model.predict(image, precision="bf16")[0]
    got = s.capture.detections
    assert torch.equal(torch.as_tensor(np.asarray(got.scores)), want.scores)
    fp32 = model.predict(image)[0]
    assert not torch.equal(fp32.scores, want.scores)  # the precision really changed the computation


def test_precision_flag_is_checked(tmp_path):
    from explorer.cli import parse_args

    assert parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parse_args(["--precision", "fp16"])
