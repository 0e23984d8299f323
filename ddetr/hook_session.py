"""What every capture session shares, ours (``ddetr.capture``) and the transformers family's
(``ddetr.hf_family.capture``): hooks removed when the ``with`` block ends, the captures made
so far, and the thread that opened the block (hooks record only that thread's passes, so a
server's other requests never mix into a capture)."""
from __future__ import annotations

import threading

from .capture_io import Capture


class HookSession:
    """Base of the capture sessions. Subclasses fill ``_handles`` in ``__enter__`` (hook
    handles), set ``_thread`` to the opening thread, and append to ``captures``."""

    captures: list[Capture]
    _handles: list
    _thread: int | None
    _pass: object | None

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
