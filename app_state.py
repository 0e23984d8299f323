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
