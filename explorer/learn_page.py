"""The Learn tab's components and events (layout and wiring only; the logic is
``explorer.learn``). Built inside the tab by ``explorer.page`` through the registry entry's
``build``; one ``LearnState`` per session, kept in the session's cache (a new image starts
the lesson afresh).

Element ids (the browser tests use them): learn-prev / learn-next / learn-step, learn-text,
learn-plot, learn-picture (click a point to follow it), learn-focus, learn-source,
learn-part, learn-head, learn-whatif-*, learn-cost-*, learn-history-*, learn-export,
learn-files.
"""
from __future__ import annotations

import logging
import tempfile
import threading

import gradio as gr

from viz.learn_figures import follow_picture
from viz.learn_steps import STEPS, step_labels, step_view
from viz.raster import to_image_px

from . import learn
from .handlers import TabOpener
from .views import Drawn

SOURCES = [("the teaching example", "teaching"), ("this page's image and selection", "page")]
PARTS = [("decoder query", "decoder"), ("encoder pixel", "encoder")]
LABELS = step_labels()
log = logging.getLogger("ddetr.app")
# A step's figure replays its animation when it arrives (points fly out, weights grow).
PLAY_JS = ("() => { setTimeout(() => { const d = document.querySelector('#learn-plot .js-plotly-plot');"
           " if (d && d._transitionData && window.Plotly && d.layout?.meta?.animate)"
           " window.Plotly.animate(d, null, {frame: {duration: 70, redraw: false}, transition: {duration: 70},"
           " mode: 'immediate'}); }, 300); }")
# The same after a tab switch, only when the switch was to this tab.
OPEN_PLAY_JS = ("() => { if (document.querySelector('#tabs button[role=tab][aria-selected=true]')?.dataset.tabId"
                " === 'learn') (" + PLAY_JS + ")(); }")


def warm_up(lm) -> None:
    """Run the teaching example through ``lm``'s model (kept by ``learn.teaching_capture``)."""
    try:
        with lm.lock:  # the model's forward passes take turns (explorer.models)
            learn.teaching_capture(lm.model)
    except Exception as e:  # only a head start: opening the tab runs it again and reports the error
        log.info("Learn's teaching example could not be run ahead: %s", type(e).__name__)


def draw_note(capture, selected, view) -> Drawn:
    return Drawn("")


