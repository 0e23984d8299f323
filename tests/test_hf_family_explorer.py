"""The explorer on transformers detectors (ddetr.hf_family): a Grounding DINO folder with its
prompt box, and RT-DETR, whose views that need a deformable encoder say so. Plain Python
first, then the page in chromium (tests/test_browser.py's setup)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ddetr
from ddetr.hf_family.configs import image_processor, tiny_config, tiny_tokenizer

transformers = pytest.importorskip("transformers")
gr = pytest.importorskip("gradio")

from browser_page import WAIT, chromium, needs_chromium, no_errors, open_page, served  # noqa: E402
from explorer.page import build_demo  # noqa: E402
from explorer.state import UserError  # noqa: E402
from explorer.views import TABS  # noqa: E402

PROMPT = "cat. remote control."


def save(folder, model_type: str, cls: str, size: int):
    torch.manual_seed(0)
    getattr(transformers, cls)(tiny_config(model_type)).save_pretrained(folder)
    image_processor(model_type, size).save_pretrained(folder)
    if model_type == "grounding-dino":
        tiny_tokenizer(folder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("families")
    image = d / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 110, 3), dtype=np.uint8)).save(image)
    return {"grounding-dino": save(d / "gd", "grounding-dino", "GroundingDinoForObjectDetection", 128),
            "rt_detr": save(d / "rt", "rt_detr", "RTDetrForObjectDetection", 96), "image": image}


def demo_for(folder, image, threshold=0.0):
    model, report = ddetr.load(folder)
    return build_demo(model, report, examples={"synthetic": {image.name: image}, "photos": {}}, threshold=threshold)


def test_open_vocabulary_model_asks_for_a_prompt_then_detects_it(folders):
    demo = demo_for(folders["grounding-dino"], folders["image"])
    x = demo.explorer
    s = x.session(None)
    with pytest.raises(UserError, match="type a prompt"):
        x.run(s, folders["image"])
    x.set_prompt(s, PROMPT)  # no image yet: remembered
    x.run(s, folders["image"])
    assert s.capture.class_names == ["cat", "remote control"]
    assert set(s.capture.detections.label_names) <= {"cat", "remote control"}
    x.set_prompt(s, "remote control")  # re-runs the image with the new classes
    assert s.capture.class_names == ["remote control"]
    s.target = ("detection", 0)
    for tab_id in TABS:  # every tab draws (or says why not) from the capture
        drawn = x.draw_tab(s, tab_id)
        assert drawn.body is not None or drawn.note, tab_id
    assert "Deformable DETR checkpoints" in x.draw_tab(s, "gradients").note
    with pytest.raises(UserError, match="gradient maps"):
        x.gradients(s)


def test_model_without_deformable_encoder_says_so(folders):
    demo = demo_for(folders["rt_detr"], folders["image"])
    x = demo.explorer
    s = x.session(None)
    x.run(s, folders["image"])
    with pytest.raises(UserError, match="no deformable encoder"):
        x.click(s, 5.0, 5.0, boxes=False)
    with pytest.raises(UserError, match="fixed set of classes"):
        x.set_prompt(s, "cat.")
    assert s.capture.meta["enc_layers"] == 0 and s.capture.decoder_layers


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_grounding_dino_in_the_browser(folders):
    """The page opens a Grounding DINO folder: the prompt box is there, a prompt and an example
    give detections of the prompt's classes and the attention picture."""
    pytest.importorskip("playwright.sync_api")

    demo = demo_for(folders["grounding-dino"], folders["image"])
    with served(demo) as url, chromium() as browser:
        page = open_page(browser, url, ready="#prompt textarea")
        page.locator("#prompt textarea").fill(PROMPT)
        page.locator("#prompt textarea").press("Enter")
        page.locator("#example input").click()
        page.locator("ul[role=listbox] li", has_text=folders["image"].name).first.click()
        page.wait_for_selector("#att-image img", timeout=WAIT)
        # the status names the selected detection by its prompt class
        page.wait_for_function("() => /detection #0: (cat|remote control) /.test("
                               "document.querySelector('#status')?.innerText || '')", timeout=WAIT)
        no_errors(page)
