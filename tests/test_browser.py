"""A real browser: Debian's chromium driven by Playwright loads the page, runs an example, clicks
a detection on the image and a pixel beside it, and checks that the attention overlay appears.
Screenshots go to test-artifacts/ (gitignored). Never downloads a browser."""
import io
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")

import app  # noqa: E402
from ddetr.data.synthetic import render_scene  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("browser_examples")
    for i in range(2):
        render_scene(700 + i)[0].save(d / f"scene_{i}.png")
    examples = {"synthetic": {p.name: p for p in sorted(d.glob("*.png"))}, "photos": {}}
    demo = app.build_demo(app.random_model(0), examples=examples, threshold=0.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(**app.launch_kwargs(server_port=port, prevent_thread_lock=True, quiet=True))
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


def _wait(predicate, timeout=60.0, what=""):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = predicate()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _picture(page, selector) -> np.ndarray:
    src = page.get_attribute(f"{selector} img", "src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _click_image_px(page, selector, u, v):
    """Click display pixel (u, v) of the picture in ``selector`` (the <img> may be drawn scaled)."""
    img = page.locator(f"{selector} img")
    box = img.bounding_box()
    nat_w, nat_h = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    # object-fit: contain -> the picture is centred in its box at one scale
    k = min(box["width"] / nat_w, box["height"] / nat_h)
    ox, oy = (box["width"] - nat_w * k) / 2, (box["height"] - nat_h * k) / 2
    page.mouse.click(box["x"] + ox + (u + 0.5) * k, box["y"] + oy + (v + 0.5) * k)


def test_page_example_click_and_overlay(served):
    url, demo = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#example", timeout=60000)
        assert "RANDOM WEIGHTS" in page.inner_text("#header")
        page.screenshot(path=str(ARTIFACTS / "browser_0_loaded.png"), full_page=True)

        page.locator("#gallery-synthetic button.thumbnail-item").first.click()
        _wait(lambda: "scene_0.png" in page.inner_text("#status"), what="the example's detections")
        page.wait_for_selector("#det-image img", timeout=30000)
        page.screenshot(path=str(ARTIFACTS / "browser_1_example.png"), full_page=True)

        s = next(iter(demo.explorer.store._items.values()))
        scale = demo.explorer.scale(s)
        det = s.capture.detections
        # The smallest shown box: clicking its centre selects it (the smallest box holding the point).
        shown = [i for i, _ in demo.explorer.visible(s)]
        area = lambda i: float((det.boxes[i, 2] - det.boxes[i, 0]) * (det.boxes[i, 3] - det.boxes[i, 1]))  # noqa: E731
        i = min(shown, key=area)
        x0, y0, x1, y1 = det.boxes[i].tolist()
        before = _picture(page, "#att-image")
        _click_image_px(page, "#det-image", (x0 + x1) / 2 * scale - 0.5, (y0 + y1) / 2 * scale - 0.5)
        _wait(lambda: f"detection #{i}:" in page.inner_text("#status"), what=f"detection #{i} selected")
        _wait(lambda: not np.array_equal(_picture(page, "#att-image"), before), what="a new attention overlay")
        overlay = _picture(page, "#att-image")
        green = (overlay[..., 1] > 200) & (overlay[..., 0] < 60) & (overlay[..., 2] < 60)  # the reference cross
        assert green.sum() > 10
        page.screenshot(path=str(ARTIFACTS / "browser_2_detection.png"), full_page=True)
        page.locator("button[role=tab]", has_text="Learn").click()  # the lesson of the selected query
        _wait(lambda: "Reference point" in page.inner_text("#note-learn"), what="the lesson")
        page.screenshot(path=str(ARTIFACTS / "browser_3_learn.png"), full_page=True)

        # A click on the attention view: the encoder view of that pixel.
        h, w = overlay.shape[:2]
        _click_image_px(page, "#att-image", w // 4, h // 4)
        _wait(lambda: "encoder layer" in page.inner_text("#status"), what="the encoder view")
        _wait(lambda: "Select a detection" in page.inner_text("#note-learn"), what="the lesson asks for a detection")
        page.screenshot(path=str(ARTIFACTS / "browser_4_encoder.png"), full_page=True)

        # A view change (colour by weight) redraws without running the model again.
        runs = demo.explorer.registry.get(demo.explorer.registry.startup_name).runs
        before = _picture(page, "#att-image")
        page.locator("#color-by label", has_text="by attention weight").click()
        _wait(lambda: not np.array_equal(_picture(page, "#att-image"), before), what="recoloured points")
        assert demo.explorer.registry.get(demo.explorer.registry.startup_name).runs == runs
        assert not errors, errors
        browser.close()
