"""Server-side state of the explorer: per-session data in a bounded LRU, the shared models, and
the one place where uploaded files are opened.

Why server-side: a capture of the R50 model on an 800x1333 image is ~100 MB. ``gr.State`` would
deep-copy it per event and keep one per browser tab without bound; instead ``gr.State`` holds
only a random session key, and ``SessionStore`` holds the data, bounded by count and bytes
(least recently used first out). Models are loaded once and shared read-only by all sessions;
model runs are serialized by a per-model lock (the CPU is the bottleneck either way, and it
keeps peak memory at one forward pass).

Nothing here imports Gradio: the store, the registry and the image reader are tested alone.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Files the checkpoint loader knows (ddetr.checkpoint: ours .safetensors, official .pth, a
# transformers folder with config.json + weights).
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
REPORT_DETECTIONS = 10  # the full report draws ~7 figures per detection: keep it to the best ten
MIN_SIDE = 8  # below this an "image" is a mistake (a 1x1 pixel upscaled to 320 px says nothing)


class UserError(ValueError):
    """A problem the user can fix; the app shows the message as it is."""


# ----------------------------------------------------------------------------- sessions
@dataclass
class View:
    """What the attention view shows; every field maps to one control of the page."""

    layer: int = -1  # decoder / encoder layer, -1 = last
    heads: tuple[int, ...] | None = None  # None = all
    levels: tuple[int, ...] | None = None
    color_by: str = "head"  # "head" | "weight"
    top_k: int | None = None  # None = all points
    merged: bool = True  # all levels in one picture, or one panel per level ("across scales")
    enc_level: int = 0  # which level's token a clicked pixel selects in the encoder view
    threshold: float = 0.3  # detections shown


@dataclass
class Session:
    """One user's data. ``target`` is what the attention view is about: ("detection", i) with
    i an index into the capture's detections, ("pixel", (x, y)) in original-image pixels, or None."""

    key: str
    model_name: str
    image_name: str = ""
    capture: object | None = None  # ddetr.capture.Capture
    display: np.ndarray | None = None  # (h, w, 3) uint8, the image at display size
    display_scale: float = 1.0  # display pixel = scale * original pixel
    target: tuple | None = None
    view: View = field(default_factory=View)
    active_tab: str = "interactive"  # the first tab is on screen without a select event
    cache: dict = field(default_factory=dict)  # derived results (diagnostics, gradients), dropped with the capture
    notes: list[str] = field(default_factory=list)  # what happened to the input (conversions)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def nbytes(self) -> int:
        n = 0 if self.display is None else self.display.nbytes
        if self.capture is not None:
            n += int(self.capture.nbytes)
        return n + _nbytes(self.cache)

    def reset(self) -> None:
        """Forget the image and everything derived from it (new image or new model)."""
        self.capture, self.display, self.target = None, None, None
        self.cache.clear()
        self.notes = []


def _nbytes(v) -> int:
    """Bytes of numpy arrays (and objects with ``nbytes``) inside nested dicts / lists."""
    if isinstance(v, dict):
        return sum(_nbytes(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_nbytes(x) for x in v)
    return int(getattr(v, "nbytes", 0) or 0)


class SessionStore:
    """Thread-safe LRU of ``Session`` keyed by random keys; bounded by count and total bytes.

    The session just used is never evicted by its own update, so one user always keeps
    their latest capture even when it alone exceeds the byte budget.
    """

    def __init__(self, max_sessions: int = 64, max_bytes: int = 1 << 30):
        if max_sessions < 1 or max_bytes < 1:
            raise ValueError("max_sessions and max_bytes must be positive")
        self.max_sessions, self.max_bytes = int(max_sessions), int(max_bytes)
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.peak_bytes = 0
        self.evicted = 0

    @staticmethod
    def new_key() -> str:
        return secrets.token_hex(16)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: str | None) -> Session | None:
        if not key:
            return None
        with self._lock:
            s = self._items.get(key)
            if s is not None:
                self._items.move_to_end(key)
            return s

    def create(self, model_name: str) -> Session:
        s = Session(self.new_key(), model_name)
        with self._lock:
            self._items[s.key] = s
            self._evict(keep=s.key)
        return s

    def get_or_create(self, key: str | None, model_name: str) -> Session:
        return self.get(key) or self.create(model_name)

    def touch(self, key: str) -> None:
        """Call after a session grew (new capture): moves it to the front, evicts others."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            self._evict(keep=key)

    def drop(self, key: str | None) -> None:
        """Forget a session (the browser tab closed: ``gr.State``'s delete_callback)."""
        if key:
            with self._lock:
                self._items.pop(key, None)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._items.values())

    def _evict(self, keep: str) -> None:
        total = sum(s.nbytes for s in self._items.values())
        self.peak_bytes = max(self.peak_bytes, total)
        while len(self._items) > 1 and (len(self._items) > self.max_sessions or total > self.max_bytes):
            oldest = next(k for k in self._items if k != keep)
            total -= self._items.pop(oldest).nbytes
            self.evicted += 1


# ----------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    name: str
    model: object  # ddetr.DeformableDETR, eval mode, shared read-only
    report: object  # ddetr.checkpoint.LoadReport
    random_weights: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    runs: int = 0  # forward passes made (tests check that views never run the model)
    param_findings: list | None = None  # ddetr.diagnostics.check_parameters, computed once


