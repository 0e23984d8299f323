"""Gradio events -> ``Explorer`` calls -> component updates, and the wiring of both.

Each handler is thin: it finds the session, calls one ``Explorer`` method, and returns
``render``'s dict of only the components that changed. Select events are wrappers over plain
(x, y) functions, which the API endpoints expose (``gradio_client`` cannot send select data).
Page events answer a refused change with a notice (``_page``); API endpoints raise (``_api``).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import gradio as gr

from . import hover, serving
from . import status as words
from . import urlstate
from .models import IncompleteCheckpoint
from .state import UserError
from .views import TABS

log = logging.getLogger("ddetr.app")


def _message(e: BaseException) -> str:
    """The user's words for ``e``: never a server path (``serving.scrub_paths``)."""
    return serving.scrub_paths(str(e.args[0] if isinstance(e, KeyError) and e.args else e))


@dataclass(frozen=True)
class TabOpener:
    """What a custom tab does when it comes on screen: ``fn(key)`` -> {component: update}
    for ``outputs``; ``js`` runs in the browser once the update has arrived."""

    fn: Callable
    outputs: list
    js: str | None = None


class Handlers:
    def __init__(self, explorer, threshold: float = 0.3):
        self.x = explorer
        self.threshold = float(threshold)
        self.c = SimpleNamespace(tab_out={}, actions={}, galleries=[])
        # tab id -> TabOpener: a custom tab's own answer to being opened (the Learn lesson starts),
        # sent with the page's one tab event (a second listener on the tabs would be a second
        # request and a second redraw per tab switch).
        self.openers: dict[str, TabOpener] = {}

    # ------------------------------------------------------------------ responses
    def render(self, s, controls=()) -> dict:
        """What changed for session ``s``: the attention picture, status, legend, link; the
        detections picture and list only when they changed; ``controls``: the controls to set
        from the session's view ("all", or some), those the change did not come from (echoing a
        control's own value back would undo clicks the user made meanwhile)."""
        x, c = self.x, self.c
        out = {c.key: s.key, c.notice: "", c.status: words.status(x, s), c.link: self.link_text(s),
               c.url: urlstate.encode(urlstate.of_session(x, s))}
        if s.capture is not None:
            with x.timings.timer("render"):
                out[c.att_image] = x.attention_image(s)
                # the hover map of this picture rides with its legend (explorer.hover)
                out[c.legend] = words.legend_html(x, s) + hover.map_html(x, s)
                shown = (id(s.capture), s.view.threshold, s.target, s.box)
                if s.page.get("detections_shown") != shown:
                    choices, value = x.detection_choices(s)
                    out[c.det_image] = x.detections_image(s)
                    # The list's choices only when they changed: re-sending them costs the browser more
                    # than drawing both pictures.
                    same = s.page.get("choices_sent") == choices
                    out[c.det_list] = gr.update(value=value) if same else gr.update(choices=choices, value=value)
                    s.page["choices_sent"] = choices
                    s.page["detections_shown"] = shown
        if controls:
            out.update({k: v for k, v in self.controls_of(s).items() if controls == "all" or k in controls})
        return out

    def _changed(self, key, out: dict) -> dict:
        """``out`` without the texts this page already shows (fewer updates, less redraw)."""
        s = self.x.store.get(key)
        if s is None:
            return out
        sent = s.page.setdefault("sent", {})
        for comp in (self.c.status, self.c.legend, self.c.link, self.c.url, self.c.notice):
            if comp in out and isinstance(out[comp], str):
                if sent.get(comp) == out[comp]:
                    del out[comp]
                else:
                    sent[comp] = out[comp]
        return out

    def controls_of(self, s) -> dict:
        c, v = self.c, s.view
        cfg = self.x.model_of(s).model.cfg
        M, L = cfg.n_heads, cfg.n_levels
        layer = v.layer if v.layer >= 0 else cfg.dec_layers - 1
        heads = list(v.heads) if v.heads is not None else list(range(M))
        return {c.layer: layer, c.heads: heads, c.levels: list(v.levels) if v.levels is not None else list(range(L)),
                c.color_by: v.color_by, c.top_k: v.top_k or 0, c.layout: "merged" if v.merged else "scales",
                c.enc_level: v.enc_level, c.follow: heads[0] if len(heads) == 1 else -1, c.zoom: v.zoom,
                c.threshold: v.threshold}

    def tab_update(self, s, tab_id: str, force: bool = True) -> dict:
        """The (note, body) update of a tab; with ``force=False`` nothing when the tab already
        shows this session's current state (its components keep their content while hidden)."""
        note, body = self.c.tab_out[tab_id]
        sig = self.x.tab_signature(s, tab_id)
        if not force and s.page.get(("tab_drawn", tab_id)) == sig:
            return {}
        s.page[("tab_drawn", tab_id)] = sig
        drawn = self.x.draw_tab(s, tab_id)
        if TABS[tab_id].body == "file":
            return {note: drawn.note}
        return {note: drawn.note, body: drawn.body if drawn.body is not None else None}

    def link_text(self, s) -> str:
        if s.capture is None:
            return ""
        q = urlstate.encode(urlstate.of_session(self.x, s))
        if not q:
            return "*Uploaded images cannot be linked (the server keeps no uploads for others); pick an example for a link.*"
        return f"[Link to this view](?{q}) (example, detection, layer, heads, levels, tab)"

    def refused(self, key, message: str) -> dict:
        """A refused change: says why; the controls go back to what the pictures show."""
        s = self.x.store.get(key)
        out = {self.c.notice: f"⚠ {message}"}
        if s is not None and s.capture is not None:
            out.update(self.controls_of(s))
        return out

    # ------------------------------------------------------------------ model runs
    def detect(self, key, payload, threshold, box="", progress=gr.Progress()):
        path = payload.get("path") if isinstance(payload, dict) else None
        if not path:
            raise UserError("no image received: upload an image file")
        s = self._start(key, threshold, box)
        self.x.run(s, path, progress)
        with s.lock:
            return {**self.render(s), self.c.image_panel: gr.Accordion(open=False), self.c.example: None}

    def detect_example(self, key, name, threshold, box="", progress=gr.Progress()):
        if not name:
            raise UserError("pick an example from the list")
        path = self.x.example_path(str(name))
        s = self._start(key, threshold, box)
        self.x.run(s, path, progress, example=str(name))
        with s.lock:
            return {**self.render(s), self.c.image_panel: gr.Accordion(open=False), self.c.example: str(name)}

    def on_gallery(self, key, group, threshold, box="", evt: gr.SelectData = None, progress=gr.Progress()):
        return self.detect_example(key, self.x.example_name(group, evt.index), threshold, box, progress)

    def set_prompt(self, key, text, box="", progress=gr.Progress()):
        """What an open-vocabulary model detects ("cat. remote control."); re-runs the image."""
        s = self.x.session(key)
        self._box(s, box)
        self.x.set_prompt(s, str(text or ""), progress)
        with s.lock:
            return self.render(s)

    def _start(self, key, threshold, box):
        s = self.x.start(key, threshold if threshold is not None else self.threshold)
        self._box(s, box)
        return s

    def _box(self, s, box) -> None:
        if isinstance(box, str) and "x" in box:
            w, _, h = box.partition("x")
            try:
                self.x.set_box(s, float(w), float(h))
            except ValueError:
                pass

    # ------------------------------------------------------------------ views (never run the model)
    def _view(self, key, box, change, controls=()) -> dict:
        s = self.x.with_capture(key)
        with s.lock:
            self._box(s, box)
            change(s)
            return self.render(s, controls)

    def select_detection(self, key, index, box=""):
        if index is None:
            raise UserError("pick a detection from the list")
        return self._view(key, box, lambda s: self.x.select_detection(s, int(index)))

    def click(self, key, x, y, box=""):
        return self._view(key, box, lambda s: self.x.click(s, float(x), float(y)))

    def click_pixel(self, key, x, y, box=""):
        return self._view(key, box, lambda s: self.x.click(s, float(x), float(y), boxes=False))

    def click_view(self, key, u, v, box=""):
        """A click at display pixel (u, v) of the attention picture."""
        return self._view(key, box, lambda s: self.x.click_attention(s, float(u), float(v)))

    def on_det_select(self, key, box="", evt: gr.SelectData = None):
        u, v = evt.index
        return self._view(key, box, lambda s: self.x.click_detections(s, float(u), float(v)))

    def on_att_select(self, key, box="", evt: gr.SelectData = None):
        u, v = evt.index
        return self.click_view(key, u, v, box)

    def set_threshold(self, key, threshold, box=""):
        return self._view(key, box, lambda s: self.x.set_view(s, threshold=float(threshold)))

    def set_view(self, key, layer, heads, levels, color_by, top_k, layout, enc_level, box=""):
        return self._view(key, box, lambda s: self.x.set_view(
            s, layer=int(layer), heads=tuple(int(i) for i in (heads or [])),
            levels=tuple(int(i) for i in (levels or [])), color_by=str(color_by), top_k=int(top_k or 0),
            merged=layout != "scales", enc_level=int(enc_level or 0)), controls=[self.c.follow])

    def follow_head(self, key, head, box=""):
        heads = None if head is None or int(head) < 0 else (int(head),)
        return self._view(key, box, lambda s: self.x.set_view(s, heads=heads), controls=[self.c.heads])

    def set_zoom(self, key, zoom, box=""):
        return self._view(key, box, lambda s: self.x.set_view(s, zoom=bool(zoom)))

    # ------------------------------------------------------------------ tabs
    def refresh_tab(self, key):
        """After a change of view: redraw the tab on screen if what it shows changed. A second
        step of each view event, so that the pictures arrive first."""
        s = self.x.store.get(key)
        if s is None or s.active_tab not in TABS:
            return {}
        with s.lock:
            return self.tab_update(s, s.active_tab, force=False)

    def show_tab(self, key, tab_id, box=""):
        """A tab came on screen: draw it now, and keep it current on every later change."""
        s = self.x.session(key)  # a tab opened before any image is remembered too
        with s.lock:
            self._box(s, box)
            self.x.show_tab(s, str(tab_id))
            out = {self.c.key: s.key, **self.tab_update(s, s.active_tab, force=False)}
            out[self.c.url] = urlstate.encode(urlstate.of_session(self.x, s))
            out[self.c.link] = self.link_text(s)
        opener = self.openers.get(s.active_tab)
        if opener is not None:  # outside the session's lock: the opener takes it (and the model's)
            try:
                out.update(opener.fn(s.key))
            except (ValueError, LookupError) as e:  # the tab's own refusal; the tab switch stands
                log.info("opening %s refused: %s", s.active_tab, " ".join(_message(e).split()))
                out[self.c.notice] = f"⚠ {_message(e)}"

        return out

    def click_tab(self, key, tab_id, u, v, box=""):
        return self._view(key, box, lambda s: self.x.click_tab(s, str(tab_id), float(u), float(v)), controls="all")

    def on_tab_image_select(self, key, tab_id, box="", evt: gr.SelectData = None):
        u, v = evt.index
        return self.click_tab(key, tab_id, u, v, box)

    def run_action(self, key, tab_id, choice=None, box="", progress=gr.Progress()):
        s = self.x.with_capture(key)
        with s.lock:
            drawn = self.x.run_action(s, str(tab_id), choice)
            note, body = self.c.tab_out[tab_id]
            return {note: drawn.note, body: drawn.body}

    def export(self, key, kind):
        """API: the file of ``kind`` (png, svg, html, report, capture)."""
        from .exports import export

        s = self.x.with_capture(key)
        with s.lock:
            return str(export(self.x, s, str(kind)))

    def gradients(self, key):
        return self.run_action(key, "gradients")

    # ------------------------------------------------------------------ checkpoints
    def set_checkpoint(self, key, name, box="", progress=gr.Progress(), incomplete: bool = False):
        """Switch this session to another checkpoint of the registry (by name, never a path).
        A failure keeps the session's model and the dropdown on it."""
        s = self.x.session(key)
        c = self.c
        current = s.model_name
        progress(0.1, desc=f"loading {name}")
        try:
            lm = self.x.set_model(s, str(name), incomplete=incomplete)
        except IncompleteCheckpoint as e:
            return {c.key: s.key, c.ckpt: gr.update(value=current), c.open_anyway: gr.update(visible=True),
                    c.notice: f"⚠ {e}. **Open anyway** loads what fits and leaves the rest randomly initialized "
                              "(a banner then names them); or choose another checkpoint."}
        except UserError as e:
            return {c.key: s.key, c.ckpt: gr.update(value=current), c.notice: f"⚠ {e}"}
        cfg = lm.model.cfg
        L, M = cfg.n_levels, cfg.n_heads
        out = self.render(s)
        out.update({
            c.layer: gr.update(maximum=max(cfg.enc_layers, cfg.dec_layers) - 1, value=cfg.dec_layers - 1),
            c.heads: gr.update(choices=list(range(M)), value=list(range(M))),
            c.levels: gr.update(choices=list(range(L)), value=list(range(L))),
            c.color_by: "head", c.top_k: gr.update(maximum=M * L * cfg.n_points, value=0), c.layout: "merged",
            c.enc_level: gr.update(choices=list(range(L)), value=0),
            c.follow: gr.update(choices=[("all heads", -1)] + [(f"head {m}", m) for m in range(M)], value=-1),
            c.header: words.model_header(lm), c.ckpt: gr.update(value=lm.name), c.open_anyway: gr.update(visible=False),
            c.prompt: gr.update(visible=bool(getattr(lm.model, "needs_text", False))),
            c.det_image: None, c.att_image: None, c.det_list: gr.update(choices=[], value=None), c.legend: "",
            c.image_panel: gr.Accordion(open=True)})
        for note, body in c.tab_out.values():
            out[note] = "*Run an image first.*"
        return out

    def api_set_checkpoint(self, key, name):
        """API: switch the session's checkpoint; failures raise (no "open anyway" over the API)."""
        s = self.x.session(key)
        lm = self.x.set_model(s, str(name))
        return {self.c.key: s.key, self.c.header: words.model_header(lm), self.c.notice: "",
                self.c.status: words.status(self.x, s)}

    def open_anyway(self, key, box="", progress=gr.Progress()):
        s = self.x.session(key)
        if not s.pending_model:
            raise UserError("no checkpoint is waiting to be opened; choose one from the list")
        return self.set_checkpoint(key, s.pending_model, box, progress, incomplete=True)

    # ------------------------------------------------------------------ links
    def restore(self, key, box="", request: gr.Request = None):
        """Page load: restore the view a link names (``explorer.urlstate``)."""
        params = dict(request.query_params) if request is not None else {}
        st = urlstate.parse(params)
        s = self.x.session(key)
        self._box(s, box)
        out = {self.c.key: s.key}
        problems = list(st.problems)
        if st.tab is not None:
            if st.tab in TABS:
                self.x.show_tab(s, st.tab)
                out[self.c.tabs] = gr.Tabs(selected=st.tab)
            else:
                problems.append(f"tab={st.tab!r} is not a tab ({', '.join(TABS)})")
        if st.example:
            try:
                s = self.x.start(s.key, self.threshold)
                self.x.run(s, self.x.example_path(st.example), example=st.example)
                with s.lock:
                    if st.det is not None:
                        self.x.select_detection(s, st.det)
                    fields = {k: v for k, v in (("layer", st.layer), ("heads", st.heads), ("levels", st.levels))
                              if v is not None}
                    if fields:
                        self.x.set_view(s, **fields)
            except UserError as e:
                problems.append(str(e))
            with s.lock:
                out.update(self.render(s, controls="all"))
                if s.capture is not None:
                    out[self.c.example] = st.example
                    out[self.c.image_panel] = gr.Accordion(open=False)
        if s.active_tab in TABS:
            with s.lock:
                out.update(self.tab_update(s, s.active_tab))
        if problems:
            out[self.c.notice] = "⚠ This link could not be restored fully: " + "; ".join(problems)
        return out

    # ------------------------------------------------------------------ wiring
    def _page(self, fn, outputs):
        """A page event: a refused change becomes a notice; never an error badge."""
        keys = set(outputs)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                out = fn(*args, **kwargs)
            except (ValueError, LookupError) as e:  # UserError is a ValueError: a user's mistake
                log.info("%s refused: %s", fn.__name__, " ".join(_message(e).split()))
                out = self.refused(args[0] if args else None, _message(e))
            except MemoryError:
                log.warning("%s ran out of memory", fn.__name__)
                out = {self.c.notice: "⚠ The server ran out of memory for this request; try a smaller image."}
            except Exception as e:  # a bug: log it, tell the user, keep serving
                log.exception("unexpected error in %s", fn.__name__)
                out = {self.c.notice: f"⚠ Internal error ({type(e).__name__}). The server keeps running; "
                                      "please try again or report it."}
            out = self._changed(args[0] if args else None, {k: v for k, v in out.items() if k in keys})
            return out or [gr.skip()] * len(outputs)  # Gradio reads an empty dict as one missing value
        return run

    def _api(self, fn, outputs):
        """An API endpoint: errors are raised for the client (``serving.guarded``: one log line,
        no server paths); a dict result is cut to this endpoint's outputs."""
        keys = set(outputs)
        guarded = serving.guarded(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            out = guarded(*args, **kwargs)
            return {k: v for k, v in out.items() if k in keys} if isinstance(out, dict) else out
        return run

    def wire(self, demo, model_events: dict, tab_js: str, box_js: str, url_js: str) -> None:
        from .wiring import wire

        wire(self, demo, model_events, tab_js, box_js, url_js)
