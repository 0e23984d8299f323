"""The Learn tab in a real browser (chromium via Playwright, 1440x900), with the shipped model:
it opens on the teaching example, Next / Prev walk every step, a click on a point follows it,
'what if' changes the shown output, and 'how it learned' shows the snapshots in order."""
import re

import numpy as np
import pytest
import torch

pytest.importorskip("playwright.sync_api")

import app  # noqa: E402
import ddetr  # noqa: E402
from ddetr.assets import default_checkpoint  # noqa: E402
from ddetr.data.synthetic import render_scene  # noqa: E402
from explorer import learn  # noqa: E402
from browser_page import (BROWSER_MODULE, WAIT, chromium, no_errors, open_page, open_tab, served,  # noqa: E402
                          shot, wait_text)
from viz.learn_steps import STEPS, step_labels  # noqa: E402

pytestmark = [*BROWSER_MODULE,
              pytest.mark.skipif(default_checkpoint(required=False) is None, reason="the shipped model is missing")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("learn_examples")
    render_scene(700)[0].save(d / "scene_0.png")
    model, report = ddetr.load(str(default_checkpoint()))
    demo = app.build_demo(model, report, examples={"synthetic": {"scene_0.png": d / "scene_0.png"}, "photos": {}})
    with served(demo) as url:
        yield url, model


@pytest.fixture(scope="module")
def page(server):
    with chromium() as b:
        yield open_page(b, server[0])


def step_value(page) -> str:
    return page.input_value("#learn-step input")


def test_learn_opens_on_the_teaching_example(page):
    open_tab(page, "learn")
    q = learn.teaching_example()["query"]
    wait_text(page, "#learn-focus", f"decoder query {q}")
    wait_text(page, "#learn-text", "feature pyramid")
    page.wait_for_selector("#learn-plot .js-plotly-plot", timeout=WAIT)
    assert step_value(page) == step_labels()[0]
    shot(page, "learn_0_open")
    no_errors(page)


def test_next_and_prev_walk_every_step(page):
    labels, texts = step_labels(), []
    for i in range(len(STEPS)):
        if i:
            page.click("#learn-next")
        page.wait_for_function("([s, v]) => document.querySelector(s)?.value === v", arg=["#learn-step input", labels[i]],
                               timeout=WAIT)
        wait_text(page, "#learn-text", STEPS[i].title.split()[0])
        page.wait_for_selector("#learn-plot .js-plotly-plot .main-svg", timeout=WAIT)
        texts.append(page.inner_text("#learn-text"))
    assert len(set(texts)) == len(STEPS)  # every step its own text
    page.click("#learn-next")  # past the end: stays on the last step
    page.wait_for_timeout(500)
    for i in range(len(STEPS) - 2, -1, -1):
        page.click("#learn-prev")
        page.wait_for_function("([s, v]) => document.querySelector(s)?.value === v", arg=["#learn-step input", labels[i]],
                               timeout=WAIT)
    wait_text(page, "#learn-text", "feature pyramid")
    no_errors(page)


def test_clicking_a_point_follows_it(page, server):
    model = server[1]
    cap = learn.teaching_capture(model)
    f = learn.learn_focus(cap, learn.teaching_state(cap))
    # a point of another head than the followed one, away from the others
    m = (f.shown_head + 3) % f.n_heads
    l, p = np.unravel_index(int(np.argmax(f.weights[m])), f.weights[m].shape)
    before = page.inner_text("#learn-focus")
    assert f"head {m}, level {l}, point {p}" not in before
    img = page.locator("#learn-picture img")
    img.scroll_into_view_if_needed()
    box = img.bounding_box()
    natural = page.evaluate("() => { const i = document.querySelector('#learn-picture img');"
                            " return [i.naturalWidth, i.naturalHeight]; }")
    from viz.raster import display_scale

    scale = display_scale(cap.image.shape, 560)
    u, v = f.image_px[m, l, p] * scale
    shown = min(box["width"] / natural[0], box["height"] / natural[1])  # object-fit: contain
    ox = box["x"] + (box["width"] - natural[0] * shown) / 2
    oy = box["y"] + (box["height"] - natural[1] * shown) / 2
    page.mouse.click(ox + u * shown, oy + v * shown)
    wait_text(page, "#learn-focus", f"head {m}, level {l}, point {p}")
    shot(page, "learn_1_clicked")
    no_errors(page)


def test_what_if_changes_the_shown_output(page):
    page.fill("#learn-whatif-dx input[type=number]", "2")
    page.press("#learn-whatif-dx input[type=number]", "Enter")
    page.click("#learn-whatif-run")
    wait_text(page, "#learn-whatif-text", "changes by")
    text = page.inner_text("#learn-whatif-text")
    change = float(re.search(r"changes by ([\d.]+)%", text).group(1))
    assert change > 0 and "+2.00" in text
    page.wait_for_selector("#learn-whatif-plot .js-plotly-plot", timeout=WAIT)
    no_errors(page)


def test_snapshots_in_training_order(page):
    page.locator("button", has_text="How it learned").first.click()
    page.click("#learn-history-run")
    wait_text(page, "#learn-history-text", "initialization")
    rows = page.eval_on_selector_all("#learn-history-text tbody tr", "rs => rs.map(r => r.cells[0].innerText)")
    assert len(rows) >= 5 and rows[0] == "initialization"
    steps = [int(r.split()[1]) for r in rows[1:]]
    assert steps == sorted(steps)
    page.wait_for_selector("#learn-history-plot .js-plotly-plot", timeout=WAIT)
    shot(page, "learn_2_history")
    no_errors(page)