def build(c, h) -> None:
    """The Learn tab's components (inside its ``gr.Tab``) and their events."""
    x = h.x
    with gr.Row():
        c.learn_source = gr.Radio(SOURCES, value="teaching", label="Follow", elem_id="learn-source", scale=2)
        c.learn_part = gr.Radio(PARTS, value="decoder", label="Part", elem_id="learn-part", scale=1)
        c.learn_head = gr.Dropdown([("all heads", -1)], value=-1, label="Follow a single head", elem_id="learn-head",
                                   scale=1)
    with gr.Row():
        c.learn_prev = gr.Button("◀ Prev", elem_id="learn-prev", scale=0, min_width=90)
        c.learn_step = gr.Dropdown(LABELS, value=LABELS[0], label="Step", elem_id="learn-step", scale=3)
        c.learn_next = gr.Button("Next ▶", elem_id="learn-next", scale=0, min_width=90, variant="primary")
    c.learn_focus = gr.Markdown("*Open this tab to start the lesson on the teaching example.*", elem_id="learn-focus")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            c.learn_plot = gr.Plot(elem_id="learn-plot", show_label=False)
        with gr.Column(scale=2):
            c.learn_text = gr.Markdown("", elem_id="learn-text")
            c.learn_picture = gr.Image(label="Click a sampling point to follow it", interactive=False, format="png",
                                       elem_id="learn-picture")
    with gr.Accordion("What if? Move the followed point or change its weight", open=True):
        with gr.Row():
            c.learn_dx = gr.Slider(-4, 4, value=0, step=0.25, label="move x (cells of its level)", elem_id="learn-whatif-dx")
            c.learn_dy = gr.Slider(-4, 4, value=0, step=0.25, label="move y (cells)", elem_id="learn-whatif-dy")
            c.learn_w = gr.Slider(-0.01, 1, value=-0.01, step=0.01, label="new weight (below 0: keep)",
                                  elem_id="learn-whatif-weight")
            c.learn_run = gr.Button("Recompute with the op", elem_id="learn-whatif-run", variant="primary")
        c.learn_whatif_text = gr.Markdown("", elem_id="learn-whatif-text")
        c.learn_whatif_plot = gr.Plot(elem_id="learn-whatif-plot", show_label=False)
    with gr.Accordion("How it learned: this query / pixel at each training snapshot", open=False):
        c.learn_history_run = gr.Button("Show the snapshots", elem_id="learn-history-run")
        c.learn_history_text = gr.Markdown("", elem_id="learn-history-text")
        c.learn_history_plot = gr.Plot(elem_id="learn-history-plot", show_label=False)
    with gr.Accordion("Cost explorer: dense vs deformable attention", open=False):
        with gr.Row():
            c.learn_cost = [gr.Slider(64, 2048, value=800, step=16, label="image height", elem_id="learn-cost-h"),
                            gr.Slider(64, 2048, value=1333, step=1, label="image width", elem_id="learn-cost-w"),
                            gr.Slider(1, 6, value=4, step=1, label="levels L", elem_id="learn-cost-levels"),
                            gr.Slider(1, 16, value=4, step=1, label="points K", elem_id="learn-cost-points"),
                            gr.Radio([1, 2, 4, 8, 16], value=8, label="heads M", elem_id="learn-cost-heads")]
        md, fig = learn.cost_view(800, 1333, 4, 4, 8)
        c.learn_cost_text = gr.Markdown(md, elem_id="learn-cost-text")
        c.learn_cost_plot = gr.Plot(fig, elem_id="learn-cost-plot", show_label=False)
    with gr.Row():
        c.learn_export = gr.Button("Export the lesson as slides (PDF + PNGs)", elem_id="learn-export")
        c.learn_files = gr.File(label="Slides", file_count="multiple", interactive=False, elem_id="learn-files")
    with gr.Accordion("Glossary", open=False):
        gr.Markdown(learn.GLOSSARY_MD, elem_id="learn-glossary")

    view_out = [c.learn_step, c.learn_text, c.learn_plot, c.learn_picture, c.learn_focus, c.learn_head,
                c.learn_source, c.learn_part, c.notice]

    def state(s) -> learn.LearnState:
        return s.cache.get("learn_state") or learn.LearnState()

    def teaching(s):
        lm = x.model_of(s)
        with lm.lock:  # the model's forward passes take turns (explorer.models)
            return learn.teaching_capture(lm.model)

    def capture_of(s, st):
        if st.source == "page":
            if s.capture is None:
                raise ValueError("the page has no image yet: pick an example or upload one, or follow the teaching example")
            return s.capture
        return teaching(s)

    def render(s, st) -> dict:
        cap = capture_of(s, st)
        f = learn.learn_focus(cap, st)
        v = step_view(f, st.step)
        picture, scale = follow_picture(f)
        s.cache["learn_state"], s.cache["learn_scale"] = st, scale
        s.page["learn_shown"] = (st, id(cap))
        heads = [("all heads", -1)] + [(f"head {m}", m) for m in range(f.n_heads)]
        return {c.learn_step: LABELS[v.index], c.learn_text: v.text, c.learn_plot: v.figure, c.learn_picture: picture,
                c.learn_focus: learn.focus_markdown(f), c.learn_head: gr.update(choices=heads, value=st.head if
                                                                                   st.head is not None else -1),
                c.learn_source: st.source, c.learn_part: st.part, c.notice: ""}

    def change(key, fn):
        s = x.session(key)
        with s.lock:
            return render(s, fn(s, state(s)))

    def on_open(key):
        s = x.session(key)
        with s.lock:
            st = s.cache.get("learn_state")
            if st is None:
                st = learn.teaching_state(teaching(s))
            elif s.page.get("learn_shown") == (st, id(capture_of(s, st))):
                return {}  # the tab still shows this lesson (hidden tabs keep their content)
            return render(s, st)

    def on_source(key, source):
        def fn(s, st):
            if source == "teaching":
                return learn.teaching_state(teaching(s)).with_(step=st.step)
            if s.capture is None:
                raise ValueError("the page has no image yet: pick an example or upload one first")
            t = s.target
            if t and t[0] == "pixel":
                return learn.follow_pixel(s.capture, st.with_(source="page"), *t[1])
            q = x.query(s)
            return st.following(source="page", part="decoder", row=q)
        return change(key, fn)

    def on_part(key, part):
        def fn(s, st):
            if part == st.part:
                return st
            cap = capture_of(s, st)
            if part == "encoder":
                rx, ry = learn.learn_focus(cap, st).reference_image_px
                return learn.follow_pixel(cap, st, rx, ry)
            return learn.follow_query(st, int(cap.detections.query_index[0]))
        return change(key, fn)

    def on_click(key, evt: gr.SelectData = None):
        u, v = evt.index
        def fn(s, st):
            px, py = to_image_px(u, v, s.cache.get("learn_scale", 1.0))
            return learn.follow_click(capture_of(s, st), st, px, py)
        return change(key, fn)

    def whatif(key, dx, dy, w):
        s = x.session(key)
        with s.lock:
            st = state(s).with_(shift=(float(dx), float(dy)), weight=None if w is None or w < 0 else float(w))
            s.cache["learn_state"] = st
            lm, cap = x.model_of(s), capture_of(s, st)
            with lm.lock:
                md, fig = learn.what_if_view(lm.model, cap, st, s.cache.setdefault("learn_cache", {}))
            return {c.learn_whatif_text: md, c.learn_whatif_plot: fig, c.notice: ""}

    def history(key):
        s = x.session(key)
        with s.lock:
            st = state(s)
            cap = capture_of(s, st)
            with x.model_of(s).lock:  # the snapshots' forward passes take turns with the model's
                md, fig = learn.history_view(cap, st, s.cache.setdefault("learn_cache", {}))
            return {c.learn_history_text: md, c.learn_history_plot: fig, c.notice: ""}

    def export(key):
        s = x.session(key)
        with s.lock:
            st = state(s)
            files = learn.slides(capture_of(s, st), st, tempfile.mkdtemp(dir=x.export_dir))
            return {c.learn_files: [str(files.pdf), *map(str, files.pngs)], c.notice: ""}

    def cost(hh, ww, levels, points, heads):
        md, fig = learn.cost_view(hh, ww, levels, points, heads)
        return {c.learn_cost_text: md, c.learn_cost_plot: fig, c.notice: ""}

    page, model_events = h._page, dict(concurrency_id="model", concurrency_limit=1)
    step_js = PLAY_JS

    def ev(event, fn, inputs, outputs=view_out, model=False, js_after=True):
        dep = event(page(fn, outputs), inputs, outputs, api_name=False, **(model_events if model else {}))
        if js_after:
            dep.then(None, None, None, js=step_js)

    # Opening the tab starts the lesson (the teaching example unless the session follows
    # something else), answered with the page's own tab event (explorer.handlers.TabOpener). Not in
    # the model's queue: the page allows one model run in flight (explorer.serving), and an image
    # picked while the tab opens must not be refused; the model's lock still serializes.
    h.openers["learn"] = TabOpener(on_open, view_out, OPEN_PLAY_JS)
    # The teaching example's forward pass, made now rather than when someone first opens the tab.
    threading.Thread(target=warm_up, args=(x.registry.get(x.registry.startup_name),), daemon=True,
                     name="learn-warm-up").start()
    ev(c.learn_prev.click, lambda k: change(k, lambda s, st: learn.step_to(st, st.step - 1)), [c.key])
    ev(c.learn_next.click, lambda k: change(k, lambda s, st: learn.step_to(st, st.step + 1)), [c.key])
    ev(c.learn_step.input, lambda k, lab: change(k, lambda s, st: learn.step_to(st, LABELS.index(lab))),
       [c.key, c.learn_step])
    ev(c.learn_source.input, on_source, [c.key, c.learn_source], model=True)
    ev(c.learn_part.input, on_part, [c.key, c.learn_part])
    ev(c.learn_head.input, lambda k, m: change(k, lambda s, st: st.following(head=None if m is None or int(m) < 0
                                                                             else int(m))), [c.key, c.learn_head])
    ev(c.learn_picture.select, on_click, [c.key])
    ev(c.learn_run.click, whatif, [c.key, c.learn_dx, c.learn_dy, c.learn_w],
       [c.learn_whatif_text, c.learn_whatif_plot, c.notice], model=True, js_after=False)
    ev(c.learn_history_run.click, history, [c.key], [c.learn_history_text, c.learn_history_plot, c.notice],
       model=True, js_after=False)
    ev(c.learn_export.click, export, [c.key], [c.learn_files, c.notice], js_after=False)
    for sl in c.learn_cost:
        ev(sl.change, cost, c.learn_cost, [c.learn_cost_text, c.learn_cost_plot, c.notice], js_after=False)
    assert len(STEPS) == len(LABELS)
