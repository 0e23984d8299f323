"""What is on screen, as URL parameters, and back: a link reproduces the view.

Parameters (a contract: tests and shared links use them): ``example`` (an example's file
name), ``det`` (index in the detections list), ``layer``, ``heads`` and ``levels`` (comma
lists), ``tab`` (a tab id). Uploaded images cannot be linked (the server keeps no uploads
for others to open), so a view of an upload gives no link.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlencode

PARAMS = ("example", "det", "layer", "heads", "levels", "tab")


@dataclass
class UrlState:
    example: str | None = None
    det: int | None = None
    layer: int | None = None
    heads: tuple[int, ...] | None = None
    levels: tuple[int, ...] | None = None
    tab: str | None = None
    problems: list[str] = field(default_factory=list)  # parameters that could not be read, for the user


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip() != "")


def parse(params: Mapping[str, str]) -> UrlState:
    """Read the parameters; a malformed one is skipped and named in ``problems``."""
    out = UrlState()
    for name in PARAMS:
        raw = params.get(name)
        if raw is None or str(raw).strip() == "":
            continue
        raw = str(raw).strip()
        try:
            if name in ("example", "tab"):
                setattr(out, name, raw)
            elif name in ("det", "layer"):
                setattr(out, name, int(raw))
            else:
                setattr(out, name, _ints(raw))
        except ValueError:
            out.problems.append(f"{name}={raw!r} is not {'a number' if name in ('det', 'layer') else 'a comma list of numbers'}")
    return out


def encode(state: UrlState) -> str:
    """The query string (without '?'); empty without an example (uploads cannot be linked)."""
    if not state.example:
        return ""
    q = {"example": state.example}
    if state.det is not None:
        q["det"] = str(state.det)
    if state.layer is not None:
        q["layer"] = str(state.layer)
    if state.heads is not None:
        q["heads"] = ",".join(str(v) for v in state.heads)
    if state.levels is not None:
        q["levels"] = ",".join(str(v) for v in state.levels)
    if state.tab:
        q["tab"] = state.tab
    return urlencode(q, safe=",")


def of_session(x, s) -> UrlState:
    """The ``UrlState`` of what session ``s`` shows (layer resolved to its number)."""
    if s.capture is None or not s.example:
        return UrlState()
    v = s.view
    det = s.target[1] if s.target and s.target[0] == "detection" else None
    n = int(s.capture.meta["dec_layers"])
    layer = v.layer if v.layer >= 0 else n - 1
    return UrlState(s.example, det, layer, v.heads, v.levels, s.active_tab)
