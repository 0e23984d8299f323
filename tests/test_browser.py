"""The page in a real browser: Debian's chromium driven by Playwright, at 1440x900 and 1024x768.

One server for the module (a seeded random `small` model, two synthetic examples) and one page
per viewport size, reused by the tests in order. Every wait is a Playwright wait on the page,
never a sleep. Screenshots go to test-artifacts/ (gitignored). Never downloads a browser.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")

import app  # noqa: E402
from browser_page import (BROWSER_MODULE, WAIT, chromium, no_errors, open_page, open_tab, pick_example,  # noqa: E402
                          served, shot, wait_text)
from ddetr.data.synthetic import render_scene  # noqa: E402

SIZES = [(1440, 900), (1024, 768)]

pytestmark = BROWSER_MODULE


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, demo): a seeded random `small` model and two synthetic examples."""
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("browser_examples")
    for i in range(2):
        render_scene(700 + i)[0].save(d / f"scene_{i}.png")
    examples = {"synthetic": {p.name: p for p in sorted(d.glob("*.png"))}, "photos": {}}
    demo = app.build_demo(app.random_model(0), examples=examples, threshold=0.0)
    with served(demo) as url:
        yield url, demo


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def page(request, browser, server):
    """A page of one viewport size, shared by this module's tests; its errors collected."""
    pg = open_page(browser, server[0], request.param)
    yield pg
    pg.close()


def tab_labels(page) -> list[str]:
    return page.eval_on_selector_all("#tabs button[role=tab]", "els => els.map(e => e.innerText.trim())")