class ModelRegistry:
    """The checkpoints this server may open: the startup model plus those found in the
    configured directory, by name. Paths never come from the page: a name the registry does
    not know is refused. At most ``max_loaded`` models stay in memory."""

    def __init__(self, startup: LoadedModel, paths: dict[str, Path] | None = None, max_loaded: int = 2,
                 device: str = "cpu"):
        self.startup_name = startup.name
        self._paths = dict(paths or {})
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict({startup.name: startup})
        self._lock = threading.Lock()
        self.max_loaded, self.device = max(1, int(max_loaded)), device
        _freeze(startup.model)

    @property
    def names(self) -> list[str]:
        return [self.startup_name] + [n for n in self._paths if n != self.startup_name]

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            if name not in self._paths:
                raise UserError(f"unknown checkpoint {name!r}; choose one of: {', '.join(self.names)}")
            path = self._paths[name]
        from ddetr.checkpoint import load  # imported late: loading is rare, the module is large

        try:
            model, report = load(path, device=self.device)
        except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
            raise UserError(f"cannot load checkpoint {name!r}: {e}") from None
        _freeze(model)
        entry = LoadedModel(name, model, report)
        with self._lock:
            self._loaded[name] = entry
            while len(self._loaded) > self.max_loaded:
                oldest = next(k for k in self._loaded if k != name and k != self.startup_name)
                self._loaded.pop(oldest)
        return entry


def _freeze(model) -> None:
    """Shared read-only: eval mode and no parameter gradients (a gradient computation for one
    user must not accumulate ``.grad`` into weights every user reads)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def find_checkpoints(directory: str | os.PathLike) -> dict[str, Path]:
    """Checkpoints directly inside ``directory`` (files with a known suffix, and folders holding
    a transformers ``config.json``), by display name (the file or folder name), sorted."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise UserError(f"--checkpoint-dir {directory}: not a directory")
    out = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES:
            out[p.name] = p.resolve()
        elif p.is_dir() and (p / "config.json").is_file():
            out[p.name + "/"] = p.resolve()
    return out


# ----------------------------------------------------------------------------- images
def _inside(path: Path, roots) -> bool:
    path = path.resolve()
    for r in roots:
        try:
            path.relative_to(Path(r).resolve())
            return True
        except ValueError:
            continue
    return False


def read_image(path: str | os.PathLike, allowed_roots, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """Open an uploaded image file safely -> (decoded PIL image, notes about conversions).

    Only files under ``allowed_roots`` (Gradio's upload folder, the example folders) are
    opened: a client that posts a path of its own choosing gets an error, not the file.
    Every failure is a ``UserError`` naming the problem and the fix; the pixel limit is
    checked from the header, before any pixel is decoded.
    """
    p = Path(path)
    if not _inside(p, allowed_roots) or not p.is_file():
        raise UserError("this file was not uploaded through the page; upload the image again")
    size_mb = p.stat().st_size / 1e6
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; PIL still refuses (raises) beyond 2 x its own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except UnidentifiedImageError:
        raise UserError(f"{_name(p)} is not an image this app can read ({size_mb:.2f} MB, unknown format); "
                        "upload a PNG, JPEG, WebP, BMP, GIF or TIFF file") from None
    except Image.DecompressionBombError:
        raise UserError(f"{_name(p)} is far too large to decode safely (this server's limit is "
                        f"{max_pixels / 1e6:.0f} megapixels); "
                        "downscale it first (the model resizes to at most 1333 px anyway)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot open {_name(p)}: {e}; the file may be corrupt") from None
    w, h = img.size
    if w * h > max_pixels:
        raise UserError(f"{_name(p)} is {w}x{h} = {w * h / 1e6:.0f} megapixels, over this server's limit of "
                        f"{max_pixels / 1e6:.0f}; downscale it first (the model resizes to at most 1333 px anyway)")
    if min(w, h) < MIN_SIDE:
        raise UserError(f"{_name(p)} is only {w}x{h} pixels; the model needs an image at least "
                        f"{MIN_SIDE} pixels on each side (objects of interest are usually 10+ pixels)")
    notes = []
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"{img.format} with {img.n_frames} frames: using the first")
    mode = img.mode
    try:
        img.load()
        if img.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation
            img = ImageOps.exif_transpose(img)
            notes.append("rotated as its EXIF orientation says (as browsers show it)")
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data is found at decode
        raise UserError(f"cannot decode {_name(p)}: {e}; the file is truncated or corrupt, export it again") from None
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    elif mode.startswith("I;16") or mode == "I":
        notes.append(f"{mode} (16-bit) image scaled to [0, 1]")
    elif mode in ("L", "1", "LA"):
        notes.append("grayscale image: the gray channel is used for R, G and B")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("alpha channel dropped (transparent pixels show their stored colour)")
    return img, notes


def _name(p: Path) -> str:
    # Gradio keeps the uploaded name as the last path component; never show the server's folders.
    return f"'{p.name}'"


# ----------------------------------------------------------------------------- timing
class Timings:
    """Server-side durations by operation (the last 200 of each), for the status line and bench."""

    def __init__(self):
        self._d: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            v = self._d.setdefault(name, [])
            v.append(seconds)
            del v[:-200]

    def timer(self, name: str):
        t = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, *exc):
                self.seconds = time.perf_counter() - self.t0
                t.add(name, self.seconds)

        return _T()

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {k: {"n": len(v), "median": float(np.median(v)), "max": float(max(v))}
                    for k, v in self._d.items() if v}


# ----------------------------------------------------------------------------- the explorer
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
