"""What every capture session shares, ours (``ddetr.capture``) and the transformers family's
(``ddetr.hf_family.capture``): hooks removed when the ``with`` block ends, the captures made
so far, and the thread that opened the block (hooks record only that thread's passes, so a
server's other requests never mix into a capture)."""
from __future__ import annotations

import threading

import torch

from .capture_io import Capture

# The dtypes a capture may store its arrays in, with their names in a capture file.
DTYPES = {torch.float16: "float16", torch.float32: "float32"}


class HookSession:
    """Base of the capture sessions. Subclasses fill ``_handles`` in ``__enter__`` (hook
    handles), set ``_thread`` to the opening thread, and append to ``captures``."""

    captures: list[Capture]
    _handles: list
    _thread: int | None
    _pass: object | None

    @staticmethod
    def check_arguments(dtype, queries, max_bytes) -> None:
        """The arguments every ``capture`` takes, refused with what to pass instead."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
        if isinstance(queries, str) and queries != "detections":
            raise ValueError(f"queries must be None, 'detections' or a list of indices, got {queries!r}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive or None (no limit), got {max_bytes}")

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pass = None

    @property
    def last(self) -> Capture:
        """The latest capture; a ``LookupError`` before the first forward pass."""
        if not self.captures:
            raise LookupError("nothing captured yet: call model.predict(...) inside the `with` block")
        return self.captures[-1]

    def _mine(self) -> bool:
        """Whether the running hook is in the thread that opened the session."""
        return threading.get_ident() == self._thread
