"""Per-session state of the explorer, server-side: what one user looks at, in a bounded LRU.

Why server-side: a capture of the R50 model on an 800x1333 image is ~100 MB. ``gr.State``
would deep-copy it per event and keep one per browser tab without bound; instead ``gr.State``
holds only a random session key, and ``SessionStore`` holds the data, bounded by count and
bytes (least recently used first out). Nothing here imports Gradio.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np


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
    zoom: bool = False  # the attention view cropped to the selected detection and its points


@dataclass
class Session:
    """One user's data. ``target`` is what the attention view is about: ("detection", i) with
    i an index into the capture's detections, ("pixel", (x, y)) in original-image pixels, or None."""

    key: str
    model_name: str
    image_name: str = ""
    capture: object | None = None  # ddetr.capture.Capture
    box: tuple[int, int] | None = None  # (w, h) device pixels the browser shows a picture in
    target: tuple | None = None
    point: tuple[int, int, int] | None = None  # (head, level, point) picked in the attention view
    view: View = field(default_factory=View)
    active_tab: str = "interactive"  # the first tab is on screen without a select event
    example: str | None = None  # the example's file name (None for an upload: it cannot be linked)
    pending_model: str | None = None  # a checkpoint with missing tensors, waiting for "open anyway"
    cache: dict = field(default_factory=dict)  # derived results (diagnostics, gradients), dropped with the capture
    # What the page was last sent (explorer.handlers' memo, to leave out what it already shows).
    page: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what happened to the input (conversions)
    prompt: str = ""  # what an open-vocabulary model (Grounding DINO, OmDet-Turbo) is asked to detect
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def nbytes(self) -> int:
        n = 0
        if self.capture is not None:
            n += int(self.capture.nbytes)
        return n + _nbytes(self.cache)

    def reset(self) -> None:
        """Forget the image and everything derived from it (new image or new model)."""
        self.capture, self.target, self.point = None, None, None
        self.cache.clear()
        self.page.clear()
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
