"""The A/B tab: without a server (fast) and in a real browser (slow): checkpoint B runs once on
the page's image, then A and B are drawn side by side for the selected detection."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

import ddetr
from ddetr import faults
from ddetr.checkpoint import save
from explorer.models import LoadedModel, ModelRegistry
from explorer.session import Explorer
from explorer.state import SessionStore, UserError

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


sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT = 90_000


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_ab_view_in_the_browser(checkpoints):
    import app

    startup, paths = checkpoints
    demo = app.build_demo(startup, examples={"synthetic": {SCENE.name: SCENE}, "photos": {}}, checkpoints=paths,
                          threshold=0.3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(**app.launch_kwargs(server_port=port, prevent_thread_lock=True, quiet=True))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#tabs button[role=tab][data-tab-id=compare]", timeout=WAIT)
            page.locator("#example input").click()
            page.locator("ul[role=listbox] li", has_text=SCENE.name).first.click()
            page.wait_for_selector("#att-image img", timeout=WAIT)
            page.locator("#tabs button[role=tab][data-tab-id=compare]").click()
            page.wait_for_function("() => (document.querySelector('#note-compare')?.innerText || '').includes('Compare')",
                                   timeout=WAIT)
            assert page.locator("#choice-compare input").input_value() == "starved"
            page.locator("#action-compare").click()
            page.wait_for_function("() => (document.querySelector('#note-compare')?.innerText || '')"
                                   ".includes('B starved')", timeout=WAIT)
            page.wait_for_selector("#plot-compare .js-plotly-plot", timeout=WAIT)
            artifacts = ROOT / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "browser_compare.png"), full_page=True)
            assert "level 0 -" in page.locator("#note-compare").inner_text()
            assert not errors, errors
            browser.close()
    finally:
        demo.close()
