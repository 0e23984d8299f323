"""The explorer as plain Python (no Gradio): run the model once per image, keep the capture
in the session, answer every change of view from it. ``app.py`` maps these methods to events.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app_state import (REPORT_DETECTIONS, LoadedModel, ModelRegistry, Session, SessionStore, Timings, UserError,
                       read_image)


class Explorer:
    """What the page does, as plain Python (no Gradio): run the model on an image once, keep the
    capture in the session, and answer every change of view from it. ``app.py`` maps these
    methods to events and components."""

    def __init__(self, registry: ModelRegistry, store: SessionStore, examples: dict[str, dict[str, Path]],
                 timings: Timings | None = None, *, capture_bytes: float = 100e6, max_pixels: int = 50_000_000,
                 upload_roots=(), export_dir: str | os.PathLike | None = None):
        self.registry, self.store, self.examples = registry, store, examples
        self.timings = timings or Timings()
        self.capture_bytes, self.max_pixels = capture_bytes, int(max_pixels)
        self.upload_roots = [Path(r) for r in upload_roots]
        self.example_roots = sorted({p.parent for items in examples.values() for p in items.values()})
        import tempfile

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

    def run(self, s: Session, path, progress=None) -> None:
        """Open ``path`` (an upload or an example), run the model once under a capture."""
        from ddetr.capture import capture  # see the report: ``ddetr.capture`` the function is shadowed

        step = progress or (lambda *a, **k: None)
        step(0.05, desc="reading the image")
        image, notes = read_image(path, [*self.upload_roots, *self.example_roots], self.max_pixels)
        lm = self.model_of(s)
        step(0.2, desc="running the model and capturing every sampling point")
        with lm.lock, self.timings.timer("model"):
            with capture(lm.model, max_bytes=self.capture_bytes) as session:
                lm.model.predict(image)
            lm.runs += 1
        with s.lock:
            s.reset()
            s.capture = session.captures[0]
            s.image_name = Path(path).name
            s.notes = notes + [f"not captured (memory budget): {x}" for x in s.capture.left_out if "MB" in x]
            best = self.visible(s)
            s.target = ("detection", best[0][0]) if best else None
        self.store.touch(s.key)
        step(0.9, desc="drawing")

    # ---- selection ----
    def visible(self, s: Session) -> list[tuple[int, int]]:
        """(detection index, query) of the detections at or above the threshold, best first."""
        from viz.selection import detection_queries

        return detection_queries(s.capture, s.view.threshold)

    def select_detection(self, s: Session, index: int) -> None:
        n = len(s.capture.detections)
        if not 0 <= int(index) < n:
            raise UserError(f"detection {index} does not exist (this image has {n})")
        s.target = ("detection", int(index))

    def click(self, s: Session, x: float, y: float, boxes: bool = True) -> None:
        """A click at original-image pixel (x, y): on a shown detection's box (the smallest box
        holding the point) selects it; anywhere else selects the pixel's encoder token."""
        h, w = s.capture.image.shape[:2]
        if not (0 <= x < w and 0 <= y < h):
            raise UserError(f"({x:.0f}, {y:.0f}) is outside the {w}x{h} image")
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
        s.target = ("pixel", (float(x), float(y)))

    def set_view(self, s: Session, **fields) -> None:
        cfg = self.model_of(s).model.cfg
        v = s.view
        for k, val in fields.items():
            if not hasattr(v, k):
                raise ValueError(f"unknown view field {k!r}")
            setattr(v, k, val)
        if v.heads is not None and len(v.heads) == 0:
            raise UserError("select at least one head")
        if v.levels is not None and len(v.levels) == 0:
            raise UserError("select at least one level")
        if v.heads is not None and len(v.heads) == cfg.n_heads:
            v.heads = None
        if v.levels is not None and len(v.levels) == cfg.n_levels:
            v.levels = None
        if not 0 <= v.enc_level < cfg.n_levels:
            raise UserError(f"level {v.enc_level} does not exist; the model has levels 0..{cfg.n_levels - 1}")

    # ---- what is drawn ----
    def selection(self, s: Session, part: str):
        from viz.selection import Selection

        v = s.view
        n = s.capture.meta["dec_layers" if part == "decoder" else "enc_layers"]
        layer = min(int(v.layer), n - 1) if v.layer >= 0 else -1
        return Selection(layer=layer, heads=v.heads, levels=v.levels, color_by=v.color_by,
                         top_k=v.top_k or None, merged=v.merged)

    def table(self, s: Session):
        """The ``PointTable`` of the current target (None without one)."""
        from viz.selection import decoder_table, encoder_table

        if s.target is None:
            return None, None
        if s.target[0] == "detection":
            sel = self.selection(s, "decoder")
            q = int(s.capture.detections.query_index[s.target[1]])
            return decoder_table(s.capture, q, sel), sel
        sel = self.selection(s, "encoder")
        x, y = s.target[1]
        return encoder_table(s.capture, x, y, s.view.enc_level, sel), sel

    def scale(self, s: Session) -> float:
        from viz.raster import display_scale

        return display_scale(s.capture.image.shape)

    def detections_image(self, s: Session) -> np.ndarray:
        """The image with the shown detections' boxes and labels; the selection highlighted."""
        from viz.detections_view import render_detections

        with self.timings.timer("render_detections"):
            scale = self.scale(s)
            return mark_selection(render_detections(s.capture, s.view.threshold, scale), s.capture, s.target, scale)

    def attention_image(self, s: Session) -> np.ndarray:
        from viz.query_view import table_raster
        from viz.raster import Raster

        with self.timings.timer("render_attention"):
            table, sel = self.table(s)
            if table is None:
                return Raster(s.capture.image, self.scale(s), dim=0.3).array()
            return table_raster(s.capture, table, sel, self.scale(s))

    def detection_choices(self, s: Session) -> tuple[list[tuple[str, int]], int | None]:
        det = s.capture.detections
        choices = [(f"#{i} {det.label_names[i]} {float(det.scores[i]):.2f} (query {q})", i) for i, q in self.visible(s)]
        value = s.target[1] if s.target and s.target[0] == "detection" else None
        if value is not None and value not in [c[1] for c in choices]:
            choices.append((f"#{value} {det.label_names[value]} {float(det.scores[value]):.2f} (below threshold)", value))
        return choices, value

    def status(self, s: Session, table=None) -> str:
        c = s.capture
        h, w = c.image.shape[:2]
        t = self.timings.summary().get("model", {})
        lines = [f"**{s.image_name}** · {w}x{h} px · {len(self.visible(s))} detection(s) ≥ {s.view.threshold:.2f}"
                 + (f" · model run {t['median']:.2f} s (median)" if t else "")]
        if table is None:
            table, _ = self.table(s)
        if table is None:
            lines.append("No detection at this threshold: lower it, pick one from the list, or click any pixel "
                         "for the encoder view there.")
        elif table.part == "decoder":
            lines.append(f"**Showing** decoder layer {table.layer}, detection #{s.target[1]}: {table.label} "
                         f"{table.score:.2f} (query {table.query}); {len(table)} sampling points "
                         f"({table.n_heads} heads × {table.n_levels} levels × {table.n_points} points before filters).")
        else:
            x, y = s.target[1]
            lines.append(f"**Showing** encoder layer {table.layer}, the level-{table.token_level} token "
                         f"{table.token} under pixel ({x:.0f}, {y:.0f}); {len(table)} sampling points.")
        lines += [f"*note: {n}*" for n in s.notes]
        return "\n\n".join(lines)

    # ---- tabs: (note markdown, figure) each, drawn only when shown ----
    def query(self, s: Session) -> int | None:
        """The decoder query of the selected detection (None when a pixel is selected)."""
        if s.target and s.target[0] == "detection":
            return int(s.capture.detections.query_index[s.target[1]])
        return None

    def tab(self, s: Session, tab_id: str) -> tuple:
        with self.timings.timer(f"tab_{tab_id}"):
            try:
                return self._tab(s, tab_id)
            except (KeyError, ValueError, IndexError) as e:  # e.g. "no detection scores >= threshold"
                msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                return (f"*{msg}*", None)

    def _tab(self, s: Session, tab_id: str) -> tuple:
        c, q, v = s.capture, self.query(s), s.view
        need_query = "*Select a detection (click its box or pick it from the list) to see this.*"
        if tab_id == "interactive":
            from viz.query_view import table_figure

            table, sel = self.table(s)
            if table is None:
                return ("*Select a detection or click a pixel first.*", None)
            return ("", table_figure(c, table, sel))
        if tab_id == "trajectory":
            from viz.refinement import refinement_figure

            return (need_query, None) if q is None else ("", refinement_figure(c, q))
        if tab_id == "proposals":
            from viz.proposals import proposals_figure

            if "proposals/boxes" not in c.arrays:
                return (f"*This model ({c.meta['variant']}) is not two-stage: its queries are learned embeddings, "
                        "not encoder proposals.*", None)
            return ("", proposals_figure(c, threshold=v.threshold))
        if tab_id == "heatmaps":
            from viz.heatmap import heatmap_figure

            note = "" if q is not None else f"*All detections scoring at least {v.threshold:.2f}, summed.*"
            return (note, heatmap_figure(c, q, self.selection(s, "decoder"), threshold=v.threshold))
        if tab_id == "grid":
            from viz.grid import grid_figure

            if q is None:
                return (need_query, None)
            return ("", grid_figure(c, q, self.selection(s, "decoder").with_(color_by="weight")))
        if tab_id == "statistics":
            from viz.stats import stats_figure

            return ("", stats_figure(c, threshold=v.threshold, layer=self.selection(s, "decoder").layer))
        if tab_id == "learn":
            from viz.lesson import lesson, lesson_markdown
            from viz.lesson_view import lesson_figure

            if q is None:
                return (need_query, None)
            layer = self.selection(s, "decoder").layer
            head = v.heads[0] if v.heads is not None and len(v.heads) == 1 else None
            return (lesson_markdown(lesson(c, q, layer, head)), lesson_figure(c, q, layer, head))
        if tab_id == "gradients":
            from viz.gradients import gradient_figure

            if q is None:
                return (need_query, None)
            grads = s.cache.get(("gradients", q))
            if grads is None:
                return ("*Press the button to compute the gradients of this detection (one forward and five "
                        "backward passes through the model).*", None)
            return ("", gradient_figure(c.image, grads))
        if tab_id == "checkpoint":
            return (self.diagnostics(s), "```text\n" + c.summary() + "\n```")
        raise KeyError(f"unknown tab {tab_id!r}")

    def gradients(self, s: Session, progress=None) -> None:
        """Figure 5 data of the selected detection: one forward + five backward passes."""
        from ddetr.gradients import box_gradients

        q = self.query(s)
        if q is None:
            raise UserError("select a detection first: gradients are of one detection's box and score")
        if ("gradients", q) in s.cache:
            return
        lm = self.model_of(s)
        if progress:
            progress(0.1, desc="forward and backward passes through the model")
        with lm.lock, self.timings.timer("gradients"):
            grads = box_gradients(lm.model, s.capture.image, q)
            lm.runs += 1
        s.cache[("gradients", q)] = grads
        self.store.touch(s.key)

    def diagnostics(self, s: Session) -> str:
        """Markdown of ``ddetr.diagnostics`` for the session's model and capture (cached)."""
        from ddetr.diagnostics import check_capture, check_parameters, Diagnostics

        lm = self.model_of(s)
        if lm.param_findings is None:
            lm.param_findings = check_parameters(lm.model)
        if "diagnostics" not in s.cache:
            findings, notes = check_capture(s.capture)
            s.cache["diagnostics"] = Diagnostics(list(lm.param_findings) + findings, notes)
        return s.cache["diagnostics"].to_markdown()

    def html_page(self, s: Session, table, sel):
        """One self-contained interactive page of the current state (``viz.html_report``)."""
        from viz.detections_view import detections_figure
        from viz.html_report import HtmlReport
        from viz.query_view import table_figure

        c, q = s.capture, self.query(s)
        page = HtmlReport(f"Deformable DETR Explorer: {s.image_name}")
        page.text(f"model: {self.model_of(s).report.source if self.model_of(s).report else s.model_name}\n"
                  + c.summary(), pre=True)
        page.heading("Current view")
        page.figure(table_figure(c, table, sel))
        page.heading("Detections")
        page.figure(detections_figure(c, s.view.threshold))
        if q is not None:
            for tab_id, title in (("trajectory", "Refinement trajectory"), ("grid", "Layer x head grid"),
                                  ("learn", "Learn: this query step by step")):
                note, fig = self.tab(s, tab_id)
                if fig is not None:
                    page.open(title)
                    if tab_id == "learn":
                        page.markdown(note)
                    page.figure(fig)
                    page.close()
        return page

    # ---- files ----
    def export(self, s: Session, kind: str) -> Path:
        """Write the current view (png / svg), the interactive page (html) or the capture (npz)
        into a fresh folder of the server's export directory; returns the file."""
        import tempfile

        from viz.export import save_figure
        from viz.query_view import table_figure_mpl

        stem = Path(s.image_name).stem or "image"
        out = Path(tempfile.mkdtemp(dir=self.export_dir))
        with self.timings.timer(f"export_{kind}"):
            if kind == "report":
                from viz.bundle import write_bundle

                grads = {k[1]: v for k, v in s.cache.items() if isinstance(k, tuple) and k[0] == "gradients"}
                written = write_bundle(s.capture, out, threshold=s.view.threshold, formats=(),
                                       max_detections=REPORT_DETECTIONS, gradients=grads, progress=False,
                                       title=f"Deformable DETR Explorer: {s.image_name}")
                return written["report"][0]
            if kind == "capture":
                path = out / f"{stem}.capture.npz"
                s.capture.save(path)
                return path
            table, sel = self.table(s)
            if table is None:
                raise UserError("select a detection or a pixel first: the export is of the current view")
            what = f"{stem}-{table.part}-layer{table.layer}-" + (f"query{table.query}" if table.part == "decoder"
                                                                  else f"token{table.token}")
            if kind in ("png", "svg"):
                return save_figure(table_figure_mpl(s.capture, table, sel), out / f"{what}.{kind}")[0]
            if kind == "html":
                return self.html_page(s, table, sel).write(out / f"{what}.html")
        raise UserError(f"unknown export {kind!r}; choose png, svg, html, report or capture")


def mark_selection(picture: np.ndarray, capture, target, scale: float) -> np.ndarray:
    """Adapter: ``viz.detections_view.render_detections`` draws every shown detection but not
    which one is selected; this rings the selected box / marks the clicked pixel on top."""
    from viz.raster import Raster
    from viz.style import REFERENCE_COLOR, SELECTED_COLOR

    if not target:
        return picture
    r = Raster(picture, 1.0)  # already at display size: draw in display pixels
    if target[0] == "detection":
        r.box((capture.detections.boxes[target[1]].numpy() * scale).tolist(), color=SELECTED_COLOR, width=4)
    else:
        r.cross([np.asarray(target[1]) * scale], color=REFERENCE_COLOR)
    return r.array()