def picture(page, selector) -> np.ndarray:
    src = page.get_attribute(f"{selector} img", "src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def click_picture(page, selector, u, v) -> None:
    """Click pixel (u, v) of the picture in ``selector`` (object-fit: contain, centred)."""
    img = page.locator(f"{selector} img")
    img.scroll_into_view_if_needed()
    box = img.bounding_box()
    nat_w, nat_h = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    k = min(box["width"] / nat_w, box["height"] / nat_h)
    ox, oy = (box["width"] - nat_w * k) / 2, (box["height"] - nat_h * k) / 2
    page.mouse.click(box["x"] + ox + (u + 0.5) * k, box["y"] + oy + (v + 0.5) * k)



def test_tab_bar_stays_whole(page):
    """Each tab clicked twice, in order and in reverse: the same labels, once each, every time."""
    expected = [t.title for t in app.TABS.values()]
    assert tab_labels(page) == expected
    ids = list(app.TABS)
    for tab_id in ids + ids[::-1]:
        for _ in range(2):
            open_tab(page, tab_id)
            labels = tab_labels(page)
            assert sorted(labels) == sorted(expected) and len(set(labels)) == len(labels), (tab_id, labels)
    shot(page, "0_tabs")
    no_errors(page)


def test_a_tab_opened_before_the_image_fills_in(page):
    open_tab(page, "learn")
    wait_text(page, "#note-learn", "Run an image first")
    page.locator("#gallery-synthetic button.thumbnail-item").first.click()
    wait_text(page, "#status", "scene_0.png")
    wait_text(page, "#note-learn", "this page's image")  # filled in without leaving the tab
    assert page.input_value("#example input") == "scene_0.png"  # the gallery choice is the Example too
    shot(page, "1_learn_after_image")
    no_errors(page)


def test_pictures_controls_and_status_fit_the_screen(page):
    pick_example(page, "scene_1.png")
    page.evaluate("window.scrollTo(0, 0)")
    w, h = page.size
    for sel in ("#det-image img", "#att-image img", "#status", "#layer", "#heads", "#levels", "#color-by",
                "#layout", "#follow-head", "#top-k", "#zoom"):
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= w + 1 \
            and box["y"] + box["height"] <= h + 1, (sel, box, page.size)
    assert not page.locator("#upload").is_visible()  # the upload area folds away once an image is in
    shot(page, "2_fits")
    no_errors(page)


def test_every_tab_shows_content_after_an_image(page):
    for tab_id, tab in app.TABS.items():
        open_tab(page, tab_id)
        body = {"plot": f"#plot-{tab_id} .js-plotly-plot, #plot-{tab_id} img",
                "image": f"#image-{tab_id} img", "markdown": f"#body-{tab_id} pre"}.get(tab.body)
        if body and tab_id not in ("gradients", "compare"):  # these two draw after their button
            page.wait_for_selector(body, timeout=WAIT)
        else:
            page.wait_for_function("id => { const t = document.querySelector('#note-' + id)?.innerText || '';"
                                   " return t.trim() && !t.includes('Run an image first'); }", arg=tab_id,
                                   timeout=WAIT)
    shot(page, "3_tabs_with_content")
    no_errors(page)


def test_unticking_every_head_leaves_the_pictures(page):
    open_tab(page, "interactive")
    boxes = page.locator("#heads input[type=checkbox]")
    checked = [i for i in range(boxes.count()) if boxes.nth(i).is_checked()]
    for i in checked[:-1]:
        boxes.nth(i).click()
    page.wait_for_function("h => location.search.includes('heads=' + h + '&')", arg=checked[-1], timeout=WAIT)
    before = picture(page, "#att-image")
    boxes.nth(checked[-1]).click()  # the last one
    wait_text(page, "#notice", "select at least one head")
    assert page.locator("#heads input[type=checkbox]:checked").count() >= 1  # the control goes back
    assert np.array_equal(picture(page, "#att-image"), before)
    assert page.locator("#det-image img").is_visible() and page.locator("#att-image img").is_visible()
    shot(page, "4_refused_change")
    no_errors(page)


def test_grid_cell_click_selects_its_layer_and_head(page, server):
    open_tab(page, "grid")
    # The grid of this selection has arrived (with the link to it) and its pixels are loaded.
    page.wait_for_function("() => location.search.includes('tab=grid')", timeout=WAIT)
    page.wait_for_function("() => { const i = document.querySelector('#image-grid img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=WAIT)
    img = page.locator("#image-grid img")
    nat_w, nat_h = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    cfg = server[1].explorer.registry.get(server[1].explorer.registry.startup_name).model.cfg
    row, col = 1, 5
    click_picture(page, "#image-grid", (col + 0.5) * nat_w / cfg.n_heads, (row + 0.5) * nat_h / cfg.dec_layers)
    wait_text(page, "#status", f"decoder layer {row},")
    page.wait_for_function("c => [...document.querySelectorAll('#heads input[type=checkbox]')]"
                           ".filter(e => e.checked).map(e => e.parentElement.innerText.trim()).join() === String(c)",
                           arg=col, timeout=WAIT)
    assert page.input_value("#layer input[type=number]") == str(row)
    assert page.input_value("#follow-head input") == f"head {col}"
    shot(page, "5_grid_click")
    no_errors(page)


def test_clicks_on_the_attention_view_in_both_layouts(page):
    for layout in ("across scales", "merged"):
        page.locator("#layout label", has_text=layout).click()
        page.wait_for_function("() => !document.querySelector('#att-image .wrap.pending')", timeout=WAIT)
        wait_text(page, "#status", "Showing")
        att = picture(page, "#att-image")
        click_picture(page, "#att-image", att.shape[1] // 5, att.shape[0] // 5)
        page.wait_for_function("() => /encoder layer|Point/.test(document.querySelector('#status').innerText)",
                               timeout=WAIT)
    no_errors(page)


def test_hovering_a_point_outlines_the_cells_it_reads(page):
    """The pointer over a sampling point (no click): its numbers and its read cells appear over
    the picture at once; off the points they go away."""
    import json

    page.wait_for_function("() => !document.querySelector('#att-image .wrap.pending')", timeout=WAIT)
    page.wait_for_function("() => { const i = document.querySelector('#att-image img'), m = document.querySelector("
                           "'#att-hover-map'); return i && i.complete && m && JSON.parse(m.dataset.map).w === "
                           "i.naturalWidth; }", timeout=WAIT)
    m = json.loads(page.get_attribute("#att-hover-map", "data-map"))
    # a point no other point's hit circle covers: the pointer there can only mean it
    alone = [p for p in m["pts"] if p[5] and not any(q is not p and np.hypot(q[0] - p[0], q[1] - p[1]) <= q[2]
                                                     for q in m["pts"])]
    assert alone, "every point overlaps another one"
    u, v, r, w, text, cells = max(alone, key=lambda p: p[3])
    img = page.locator("#att-image img")
    img.scroll_into_view_if_needed()
    box = img.bounding_box()
    k = min(box["width"] / m["w"], box["height"] / m["h"])
    ox, oy = (box["width"] - m["w"] * k) / 2, (box["height"] - m["h"] * k) / 2
    x, y = box["x"] + ox + u * k, box["y"] + oy + v * k
    for _ in range(3):  # a move that lands while a redraw is in flight is answered by the next one
        page.mouse.move(x - 3 * r * k, y + 3 * r * k)
        page.mouse.move(x, y)
        try:
            page.wait_for_selector("#att-hover-tip", state="visible", timeout=5_000)
            break
        except sync_api.TimeoutError:
            pass
    else:
        state = page.evaluate("([x, y]) => { const i = document.querySelector('#att-image img'), e = "
                              "document.elementFromPoint(x, y); return {natural: [i.naturalWidth, i.naturalHeight], "
                              "under: e && (e.id || e.tagName), map: JSON.parse(document.querySelector("
                              "'#att-hover-map').dataset.map).w}; }", [x, y])
        raise AssertionError(f"no hover tip at ({x:.0f}, {y:.0f}) for {text!r}: {state}")
    assert page.inner_text("#att-hover-tip") == text
    assert page.locator("#att-hover-svg rect.cell").count() == len(cells)
    shot(page, "5b_hover")
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] + 40)  # off the picture
    page.wait_for_selector("#att-hover-tip", state="hidden", timeout=WAIT)
    no_errors(page)


def test_a_link_restores_the_view(page, server):
    url = server[0] + "?example=scene_1.png&det=2&layer=1&heads=2,5&levels=0,1&tab=learn"
    page.goto("about:blank")  # leaving the page aborts its event stream: not an error of the page
    page.errors.clear()
    page.goto(url)
    wait_text(page, "#status", "scene_1.png")
    wait_text(page, "#status", "detection #2")
    wait_text(page, "#status", "decoder layer 1,")
    page.wait_for_selector("#tabs button[role=tab][data-tab-id=learn][aria-selected=true]", timeout=WAIT)
    checked = page.eval_on_selector_all("#heads input[type=checkbox]:checked",
                                        "els => els.map(e => e.parentElement.innerText.trim())")
    assert checked == ["2", "5"]
    levels = page.eval_on_selector_all("#levels input[type=checkbox]:checked",
                                       "els => els.map(e => e.parentElement.innerText.trim())")
    assert levels == ["0", "1"]
    wait_text(page, "#note-learn", "this page's image")  # the tab on screen is drawn
    assert "example=scene_1.png" in page.evaluate("location.search")
    shot(page, "6_link")
    no_errors(page)
