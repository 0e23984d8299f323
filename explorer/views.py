"""The explorer's tabs: one registry, one entry per tab.

A tab is a ``Tab``: an id (stable: URLs, tests and the page's element ids use it), a title, a
help text, what its body shows (``body``: "plot", "image" or "markdown"), and ``draw``, a plain
function of the capture, what is selected and the view settings::

    def draw_trajectory(capture, selected: Selected, view: View) -> Drawn:
        if selected.query is None:
            return Drawn(NEED_QUERY)
        return Drawn("", refinement_figure(capture, selected.query))

    register(Tab("trajectory", "Refinement", "Iterative box refinement ...", draw_trajectory))

That is all a new tab takes: ``explorer.page`` builds one ``gr.Tab`` per entry, in
registration order, with a note (``#note-<id>``) and a body (``#plot-<id>``, ``#image-<id>`` or
``#body-<id>``), and draws the tab whenever it is on screen and something changes. A tab with
an ``Action`` gets a button (``#action-<id>``), and a choice (``#choice-<id>``) when the action
has ``choices``; the action runs with the session and may return a ``Drawn`` to show (a file
for "file" bodies) or ``None`` to redraw the tab. ``draw`` never runs the model: that is what
actions are for (``Action.model=True`` puts them in the model's queue).

``draw`` may raise ``KeyError`` / ``ValueError`` / ``IndexError`` with a message meant for the
user (e.g. "no detection scores >= threshold"): the tab then shows the message as its note.
Nothing here imports Gradio; ``tests/test_app_explorer.py`` draws every tab without a server.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

BODIES = ("plot", "image", "markdown", "file", "custom")
NEED_QUERY = "*Select a detection (click its box or pick it from the list) to see this.*"
NEED_IMAGE = "*Run an image first: upload one or pick an example.*"


@dataclass(frozen=True)
class Selected:
    """What the page is about, resolved against the capture.

    target: ("detection", i) | ("pixel", (x, y)) | None; query: the selected detection's
    decoder query (None for a pixel); decoder / encoder: the ``viz.selection.Selection`` of
    the view settings for each part (layer clamped to that part's layers); cache: derived
    results of this capture (gradients, diagnostics), kept by the session; model: the
    session's ``explorer.models.LoadedModel``.
    """

    target: tuple | None
    query: int | None
    decoder: Any  # viz.selection.Selection
    encoder: Any
    cache: dict = field(default_factory=dict)
    model: Any = None

    @property
    def detection(self) -> int | None:
        return self.target[1] if self.target and self.target[0] == "detection" else None


@dataclass
class Drawn:
    """A tab's content: a note (markdown, may be "") and the body (a plotly figure, an RGB
    array, markdown text or a file path, as the tab's ``body`` says; None draws nothing)."""

    note: str = ""
    body: Any = None


@dataclass(frozen=True)
class Action:
    """A button in a tab. ``run(explorer, session, choice)`` -> ``Drawn`` or None (redraw)."""

    label: str
    run: Callable
    choices: tuple[tuple[str, str], ...] = ()  # (label, value) of a choice shown beside the button
    model: bool = False  # runs the model: queued with the model's other runs


@dataclass(frozen=True)
class Tab:
    id: str
    title: str
    help: str
    draw: Callable[..., Drawn]  # (capture, selected: Selected, view: explorer.state.View) -> Drawn
    body: str = "plot"
    action: Action | None = None
    # "image" bodies may be clicked: (capture, selected, view, x, y) in picture pixels -> the
    # view fields to set (e.g. {"layer": 2, "heads": (5,)}), or None when the click hit nothing.
    click: Callable | None = None
    # "custom" bodies build their own components and events: build(c, handlers) inside the
    # tab (the Learn lesson, with its stepper and controls); ``draw`` then fills only the note.
    build: Callable | None = None

    def __post_init__(self) -> None:
        if self.body not in BODIES:
            raise ValueError(f"tab {self.id!r}: body must be one of {BODIES}, got {self.body!r}")
        if (self.body == "custom") != (self.build is not None):
            raise ValueError(f"tab {self.id!r}: a 'custom' body needs build(), and only it takes one")
        if not self.id.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"tab id {self.id!r}: letters, digits, '-' and '_' only (it is part of element ids)")


TABS: dict[str, Tab] = {}


def register(tab: Tab) -> Tab:
    """Add ``tab`` to the registry (after the ones already there)."""
    if tab.id in TABS:
        raise ValueError(f"tab id {tab.id!r} is registered twice")
    TABS[tab.id] = tab
    return tab


def draw(tab_id: str, capture, selected: Selected, view) -> Drawn:
    """``TABS[tab_id].draw`` with user-facing errors shown as the note."""
    tab = TABS[tab_id]
    if capture is None:
        return Drawn(NEED_IMAGE)
    try:
        return tab.draw(capture, selected, view)
    except (KeyError, ValueError, IndexError) as e:  # e.g. "no detection scores >= threshold"
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return Drawn(f"*{msg}*")


from . import tabs as _tabs  # noqa: E402,F401  (registers the explorer's own tabs, in order)
