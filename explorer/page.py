"""The explorer page: layout and wiring only, in the shape of Gradio's demo/*/run.py. Every
computation is a call into ``explorer.session.Explorer`` (which owns the session state) or
``explorer.views`` (the tabs); ``explorer.handlers`` maps events to those calls.

Two Gradio habits this page avoids on purpose:
- no ``select`` listener on ``gr.Tab`` / ``gr.Tabs``. In Gradio 6.31's front end, any such
  listener makes the tab bar re-register a clicked tab at another tab's slot (the bar then shows
  one tab twice and loses another; see tests/test_browser.py). The page listens to
  ``gr.Tabs.change`` and reads the selected tab's id from the DOM (``TAB_JS``).
- no error badges: page events never raise ``gr.Error`` (it marks every output with "Error");
  a refused change answers with a notice and leaves every picture as it was. API endpoints,
  wired separately, do raise, so that clients get an error.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import serving
from . import status as words
from .handlers import Handlers
from .models import LoadedModel, ModelRegistry
from .session import Explorer
from .state import SessionStore, Timings
from .views import TABS

# Model runs share a few slots; explorer.serving decides who may queue and in which order.
MODEL_EVENTS = dict(concurrency_id=serving.MODEL_QUEUE, concurrency_limit=serving.MODEL_SLOTS)
MAX_PIXELS = 50_000_000

CSS = """
.ddetr-banner {background: #b00020; color: white; padding: 4px 10px; border-radius: 6px; font-weight: 600}
.ddetr-help {font-size: 0.88em; opacity: 0.85}
#header {font-size: 0.92em} #header p {margin: 0}
#notice:empty, #notice .prose:empty {display: none}
#notice {color: #9a4b00; font-weight: 600}
#det-image, #att-image {height: clamp(220px, calc(100vh - 420px), 640px) !important}
#det-image .image-container, #att-image .image-container {height: 100%}
#pictures > div {padding: 0 !important}
#det-image img, #att-image img {object-fit: contain; width: 100%; height: 100%; image-rendering: auto}
#pictures {gap: 6px; flex-wrap: nowrap}
.ddetr-legend {font-size: 0.85em; display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center}
.ddetr-swatch i {display: inline-block; width: 11px; height: 11px; border-radius: 50%; margin-right: 3px;
  border: 1px solid #000; vertical-align: -1px}
.ddetr-bar {display: inline-block; width: 140px; height: 11px; border: 1px solid #444; margin: 0 4px}
#sidebar {gap: 6px} #controls {gap: 4px}
#controls .block, #sidebar .block {padding: 3px 8px !important}
#controls .wrap {gap: 2px 4px}
#controls label.selected, #controls .wrap label {padding: 2px 6px !important}
#controls .head-text, #controls span[data-testid=block-info] {margin-bottom: 2px !important}
#controls input[type=number] {height: 22px}
#status {font-size: 0.9em} #status p {margin: 2px 0}
"""
# The size the pictures are shown at, in device pixels ("WxH"): pictures are drawn for it.
_BOX = ("(() => { const e = document.querySelector('#att-image'); if (!e) return '';"
        " const r = e.getBoundingClientRect(), d = window.devicePixelRatio || 1;"
        " return Math.round(r.width * d) + 'x' + Math.round(r.height * d); })()")
# The id of the selected tab, read from the DOM: ``gr.Tabs.change`` carries no data.
TAB_JS = ("(k, t, b) => [k, document.querySelector('#tabs button[role=tab][aria-selected=true]')?.dataset.tabId"
          " ?? t, " + _BOX + "]")
# Every view event sends the picture size as its last input.
BOX_JS = "(...a) => { a[a.length - 1] = " + _BOX + "; return a; }"
# The link to this view goes into the address bar too (a reload restores it).
URL_JS = "(q) => { if (q !== null && q !== undefined) history.replaceState(null, '', q ? '?' + q : location.pathname); }"


def build_demo(model, report=None, *, examples: dict[str, dict[str, Path]] | None = None,
               checkpoints: dict[str, Path] | None = None, name: str | None = None,
               random_weights: bool = False, device: str = "cpu", max_sessions: int = 64,
               max_bytes: int = 1 << 30, capture_bytes: float = 100e6, max_pixels: int = MAX_PIXELS,
               threshold: float = 0.3, precision: str = "fp32") -> gr.Blocks:
    """The explorer page for ``model`` (a ``LoadedModel``, or a model and its ``LoadReport``).

    examples: {"synthetic": {name: path}, "photos": {...}}; checkpoints: the dropdown's
    {name: path}. The returned Blocks carries ``.explorer`` (the server-side ``Explorer``) and
    ``.handlers`` for tests and the benchmark.
    """
    from .examples import find_examples

    startup = model if isinstance(model, LoadedModel) else LoadedModel(
        name or (Path(report.source).name if report is not None else "model"), model, report,
        random_weights=random_weights)
    registry = ModelRegistry(startup, checkpoints, device=device)
    ex = examples if examples is not None else find_examples()
    ex_names = [n for items in ex.values() for n in items]
    if len(set(ex_names)) != len(ex_names):
        raise ValueError(f"example names must be unique across groups: {ex_names}")
    explorer = Explorer(registry, SessionStore(max_sessions, max_bytes), ex, Timings(),
                        capture_bytes=capture_bytes, max_pixels=max_pixels,
                        upload_roots=[gr.utils.get_upload_folder()], precision=precision)
    h = Handlers(explorer, threshold)
    cfg = startup.model.cfg
    c = h.c  # the components, by name, filled in below

    with gr.Blocks(title="Deformable DETR Explorer", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        c.key = gr.State(None, delete_callback=explorer.store.drop)
        c.box = gr.Textbox(visible=False)
        c.url = gr.Textbox(visible=False)
        c.header = gr.Markdown(words.model_header(startup), elem_id="header")
        with gr.Row(visible=len(registry.names) > 1):
            c.ckpt = gr.Dropdown(registry.names, value=registry.startup_name, label="Checkpoint",
                                 elem_id="checkpoint", scale=3,
                                 info="Checkpoints from the server's --checkpoint-dir; loading takes a few seconds.")
            c.open_anyway = gr.Button("Open anyway", visible=False, elem_id="open-anyway", scale=1)
        c.notice = gr.Markdown("", elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=0, min_width=270, elem_id="sidebar"):
                _sidebar(c, ex, ex_names, threshold, bool(getattr(startup.model, "needs_text", False)))
            with gr.Column(scale=1):
                _pictures_and_controls(c, cfg)
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as c.tabs:
            for tab in TABS.values():
                _tab(c, tab, h, registry.names)
        with gr.Row(visible=False):  # inputs of the plain API endpoints
            c.x_in, c.y_in = gr.Number(label="x"), gr.Number(label="y")
            c.text_in = gr.Textbox()
            c.api = gr.Button()
        h.wire(demo, MODEL_EVENTS, TAB_JS, BOX_JS, URL_JS)
    demo.explorer, demo.handlers = explorer, h
    demo.queue(default_concurrency_limit=2)
    serving.install(demo)  # per-page limits, fair order, uploads only (explorer/serving.py)
    return demo


def _sidebar(c, ex, ex_names, threshold, prompt: bool) -> None:
    # Open-vocabulary models (Grounding DINO, OmDet-Turbo: ddetr.hf_family) detect what is named here.
    c.prompt = gr.Textbox(label="Detect (text prompt)", placeholder="cat. remote control.", visible=prompt,
                          elem_id="prompt", info="Class names separated by '.'; Enter runs the model again.")
    with gr.Accordion("Image: upload or pick an example", open=True, elem_id="image-panel") as c.image_panel:
        c.upload = gr.Image(type="filepath", label="Upload an image", sources=["upload", "clipboard"], height=130,
                            elem_id="upload")
        gr.Markdown("*Synthetic scenes* suit the shipped model, *photographs* (public domain, "
                    "examples/photos/LICENSE.md) a COCO checkpoint.", elem_classes="ddetr-help")
        c.galleries = []
        for group, items in ex.items():
            if items:
                c.galleries.append((group, gr.Gallery([(str(p), n) for n, p in items.items()], label=group,
                                                      columns=6, height=84, allow_preview=False, buttons=[],
                                                      elem_id=f"gallery-{group}")))
    c.example = gr.Dropdown(ex_names, value=None, label="Example", elem_id="example")
    c.threshold = gr.Slider(0.0, 1.0, value=threshold, step=0.01, label="Score threshold", elem_id="threshold")
    c.det_list = gr.Dropdown([], value=None, label="Detections", elem_id="det-list",
                             info="Pick one, or click its box in the picture.")
    c.status = gr.Markdown(words.WELCOME, elem_id="status")
    c.link = gr.Markdown("", elem_id="link", elem_classes="ddetr-help")
    gr.Markdown("**Left picture:** click a box for where its query sampled, elsewhere for the encoder token "
                "there. **Right:** the sampling points (dot size = weight); hover a point for its numbers and "
                "the four feature cells it reads, click it to keep them in the status.", elem_classes="ddetr-help")


def _pictures_and_controls(c, cfg) -> None:
    L, M = cfg.n_levels, cfg.n_heads
    with gr.Row(elem_id="pictures"):
        c.det_image = gr.Image(show_label=False, interactive=False, format="jpeg", elem_id="det-image",
                               buttons=["fullscreen"], placeholder="Detections: pick an example")
        c.att_image = gr.Image(show_label=False, interactive=False, format="jpeg", elem_id="att-image",
                               buttons=["fullscreen"], placeholder="Attention view")
    c.legend = gr.HTML("", elem_id="legend")
    with gr.Column(elem_id="controls"):
        with gr.Row():
            c.layer = gr.Slider(0, max(cfg.enc_layers, cfg.dec_layers) - 1, step=1, value=cfg.dec_layers - 1,
                                label="Layer", elem_id="layer", min_width=160)
            c.follow = gr.Dropdown([("all heads", -1)] + [(f"head {m}", m) for m in range(M)], value=-1,
                                   label="Follow a single head", elem_id="follow-head", min_width=120)
            c.top_k = gr.Slider(0, M * L * cfg.n_points, step=1, value=0, label="Top-k points (0 = all)",
                                elem_id="top-k", min_width=160)
            c.enc_level = gr.Radio(list(range(L)), value=0, elem_id="enc-level", label="Pixel's level",
                                   min_width=120, info=None)
        with gr.Row():
            c.heads = gr.CheckboxGroup(list(range(M)), value=list(range(M)), label="Heads", elem_id="heads",
                                       min_width=200)
            c.levels = gr.CheckboxGroup(list(range(L)), value=list(range(L)), label="Levels", elem_id="levels",
                                        min_width=120)
            c.color_by = gr.Radio([("head", "head"), ("weight", "weight")], value="head", label="Colour by",
                                  elem_id="color-by", min_width=120)
            c.layout = gr.Radio([("merged", "merged"), ("across scales", "scales")], value="merged",
                                label="Levels shown", elem_id="layout", min_width=150)
            c.zoom = gr.Checkbox(False, label="Zoom in", elem_id="zoom", min_width=100)  # to the selection and its points
    c.controls = [c.layer, c.heads, c.levels, c.color_by, c.top_k, c.layout, c.enc_level]


def _tab(c, tab, h, checkpoints: list[str]) -> None:
    with gr.Tab(tab.title, id=tab.id):
        gr.Markdown(tab.help, elem_classes="ddetr-help")
        if tab.action is not None:
            with gr.Row():
                if tab.action.checkpoint_choice:
                    others = checkpoints[1:] or checkpoints  # B defaults to another than the startup one
                    choice = gr.Dropdown(checkpoints, value=others[0], label="Checkpoint B",
                                         elem_id=f"choice-{tab.id}")
                elif tab.action.choices:
                    choice = gr.Radio(list(tab.action.choices), value=tab.action.choices[0][1], label="What",
                                      elem_id=f"choice-{tab.id}")
                else:
                    choice = gr.State(None)
                button = gr.Button(tab.action.label, variant="primary", elem_id=f"action-{tab.id}")
            c.actions[tab.id] = (choice, button)
        note = gr.Markdown("*Run an image first.*", elem_id=f"note-{tab.id}")
        if tab.body == "plot":
            body = gr.Plot(elem_id=f"plot-{tab.id}", show_label=False)
        elif tab.body == "image":
            body = gr.Image(elem_id=f"image-{tab.id}", show_label=False, interactive=False, format="png",
                            buttons=["fullscreen"])
        elif tab.body == "file":
            body = gr.File(elem_id=f"file-{tab.id}", label="Download", interactive=False)
        elif tab.body == "custom":
            body = gr.Markdown("", visible=False)
            tab.build(c, h)
        else:
            body = gr.Markdown("", elem_id=f"body-{tab.id}")
        c.tab_out[tab.id] = (note, body)
