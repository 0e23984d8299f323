"""Deformable DETR Explorer: the Gradio app. Layout and wiring only; every computation is a
call into ``ddetr`` (model, capture, diagnostics, gradients) or ``viz`` (figures).

    python app.py                               # the shipped model, http://127.0.0.1:7860
    python app.py --checkpoint r50.pth          # any format ddetr.checkpoint.load knows
    python app.py --checkpoint-dir runs/        # a dropdown of the checkpoints found there
    python app.py --random-weights              # an untrained `small` model, clearly labelled

The model runs once per image under ``ddetr.capture``; every change of view re-renders from
that capture (kept server-side in ``app_state.SessionStore``). Clicks arrive as
``gr.Image.select`` events, which ``gradio_client`` cannot send, so each select handler is a
thin wrapper over a plain endpoint taking (x, y) in original-image pixels (``/click``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
# Before torch starts OpenMP: idle OpenMP threads sleep instead of spinning. A server shares its
# cores (with other requests, other programs); on a busy 2-core machine spinning teams made the
# small model's forward 30x slower (3 s instead of 0.1 s, bench/app.py). Override in the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402

from app_explorer import Explorer  # noqa: E402
from app_state import LoadedModel, ModelRegistry, SessionStore, Timings, UserError, View  # noqa: E402
from ddetr.assets import EXAMPLE_GROUPS, examples_dir  # noqa: E402
from explorer import serving  # noqa: E402
from explorer.cli import (DEFAULT_CHECKPOINT, GET_MODEL, MAX_FILE_SIZE, _shown, launch_kwargs,  # noqa: E402, F401
                          main, make_demo, parse_args, random_model, startup_model)
from explorer.serving import guarded  # noqa: E402

log = logging.getLogger("ddetr.app")
ROOT = Path(__file__).resolve().parent
EXAMPLE_DIRS = {g: examples_dir() / g for g in EXAMPLE_GROUPS}  # the checkout's or the installed copy
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 50_000_000
MODEL_EVENTS = dict(concurrency_id=serving.MODEL_QUEUE, concurrency_limit=serving.MODEL_SLOTS)


def find_examples() -> dict[str, dict[str, Path]]:
    """Example images by group, then name (the file name): the page offers names, never paths."""
    out = {}
    for group, d in EXAMPLE_DIRS.items():
        files = sorted(p for p in d.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
        out[group] = {p.name: p.resolve() for p in files}
    return out


# ----------------------------------------------------------------------------- the page
CSS = """
.ddetr-random {background: #b00020; color: white; padding: 6px 10px; border-radius: 6px; font-weight: 600}
.ddetr-help {font-size: 0.9em; opacity: 0.85}
"""
WELCOME = ("**Start here:** upload an image or pick an example. The model runs once; then every "
           "change of view below is drawn from what it recorded.")
VIEW_HELP = ("**Left:** the detections. Click a box for its decoder view (where that object's query "
             "sampled), or any other pixel for the encoder view of that pixel. **Right:** the sampling "
             "points: one dot per (head, level, point), larger = more attention weight; the green cross "
             "is the reference point. Click it anywhere for the encoder view of that pixel.")
# (tab id, title, help text) of the figure tabs; each tab's content is drawn when it is shown.
TABS = [
    ("interactive", "Interactive", "The attention view as an interactive figure: hover a point for its "
     "head, level, weight and offsets; click legend entries to hide heads."),
    ("trajectory", "Refinement", "Iterative box refinement (paper sec. 4.1): the selected query's "
     "reference and box after each decoder layer, light (first) to dark (last)."),
    ("proposals", "Proposals", "Two-stage models (paper sec. 4.1) score every encoder pixel as a "
     "proposal; the best become the decoder's queries. Ringed: proposals that became queries."),
    ("heatmaps", "Heatmaps", "Where attention mass lands: every point's weight spread onto the feature cells "
     "the op reads (bilinear), per level and summed. The selected detection, or all shown detections."),
    ("grid", "Layer × head", "Small multiples of the selected query: rows are decoder layers, columns heads. "
     "A head's habit (direction, distance, level) and its change with depth."),
    ("statistics", "Statistics", "Over all shown detections: mass per level against object size, each head's "
     "mean offset, attention entropy per head and layer, points outside the image."),
    ("learn", "Learn", "New to deformable attention? This walks through Eq. 3 of the paper for the selected "
     "query, one step at a time, with its real numbers: reference point, offsets, bilinear sampling, the "
     "softmax over levels and points, the weighted sum, and what it saves over dense attention. "
     "Tick a single head above to follow that head (default: the head of the heaviest point)."),
    ("gradients", "Gradients (Fig. 5)", "The paper's Figure 5: how strongly the selected detection's box "
     "centre, size and class score depend on each input pixel (gradient norm). Compare with where it samples."),
]
EXPORT_KINDS = [("current view as PNG", "png"), ("current view as SVG", "svg"),
                ("interactive HTML page", "html"), ("full report: every view of the 10 best detections (HTML)", "report"),
                ("capture file (.npz)", "capture")]
CHECKPOINT_HELP = ("What was loaded, and diagnostics that point at training problems: offsets still at "
                   "their initialization, heads that attend uniformly, points that fall in padding or "
                   "outside the image, levels that receive almost no attention.")


def header_parts(lm: LoadedModel) -> tuple[str, str, str, str]:
    """(checkpoint, format, variant, classes) as shown at the top of the page."""
    r, cfg = lm.report, lm.model.cfg
    names = [n for n in cfg.class_names if n != "N/A"]  # "N/A": ids COCO never uses (official layout)
    shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    return (serving.scrub_paths(r.source) if r is not None else lm.name, r.format if r is not None else "?", cfg.variant,
            f"({len(names)}): {shown}")


RANDOM_BANNER = ("RANDOM WEIGHTS: this model is untrained; its detections and attention are meaningless "
                 "(started with --random-weights).")


def model_header(lm: LoadedModel) -> str:
    source, fmt, variant, classes = header_parts(lm)
    head = (f"## Deformable DETR Explorer\n**Checkpoint:** `{source}` ({fmt}) · **variant:** {variant} · "
            f"**classes** {classes}")
    if lm.random_weights:
        head = f'<div class="ddetr-random">{RANDOM_BANNER}</div>\n\n' + head
    return head


def plain_header(lm: LoadedModel) -> str:
    source, fmt, variant, classes = header_parts(lm)
    text = f"checkpoint: {source} ({fmt}); variant: {variant}; classes {classes}"
    return (RANDOM_BANNER + "\n" + text) if lm.random_weights else text


def report_markdown(lm: LoadedModel) -> str:
    return "```text\n" + serving.scrub_paths(str(lm.report) if lm.report is not None else lm.name) + "\n```"


def build_demo(model, report=None, *, examples: dict[str, dict[str, Path]] | None = None,
               checkpoints: dict[str, Path] | None = None, name: str | None = None,
               random_weights: bool = False, device: str = "cpu", max_sessions: int = 64,
               max_bytes: int = 1 << 30, capture_bytes: float = 100e6, max_pixels: int = MAX_PIXELS,
               threshold: float = 0.3) -> gr.Blocks:
    """The explorer page for ``model`` (and ``report``, its ``LoadReport``).

    examples: {"synthetic": {name: path}, "photos": {...}}; checkpoints: the dropdown's
    {name: path} (from --checkpoint-dir). The returned Blocks carries ``.explorer`` (the
    server-side ``app_explorer.Explorer``: store, registry, timings) for tests and the benchmark.
    """
    if isinstance(model, LoadedModel):
        startup = model
    else:
        startup = LoadedModel(name or (Path(report.source).name if report is not None else "model"), model, report,
                              random_weights=random_weights)
    registry = ModelRegistry(startup, checkpoints, device=device)
    ex = examples if examples is not None else find_examples()
    ex_names = [n for items in ex.values() for n in items]
    if len(set(ex_names)) != len(ex_names):
        raise ValueError(f"example names must be unique across groups: {ex_names}")
    explorer = Explorer(registry, SessionStore(max_sessions, max_bytes), ex, Timings(),
                        capture_bytes=capture_bytes, max_pixels=max_pixels,
                        upload_roots=[gr.utils.get_upload_folder()])
    h = Handlers(explorer)
    cfg = startup.model.cfg

    with gr.Blocks(title="Deformable DETR Explorer", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        key = gr.State(None, delete_callback=explorer.store.drop)
        header = gr.Markdown(model_header(startup), elem_id="header")
        with gr.Row(visible=len(registry.names) > 1):
            ckpt = gr.Dropdown(registry.names, value=registry.startup_name, label="Checkpoint", elem_id="checkpoint",
                               info="Checkpoints from the server's --checkpoint-dir; loading takes a few seconds.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.Image(type="filepath", label="Upload an image", sources=["upload", "clipboard"],
                                  height=200, elem_id="upload")
                gr.Markdown("Or pick an example: *synthetic scenes* suit the shipped model, *photographs* "
                            "(public domain, examples/photos/LICENSE.md) a COCO checkpoint.",
                            elem_classes="ddetr-help")
                example = gr.Dropdown(ex_names, value=None, label="Example", elem_id="example")
                galleries = []
                for group, items in ex.items():
                    if items:
                        galleries.append((group, gr.Gallery([(str(p), n) for n, p in items.items()],
                                                            label=group, columns=6, height=110, allow_preview=False,
                                                            buttons=[],
                                                            elem_id=f"gallery-{group}")))
                threshold = gr.Slider(0.0, 1.0, value=threshold, step=0.01, label="Score threshold",
                                      info="Detections scoring below it are hidden.", elem_id="threshold")
                det_list = gr.Dropdown([], value=None, label="Detections", elem_id="det-list",
                                       info="Pick one to see where its query sampled, or click its box.")
                status = gr.Markdown(WELCOME, elem_id="status")
            with gr.Column(scale=3):
                with gr.Row():
                    det_image = gr.Image(label="Detections", interactive=False, format="jpeg", elem_id="det-image",
                                         buttons=["fullscreen"])
                    att_image = gr.Image(label="Attention view", interactive=False, format="jpeg",
                                         elem_id="att-image", buttons=["fullscreen"])
                gr.Markdown(VIEW_HELP, elem_classes="ddetr-help")
                with gr.Row():
                    layer = gr.Slider(0, max(cfg.enc_layers, cfg.dec_layers) - 1, step=1, value=cfg.dec_layers - 1,
                                      label="Layer", elem_id="layer")
                    top_k = gr.Slider(0, cfg.n_heads * cfg.n_levels * cfg.n_points, step=1, value=0,
                                      label="Top-k points (0 = all)", elem_id="top-k")
                    enc_level = gr.Radio(list(range(cfg.n_levels)), value=0, elem_id="enc-level",
                                         label="Encoder view: level of the clicked pixel's token")
                with gr.Row():
                    heads = gr.CheckboxGroup(list(range(cfg.n_heads)), value=list(range(cfg.n_heads)),
                                             label="Heads", elem_id="heads")
                    levels = gr.CheckboxGroup(list(range(cfg.n_levels)), value=list(range(cfg.n_levels)),
                                              label="Levels", elem_id="levels")
                    color_by = gr.Radio([("by head", "head"), ("by attention weight", "weight")], value="head",
                                        label="Colour points", elem_id="color-by")
                    layout = gr.Radio([("merged (Figure 6)", "merged"), ("across scales", "scales")],
                                      value="merged", label="Levels shown", elem_id="layout")
        tab_out: dict[str, list] = {}
        with gr.Tabs():
            for tab_id, title, help_text in TABS:
                with gr.Tab(title, id=tab_id) as tab:
                    gr.Markdown(help_text, elem_classes="ddetr-help")
                    if tab_id == "gradients":
                        grad_btn = gr.Button("Compute gradients for the selected detection", elem_id="grad-btn")
                    tab_out[tab_id] = tab_components(tab_id)
                tab.select(guarded(h.show_tab), [gr.State(tab_id), key], tab_out[tab_id], api_name=False)
            with gr.Tab("Export", id="export") as tab:
                gr.Markdown("Download the current view (as a paper-ready figure), the interactive page, or the "
                            "capture file (open it later with `Capture.load`).", elem_classes="ddetr-help")
                with gr.Row():
                    export_kind = gr.Radio(EXPORT_KINDS, value="png", label="What", elem_id="export-kind")
                    export_btn = gr.Button("Export", variant="primary", elem_id="export-btn")
                export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
                tab.select(guarded(h.leave_tabs), [key], [], api_name=False)
            with gr.Tab("Checkpoint", id="checkpoint") as tab:
                gr.Markdown(CHECKPOINT_HELP, elem_classes="ddetr-help")
                report_md = gr.Markdown(report_markdown(startup), elem_id="report")
                diag_md = gr.Markdown("*Run an image to see the diagnostics.*", elem_id="diagnostics")
                capture_md = gr.Markdown("", elem_id="capture-summary")
                tab_out["checkpoint"] = [diag_md, capture_md]
                tab.select(guarded(h.show_tab), [gr.State("checkpoint"), key], tab_out["checkpoint"],
                           api_name=False)

        # ---- wiring ----
        h.bind(key=key, det_image=det_image, att_image=att_image, det_list=det_list, status=status, tabs=tab_out)
        out = h.outputs
        controls = [layer, heads, levels, color_by, top_k, layout, enc_level]
        upload.upload(guarded(h.detect), [upload, threshold, key], out, api_name="detect", preprocess=False,
                      show_progress="full", **MODEL_EVENTS)
        example.input(guarded(h.detect_example), [example, threshold, key], out, api_name="detect_example",
                      show_progress="full", **MODEL_EVENTS)
        for group, gal in galleries:
            gal.select(guarded(h.on_gallery), [gr.State(group), threshold, key], out, api_name=False,
                       show_progress="full", **MODEL_EVENTS)
        det_list.input(guarded(h.select_detection), [det_list, key], out, api_name="select_detection")
        det_image.select(guarded(h.on_det_select), [key], out, api_name=False)
        att_image.select(guarded(h.on_att_select), [key], out, api_name=False)
        # .input fires while a slider is dragged or typed into; always_last drops stale redraws.
        threshold.input(guarded(h.set_threshold), [threshold, key], out, api_name="set_threshold",
                        trigger_mode="always_last")
        for c in controls:
            c.input(guarded(h.set_view), [*controls, key], out, api_name=False, trigger_mode="always_last")
        # Plain endpoints for API clients and tests; the select handlers above wrap the same calls.
        with gr.Row(visible=False):
            x_in, y_in = gr.Number(label="x"), gr.Number(label="y")
            api_btn = gr.Button()
        api_btn.click(guarded(h.set_view), [*controls, key], out, api_name="set_view")
        api_btn.click(guarded(h.click), [x_in, y_in, key], out, api_name="click")
        api_btn.click(guarded(h.click_pixel), [x_in, y_in, key], out, api_name="click_pixel")
        tab_in = gr.Textbox(visible=False)
        api_btn.click(guarded(h.show_tab), [tab_in, key], [c for cs in tab_out.values() for c in cs], api_name="show_tab")
        export_btn.click(guarded(h.export), [export_kind, key], [export_file], api_name="export")
        grad_btn.click(guarded(h.gradients), [key], tab_out["gradients"], api_name="gradients",
                       show_progress="full", **MODEL_EVENTS)
        h.header, h.report_md, h.controls = header, report_md, controls
        ckpt.input(guarded(h.set_checkpoint), [ckpt, key], [header, report_md, *controls, *out],
                   api_name="set_checkpoint", show_progress="full", **MODEL_EVENTS)
    demo.explorer, demo.handlers = explorer, h
    demo.queue(default_concurrency_limit=2)
    serving.install(demo)  # per-page limits, fair order, uploads only (explorer/serving.py)
    return demo


def tab_components(tab_id: str) -> list:
    """The output components of one figure tab: a note (why nothing is drawn) and the figure."""
    return [gr.Markdown("*Run an image first.*", elem_id=f"note-{tab_id}"), gr.Plot(elem_id=f"plot-{tab_id}")]


class Handlers:
    """Gradio events -> ``Explorer`` calls -> component updates. Each returns a dict of only
    the components it changes; select events are thin wrappers over (x, y) endpoints."""

    def __init__(self, explorer: Explorer):
        self.x = explorer

    def bind(self, *, key, det_image, att_image, det_list, status, tabs: dict[str, list]) -> None:
        self.key, self.det_image, self.att_image, self.det_list, self.status = key, det_image, att_image, det_list, status
        self.tabs = tabs
        self.outputs = [key, det_image, att_image, det_list, status, *[c for cs in tabs.values() for c in cs]]

    # ---- the response: main view + the tab on screen ----
    def render(self, s) -> dict:
        x = self.x
        with x.timings.timer("render"):
            table, _ = x.table(s)
            out = {self.key: s.key, self.att_image: x.attention_image(s), self.status: x.status(s, table)}
            # The detections picture depends on the threshold and the selection only: a change of
            # layer / heads / levels / colours leaves it (and the list) as the browser has it.
            shown = (id(s.capture), s.view.threshold, s.target)
            if s.cache.get("detections_shown") != shown:
                choices, value = x.detection_choices(s)
                out[self.det_image] = x.detections_image(s)
                out[self.det_list] = gr.update(choices=choices, value=value)
                s.cache["detections_shown"] = shown
            if s.active_tab in self.tabs:
                out.update(zip(self.tabs[s.active_tab], x.tab(s, s.active_tab)))
        return out

    # ---- model runs ----
    def detect(self, payload, threshold, key, progress=gr.Progress()):
        path = payload.get("path") if isinstance(payload, dict) else None
        if not path:
            raise UserError("no image received: upload an image file")
        s = self.x.session(key)
        s.view.threshold = float(threshold)
        self.x.run(s, path, progress)
        with s.lock:
            return self.render(s)

    def detect_example(self, name, threshold, key, progress=gr.Progress()):
        path = self.x.example_path(str(name))
        s = self.x.session(key)
        s.view.threshold = float(threshold)
        self.x.run(s, path, progress)
        with s.lock:
            return self.render(s)

    def on_gallery(self, group, threshold, key, evt: gr.SelectData, progress=gr.Progress()):
        name = list(self.x.examples[group])[evt.index]
        return self.detect_example(name, threshold, key, progress)

    # ---- views (never run the model) ----
    def select_detection(self, index, key):
        s = self.x.with_capture(key)
        if index is None:
            raise UserError("pick a detection from the list")
        with s.lock:
            self.x.select_detection(s, int(index))
            return self.render(s)

    def click(self, x, y, key):
        s = self.x.with_capture(key)
        with s.lock:
            self.x.click(s, float(x), float(y))
            return self.render(s)

    def click_pixel(self, x, y, key):
        s = self.x.with_capture(key)
        with s.lock:
            self.x.click(s, float(x), float(y), boxes=False)
            return self.render(s)

    def _image_px(self, s, evt: gr.SelectData) -> tuple[float, float]:
        from viz.raster import to_image_px

        u, v = evt.index
        return to_image_px(float(u), float(v), self.x.scale(s))

    def on_det_select(self, key, evt: gr.SelectData):
        s = self.x.with_capture(key)
        return self.click(*self._image_px(s, evt), key)

    def on_att_select(self, key, evt: gr.SelectData):
        s = self.x.with_capture(key)
        if not s.view.merged:
            raise UserError("clicks on the attention view work with 'merged' levels; click the detections image")
        return self.click_pixel(*self._image_px(s, evt), key)

    def set_threshold(self, threshold, key):
        s = self.x.with_capture(key)
        with s.lock:
            self.x.set_view(s, threshold=float(threshold))
            return self.render(s)

    def set_view(self, layer, heads, levels, color_by, top_k, layout, enc_level, key):
        s = self.x.with_capture(key)
        with s.lock:
            self.x.set_view(s, layer=int(layer), heads=tuple(int(i) for i in (heads or [])),
                            levels=tuple(int(i) for i in (levels or [])), color_by=str(color_by),
                            top_k=int(top_k or 0), merged=layout != "scales", enc_level=int(enc_level or 0))
            return self.render(s)

    def show_tab(self, tab_id, key):
        """Draw a figure tab when it comes on screen; it is then kept current on every change."""
        if tab_id not in self.tabs:
            raise UserError(f"unknown tab {tab_id!r}; tabs: {', '.join(self.tabs)}")
        s = self.x.store.get(key)
        if s is not None:
            s.active_tab = tab_id
        if s is None or s.capture is None:
            return {c: gr.skip() for c in self.tabs[tab_id]}
        with s.lock:
            return dict(zip(self.tabs[tab_id], self.x.tab(s, tab_id)))

    def leave_tabs(self, key):
        """A tab without figures (Export) is on screen: changes of view need not draw any tab."""
        s = self.x.store.get(key)
        if s is not None:
            s.active_tab = ""

    # ---- files ----
    def export(self, kind, key):
        s = self.x.with_capture(key)
        with s.lock:
            return str(self.x.export(s, str(kind)))

    def gradients(self, key, progress=gr.Progress()):
        s = self.x.with_capture(key)
        with s.lock:
            self.x.gradients(s, progress)
            s.active_tab = "gradients"
            return list(self.x.tab(s, "gradients"))

    # ---- checkpoints ----
    def set_checkpoint(self, name, key, progress=gr.Progress()):
        """Switch this session to another checkpoint of the registry (by name, never a path)."""
        progress(0.1, desc=f"loading {name}")
        lm = self.x.registry.get(str(name))
        s = self.x.session(key)
        with s.lock:
            s.model_name = lm.name
            s.reset()
            s.view = View(threshold=s.view.threshold)
        cfg = lm.model.cfg
        L, M = cfg.n_levels, cfg.n_heads
        updates = [
            gr.update(maximum=max(cfg.enc_layers, cfg.dec_layers) - 1, value=cfg.dec_layers - 1),
            gr.update(choices=list(range(M)), value=list(range(M))),
            gr.update(choices=list(range(L)), value=list(range(L))),
            gr.update(value="head"), gr.update(maximum=M * L * cfg.n_points, value=0),
            gr.update(value="merged"), gr.update(choices=list(range(L)), value=0),
        ]
        out = dict(zip(self.controls, updates))
        out.update({self.key: s.key, self.header: model_header(lm), self.report_md: report_markdown(lm),
                    self.det_image: None, self.att_image: None, self.det_list: gr.update(choices=[], value=None),
                    self.status: WELCOME})
        for cs in self.tabs.values():
            out.update({c: ("*Run an image first.*" if isinstance(c, gr.Markdown) else None) for c in cs})
        return out


def __getattr__(name: str):
    # ``demo`` at module level as in Gradio's demo/*/run.py (``gradio app.py`` reload mode finds
    # it), built on first access only: importing app.py in tests must not load the checkpoint.
    if name == "demo":
        d = make_demo(parse_args([]))
        globals()["demo"] = d
        return d
    raise AttributeError(name)


if __name__ == "__main__":
    main()
