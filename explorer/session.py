"""The explorer as plain Python, the one owner of session state: run the model once per image,
keep the capture in the session, and answer every change of view from it.

Every change of a session goes through a method here; ``explorer.page`` maps Gradio events to
these methods and their results to components, and never touches a session itself. A refused
change (``UserError``) leaves the session exactly as it was.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np

from .images import read_image
from .models import IncompleteCheckpoint, LoadedModel, ModelRegistry
from .state import Session, SessionStore, Timings, UserError, View
from .views import TABS, Drawn, Selected, draw

DEFAULT_BOX = (800, 800)  # device pixels a picture is drawn for until the browser says its size
MIN_BOX, MAX_BOX = 160, 2400


class Explorer:
    """What the page does, as plain Python (no Gradio)."""

    def __init__(self, registry: ModelRegistry, store: SessionStore, examples: dict[str, dict[str, Path]],
                 timings: Timings | None = None, *, capture_bytes: float = 100e6, max_pixels: int = 50_000_000,
                 upload_roots=(), export_dir: str | os.PathLike | None = None, precision: str = "fp32"):
        self.registry, self.store, self.examples = registry, store, examples
        self.precision = precision  # "fp32" or "bf16" (ddetr.precision), for this project's models
        self.timings = timings or Timings()
        self.capture_bytes, self.max_pixels = capture_bytes, int(max_pixels)
        self.upload_roots = [Path(r) for r in upload_roots]
        self.example_roots = sorted({p.parent for items in examples.values() for p in items.values()})
        self.export_dir = Path(export_dir or tempfile.mkdtemp(prefix="ddetr-explorer-"))

    # ---- sessions ----
    def session(self, key: str | None) -> Session:
        """The session of ``key``, or a new one (keys come from ``gr.State``, never from users)."""
        return self.store.get(key) or self.store.create(self.registry.startup_name)

    def with_capture(self, key: str | None) -> Session:
        s = self.store.get(key)
        if s is None or s.capture is None:
            raise UserError("no image yet: upload an image or pick an example first"
                            + (" (your previous session expired from the server's memory)" if key and s is None else ""))
        return s

    def model_of(self, s: Session) -> LoadedModel:
        return self.registry.get(s.model_name)

    # ---- running the model (the only place it runs for a view) ----
    def example_path(self, name: str) -> Path:
        for items in self.examples.values():
            if name in items:
                return items[name]
        raise UserError(f"unknown example {name!r}; pick one from the list")

    def example_name(self, group: str, index: int) -> str:
        names = list(self.examples.get(group, {}))
        if not 0 <= int(index) < len(names):
            raise UserError(f"example {index} of {group!r} does not exist")
        return names[int(index)]

    def run(self, s: Session, path, progress=None, example: str | None = None) -> None:
        """Open ``path`` (an upload or an example), run the model once under a capture."""
        step = progress or (lambda *a, **k: None)
        step(0.05, desc="reading the image")
        image, notes = read_image(path, [*self.upload_roots, *self.example_roots], self.max_pixels)
        step(0.2, desc="running the model and capturing every sampling point")
        captured = self.predict(s, image)
        with s.lock:
            s.reset()
            s.capture = captured
            s.image_name, s.example = Path(path).name, example
            s.notes = notes + [f"not captured (memory budget): {x}" for x in s.capture.left_out if "MB" in x]
            best = self.visible(s)
            s.target = ("detection", best[0][0]) if best else None
        self.store.touch(s.key)
        step(0.9, desc="drawing")

    @staticmethod
    def prompt_of(s: Session, lm: LoadedModel) -> dict:
        """predict's text argument: the session's prompt for open-vocabulary models (ddetr.hf_family)."""
        if not getattr(lm.model, "needs_text", False):
            return {}
        if not s.prompt.strip():
            raise UserError("this model detects what you name: type a prompt first, e.g. 'cat. remote control.'")
        return {"text": s.prompt}

    def set_prompt(self, s: Session, text: str, progress=None) -> None:
        """Ask an open-vocabulary model for ``text`` ("cat. dog."); re-runs the current image."""
        from ddetr.hf_family.detector import phrases_of

        lm = self.model_of(s)
        if not getattr(lm.model, "needs_text", False):
            raise UserError("this model has a fixed set of classes; it takes no prompt")
        try:
            phrases_of(text or "")
        except ValueError as e:
            raise UserError(str(e)) from None
        s.prompt = text.strip()
        if s.capture is None:  # remembered for the next image
            return
        if progress:
            progress(0.2, desc="running the model and capturing every sampling point")
        captured = self.predict(s, s.capture.image)
        with s.lock:  # the same image (name, example, notes kept) with the new classes
            name, example, notes = s.image_name, s.example, s.notes
            s.reset()
            s.capture, s.image_name, s.example, s.notes = captured, name, example, notes
            best = self.visible(s)
            s.target = ("detection", best[0][0]) if best else None
        self.store.touch(s.key)

    def predict(self, s: Session, image):
        """Run the session's model once on ``image`` under a capture -> the ``Capture``."""
        from ddetr.capture import capture
        from ddetr.model import DeformableDETR

        lm = self.model_of(s)
        prompt = self.prompt_of(s, lm)
        if self.precision != "fp32" and isinstance(lm.model, DeformableDETR):  # transformers models: float32
            prompt["precision"] = self.precision
        with lm.lock, self.timings.timer("model"):
            with capture(lm.model, max_bytes=self.capture_bytes) as session:
                lm.model.predict(image, **prompt)
            lm.runs += 1
        return session.captures[0]

    def set_model(self, s: Session, name: str, incomplete: bool = False) -> LoadedModel:
        """Switch this session to checkpoint ``name`` (loads it on first use); a failure leaves
        the session on its model. ``incomplete``: the user chose to open a checkpoint with
        missing tensors anyway. A checkpoint that needs that choice is remembered
        (``Session.pending_model``) for the user's "open anyway"."""
        try:
            lm = self.registry.get(name, incomplete=incomplete)
        except IncompleteCheckpoint:
            s.pending_model = str(name)
            raise
        with s.lock:
            s.pending_model = None
            s.model_name = lm.name
            s.reset()
            s.view = View(threshold=s.view.threshold)
            s.example = None
        return lm

    def start(self, key: str | None, threshold: float) -> Session:
        """The session of ``key`` (or a new one) about to run an image at ``threshold``."""
        s = self.session(key)
        s.view = dataclasses.replace(s.view, threshold=float(threshold))
        return s

    def show_tab(self, s: Session, tab_id: str) -> None:
        """``tab_id`` is on screen: later changes keep it drawn."""
        if tab_id not in TABS:
            raise UserError(f"unknown tab {tab_id!r}; tabs: {', '.join(TABS)}")
        s.active_tab = str(tab_id)

    # ---- selection ----
    def visible(self, s: Session) -> list[tuple[int, int]]:
        """(detection index, query) of the detections at or above the threshold, best first."""
        from viz.selection import detection_queries

        return detection_queries(s.capture, s.view.threshold)

    def select_detection(self, s: Session, index: int) -> None:
        n = len(s.capture.detections)
        if not 0 <= int(index) < n:
            raise UserError(f"detection {index} does not exist (this image has {n})")
        s.target, s.point = ("detection", int(index)), None

    def click(self, s: Session, x: float, y: float, boxes: bool = True) -> None:
        """A click at original-image pixel (x, y): on a shown detection's box (the smallest box
        holding the point) selects it; anywhere else selects the pixel's encoder token."""
        h, w = s.capture.image.shape[:2]
        if not (0 <= x < w and 0 <= y < h):
            raise UserError(f"({x:.0f}, {y:.0f}) is outside the {w}x{h} image")
        s.point = None
        if boxes:
            det = s.capture.detections
            hits = []
            for i, _q in self.visible(s):
                x0, y0, x1, y1 = det.boxes[i].tolist()
                if x0 <= x <= x1 and y0 <= y <= y1:
                    hits.append(((x1 - x0) * (y1 - y0), i))
            if hits:
                s.target = ("detection", min(hits)[1])
                return
        if not s.capture.meta.get("enc_layers"):
            raise UserError(f"this model ({s.capture.meta['variant']}) has no deformable encoder: a pixel has "
                            "no sampling points of its own; click a detection's box")
        s.target = ("pixel", (float(x), float(y)))

    def click_detections(self, s: Session, u: float, v: float) -> None:
        """A click at display pixel (u, v) of the detections picture."""
        x, y = (u + 0.5) / self.scale(s), (v + 0.5) / self.scale(s)
        self.click(s, x, y)

    def click_attention(self, s: Session, u: float, v: float) -> None:
        """A click at display pixel (u, v) of the attention picture, in either layout: on a
        sampling point picks that point (its cells are outlined, the status gives its numbers);
        elsewhere selects the encoder token under that image point."""
        from viz.overlay import diameters

        panels = self.attention_panels(s)
        hit = next(((p, p.image_point(u, v)) for p in panels if p.image_point(u, v) is not None), None)
        if hit is None:
            raise UserError("that click is between the panels; click inside a picture")
        panel, (x, y) = hit
        table, sel = self.table(s)
        if table is not None and len(table):
            rows = np.arange(len(table)) if panel.level is None else np.flatnonzero(table.level == panel.level)
            if rows.size:
                d = (table.image_px[rows] - [x, y]) * panel.scale  # display px
                dist = np.hypot(d[:, 0], d[:, 1])
                radius = diameters(table, sel)[rows] / 2 + 3
                near = np.flatnonzero(dist <= radius)
                if near.size:
                    k = rows[near[np.argmax(table.weight[rows[near]])]]  # the heaviest point under the click
                    s.point = (int(table.head[k]), int(table.level[k]), int(table.point[k]))
                    return
        self.click(s, x, y, boxes=False)

    def set_view(self, s: Session, **fields) -> None:
        """Change view settings; a refused change (``UserError``) changes nothing."""
        cfg = self.model_of(s).model.cfg
        v = dataclasses.replace(s.view)
        for k, val in fields.items():
            if not hasattr(v, k):
                raise ValueError(f"unknown view field {k!r}")
            setattr(v, k, val)
        if v.heads is not None and len(v.heads) == 0:
            raise UserError("select at least one head: the view keeps the heads it had")
        if v.levels is not None and len(v.levels) == 0:
            raise UserError("select at least one level: the view keeps the levels it had")
        bad = [m for m in (v.heads or ()) if not 0 <= m < cfg.n_heads]
        if bad:
            raise UserError(f"head {bad[0]} does not exist; the model has heads 0..{cfg.n_heads - 1}")
        bad = [l for l in (v.levels or ()) if not 0 <= l < cfg.n_levels]
        if bad or not 0 <= v.enc_level < cfg.n_levels:
            raise UserError(f"level {(bad or [v.enc_level])[0]} does not exist; the model has levels "
                            f"0..{cfg.n_levels - 1}")
        if not -1 <= v.layer < max(cfg.enc_layers, cfg.dec_layers):
            raise UserError(f"layer {v.layer} does not exist; the model has layers 0..{max(cfg.enc_layers, cfg.dec_layers) - 1}")
        if v.heads is not None and len(v.heads) == cfg.n_heads:
            v.heads = None
        if v.levels is not None and len(v.levels) == cfg.n_levels:
            v.levels = None
        if v.heads is not None:
            v.heads = tuple(sorted(set(int(m) for m in v.heads)))
        if v.levels is not None:
            v.levels = tuple(sorted(set(int(m) for m in v.levels)))
        s.view = v
        s.point = None

    def set_box(self, s: Session, width: float, height: float) -> None:
        """The browser's picture box (device pixels): pictures are drawn at that size."""
        if width and height and np.isfinite(width) and np.isfinite(height):
            s.box = (int(np.clip(width, MIN_BOX, MAX_BOX)), int(np.clip(height, MIN_BOX, MAX_BOX)))

    # ---- what is drawn ----
    def selection(self, s: Session, part: str):
        from viz.selection import Selection

        v = s.view
        n = s.capture.meta["dec_layers" if part == "decoder" else "enc_layers"]
        layer = min(int(v.layer), n - 1) if v.layer >= 0 else -1
        return Selection(layer=layer, heads=v.heads, levels=v.levels, color_by=v.color_by,
                         top_k=v.top_k or None, merged=v.merged)

    def query(self, s: Session) -> int | None:
        """The decoder query of the selected detection (None when a pixel is selected)."""
        if s.target and s.target[0] == "detection":
            return int(s.capture.detections.query_index[s.target[1]])
        return None

    def selected(self, s: Session) -> Selected:
        return Selected(s.target, self.query(s), self.selection(s, "decoder"), self.selection(s, "encoder"),
                        s.cache, self.model_of(s))

    def table(self, s: Session):
        """(``PointTable`` of the current target, its ``Selection``); (None, None) without one."""
        from viz.selection import decoder_table, encoder_table

        if s.target is None:
            return None, None
        key = ("table", s.target, dataclasses.astuple(s.view))
        if key not in s.cache:  # a click, a tab and the status all ask for the same table
            for k in [k for k in s.cache if isinstance(k, tuple) and k[0] == "table"]:
                del s.cache[k]
            if s.target[0] == "detection":
                sel = self.selection(s, "decoder")
                s.cache[key] = (decoder_table(s.capture, self.query(s), sel), sel)
            else:
                sel = self.selection(s, "encoder")
                x, y = s.target[1]
                s.cache[key] = (encoder_table(s.capture, x, y, s.view.enc_level, sel), sel)
        return s.cache[key]

    def picked_row(self, s: Session, table) -> int | None:
        if s.point is None or table is None:
            return None
        m, l, p = s.point
        rows = np.flatnonzero((table.head == m) & (table.level == l) & (table.point == p))
        return int(rows[0]) if rows.size else None

    def scale(self, s: Session) -> float:
        """Display pixels per image pixel of the detections picture (fits the browser's box)."""
        from viz.raster import fit_scale

        h, w = s.capture.image.shape[:2]
        return fit_scale(w, h, s.box or DEFAULT_BOX)

    def zoom_rect(self, s: Session) -> tuple[float, float, float, float]:
        """The image region the attention view shows: all of it, or (zoom) the selected
        detection's box and every point drawn, with a margin."""
        from viz.grid import crop_rect

        h, w = s.capture.image.shape[:2]
        table, _ = self.table(s)
        if not s.view.zoom or table is None or len(table) == 0:
            return (0.0, 0.0, float(w), float(h))
        x0, y0, x1, y1 = crop_rect([table], w, h, pad=0.08, min_side=24.0)
        return (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))

    def attention_panels(self, s: Session):
        from viz.raster import panel_layout

        v = s.view
        levels = list(v.levels) if v.levels is not None else list(range(s.capture.meta["n_levels"]))
        return panel_layout(self.zoom_rect(s), levels, v.merged, s.box or DEFAULT_BOX)

    def detections_image(self, s: Session) -> np.ndarray:
        """The image with the shown detections' boxes and labels; the selection highlighted."""
        from viz.detections_view import render_detections
        from viz.raster import Raster
        from viz.style import REFERENCE_COLOR

        with self.timings.timer("render_detections"):
            scale = self.scale(s)
            det = self.selected_detection(s)
            pic = render_detections(s.capture, s.view.threshold, scale, selected=det)
            if s.target and s.target[0] == "pixel":
                r = Raster(pic, 1.0)
                r.cross([np.asarray(s.target[1]) * scale], color=REFERENCE_COLOR)
                pic = r.array()
            return pic

    def selected_detection(self, s: Session) -> int | None:
        return s.target[1] if s.target and s.target[0] == "detection" else None

    def attention_image(self, s: Session) -> np.ndarray:
        from viz.query_view import attention_raster
        from viz.raster import Raster

        with self.timings.timer("render_attention"):
            table, sel = self.table(s)
            if table is None:
                return Raster(s.capture.image, self.scale(s), dim=0.3).array()
            return attention_raster(s.capture, table, sel, self.attention_panels(s), self.picked_row(s, table))

    def detection_choices(self, s: Session) -> tuple[list[tuple[str, int]], int | None]:
        det = s.capture.detections
        choices = [(f"#{i} {det.label_names[i]} {float(det.scores[i]):.2f} (query {q})", i) for i, q in self.visible(s)]
        value = self.selected_detection(s)
        if value is not None and value not in [c[1] for c in choices]:
            choices.append((f"#{value} {det.label_names[value]} {float(det.scores[value]):.2f} (below threshold)", value))
        return choices, value

    # ---- tabs ----
    def draw_tab(self, s: Session, tab_id: str) -> Drawn:
        if tab_id not in TABS:
            raise UserError(f"unknown tab {tab_id!r}; tabs: {', '.join(TABS)}")
        if s.capture is None:
            return draw(tab_id, None, None, s.view)
        with self.timings.timer(f"tab_{tab_id}"):
            drawn = draw(tab_id, s.capture, self.selected(s), s.view)
        if isinstance(drawn.body, np.ndarray):
            s.cache[("picture", tab_id)] = drawn.body.shape[:2]
        return drawn

    def tab_signature(self, s: Session, tab_id: str) -> tuple:
        """What a tab's drawing depends on: equal signatures draw the same tab."""
        grads = tuple(sorted(k[1] for k in s.cache if isinstance(k, tuple) and k[0] == "gradients"))
        return (tab_id, id(s.capture), s.model_name, s.target, dataclasses.astuple(s.view), grads)

    def click_tab(self, s: Session, tab_id: str, u: float, v: float) -> None:
        """A click at (u, v) on an image tab's picture: sets what its ``click`` says."""
        tab = TABS.get(tab_id)
        shape = s.cache.get(("picture", tab_id))
        if tab is None or tab.click is None or shape is None:
            raise UserError(f"the {tab_id!r} tab's picture cannot be clicked")
        fields = tab.click(s.capture, self.selected(s), s.view, float(u), float(v), shape)
        if fields is None:
            raise UserError("that click is between the cells; click inside one")
        self.set_view(s, **fields)

    def run_action(self, s: Session, tab_id: str, choice=None) -> Drawn:
        tab = TABS.get(tab_id)
        if tab is None or tab.action is None:
            raise UserError(f"the {tab_id!r} tab has no action")
        out = tab.action.run(self, s, choice)
        return out if out is not None else self.draw_tab(s, tab_id)

    def gradients(self, s: Session, progress=None) -> None:
        """Figure 5 data of the selected detection: one forward + five backward passes."""
        from ddetr.gradients import box_gradients

        q = self.query(s)
        if q is None:
            raise UserError("select a detection first: gradients are of one detection's box and score")
        if ("gradients", q) in s.cache:
            return
        lm = self.model_of(s)
        if getattr(lm.model, "family", None) is not None:  # a transformers detector (ddetr.hf_family)
            raise UserError(f"gradient maps are computed for Deformable DETR checkpoints; this is a "
                            f"{lm.model.family.title} model")
        if progress:
            progress(0.1, desc="forward and backward passes through the model")
        with lm.lock, self.timings.timer("gradients"):
            grads = box_gradients(lm.model, s.capture.image, q)
            lm.runs += 1
        s.cache[("gradients", q)] = grads
        self.store.touch(s.key)
