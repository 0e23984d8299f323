"""The A/B tab: without a server (fast) and in a real browser (slow): checkpoint B runs once on
the page's image, then A and B are drawn side by side for the selected detection."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddetr
from ddetr import faults
from ddetr.checkpoint import save
from explorer.models import LoadedModel, ModelRegistry
from explorer.session import Explorer
from explorer.state import SessionStore, UserError
from browser_page import (WAIT, chromium, needs_chromium, no_errors, open_page, open_tab, pick_example, served,
                          shot, wait_text)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "default_model.safetensors"
SCENE = ROOT / "examples" / "synthetic" / "synthetic_01.png"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A: the shipped model; B: the same with decoder layer 2 unable to read level 0."""
    torch.set_num_threads(2)
    model, report = ddetr.load(SHIPPED)
    b, _ = faults.starved_levels(model, "decoder", 2, level=0)
    path = save(b, tmp_path_factory.mktemp("ckpt") / "starved.safetensors")
    return LoadedModel("shipped", model, report), {"starved": path}


def test_compare_runs_b_once_and_draws_a_and_b(checkpoints):
    startup, paths = checkpoints
    x = Explorer(ModelRegistry(startup, paths), SessionStore(), {"synthetic": {SCENE.name: SCENE}})
    s = x.store.create("shipped")
    s.view.threshold = 0.3
    assert "Compare" in x.draw_tab(s, "compare").note or "image" in x.draw_tab(s, "compare").note
    x.run(s, SCENE, example=SCENE.name)
    with pytest.raises(UserError, match="unknown checkpoint"):
        x.run_action(s, "compare", "nope")
    assert "Compare" in x.draw_tab(s, "compare").note  # how to use it, before B ran
    drawn = x.run_action(s, "compare", "starved")
    assert x.registry.get("starved").runs == 1
    x.select_detection(s, 0)
    drawn = x.draw_tab(s, "compare")
    assert "B **starved**" in drawn.note and "level 0 -" in drawn.note
    assert [t.type for t in drawn.body.data].count("image") == 1
    x.set_view(s, layer=1)  # another layer: redrawn without running a model
    assert "decoder layer 1" in x.draw_tab(s, "compare").note and x.registry.get("starved").runs == 1


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_ab_view_in_the_browser(checkpoints):
    pytest.importorskip("playwright.sync_api")
    import app

    startup, paths = checkpoints
    demo = app.build_demo(startup, examples={"synthetic": {SCENE.name: SCENE}, "photos": {}}, checkpoints=paths,
                          threshold=0.3)
    with served(demo) as url, chromium() as browser:
        page = open_page(browser, url, ready="#tabs button[role=tab][data-tab-id=compare]")
        pick_example(page, SCENE.name)
        open_tab(page, "compare")
        wait_text(page, "#note-compare", "Compare")
        assert page.locator("#choice-compare input").input_value() == "starved"
        page.locator("#action-compare").click()
        wait_text(page, "#note-compare", "B starved")
        page.wait_for_selector("#plot-compare .js-plotly-plot", timeout=WAIT)
        shot(page, "compare")
        assert "level 0 -" in page.locator("#note-compare").inner_text()
        no_errors(page)
