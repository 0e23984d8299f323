"""The Learn tab as plain Python: what the lesson follows, which step is open, and the three
things that need the model (what if, how it learned, slides), with their caches.

    st = LearnState()                                  # the top detection's query, step 1
    v = lesson_view(capture, st)                       # v.label, v.text, v.figure
    st = follow_click(capture, st, x, y)               # a click near a point follows it
    md, fig = what_if_view(model, capture, st, cache)  # the op rerun on the layer's value tensor

The page (``explorer.page``) keeps one ``LearnState`` per session and maps its controls to
these functions; nothing here imports Gradio.
"""
from __future__ import annotations

import dataclasses
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

from ddetr.assets import examples_dir
from ddetr.snapshots import list_snapshots, sampling_history
from ddetr.whatif import layer_inputs, what_if
from viz.learn_cost import cost_case, cost_figure, cost_markdown
from viz.learn_focus import Focus, focus, nearest_point
from viz.learn_history import history_figure, history_markdown
from viz.learn_slides import SlideFiles, export_slides
from viz.learn_steps import STEPS, StepView, step_view
from viz.learn_text import glossary_markdown
from viz.learn_whatif import whatif_figure, whatif_markdown

TEACHING = examples_dir() / "teaching" / "teaching.json"
SNAPSHOTS = examples_dir() / "snapshots"


# model -> the teaching example's capture (small). Weak keys: a model the registry lets go takes
# its capture with it (an id() key could be reused by the next model loaded at that address).
_TEACHING_CAPTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def teaching_capture(model):
    """The teaching example run through ``model`` once (then kept)."""
    from PIL import Image

    from ddetr.capture import capture

    hit = _TEACHING_CAPTURES.get(model)
    if hit is None:
        with capture(model) as session:
            model.predict(Image.open(teaching_example()["path"]))
        hit = _TEACHING_CAPTURES[model] = session.last
    return hit


@dataclass(frozen=True)
class LearnState:
    """What the lesson follows: ``part`` "decoder" (row = query) or "encoder" (row = token);
    ``head`` None = all heads; the followed point (point_head or head, level, point), None =
    the heaviest; ``step`` 0-based; the what-if change (shift in level cells, new weight)."""

    source: str = "teaching"  # "teaching": the teaching example; "page": the page's image
    part: str = "decoder"
    layer: int = -1
    row: int | None = None
    head: int | None = None
    point_head: int | None = None
    level: int | None = None
    point: int | None = None
    step: int = 0
    shift: tuple[float, float] = (0.0, 0.0)
    weight: float | None = None

    def with_(self, **changes) -> "LearnState":
        return dataclasses.replace(self, **changes)

    def following(self, **changes) -> "LearnState":
        """A new thing to follow: the followed point and the what-if change start afresh."""
        base = dict(point_head=None, level=None, point=None, shift=(0.0, 0.0), weight=None)
        return dataclasses.replace(self, **{**base, **changes})


def teaching_example() -> dict:
    """examples/teaching/teaching.json: the image file, part, layer and query chosen on purpose."""
    doc = json.loads(TEACHING.read_text())
    doc["path"] = TEACHING.parent / doc["image"]
    return doc


def teaching_state(capture=None) -> LearnState:
    """The query chosen for teaching (the top detection's if ``capture`` lacks it)."""
    doc = teaching_example()
    row = int(doc["query"])
    if capture is not None and row not in capture.detections.query_index.tolist():
        row = None
    return LearnState(part=doc["part"], layer=int(doc["layer"]), row=row)


def learn_focus(capture, st: LearnState) -> Focus:
    return focus(capture, st.part, st.layer, st.row, st.head, st.level, st.point, st.point_head)


def lesson_view(capture, st: LearnState) -> StepView:
    return step_view(learn_focus(capture, st), st.step)


def step_to(st: LearnState, step: int) -> LearnState:
    """Clamp to the steps (Prev on the first stays there)."""
    return st.with_(step=max(0, min(int(step), len(STEPS) - 1)))


def follow_click(capture, st: LearnState, x: float, y: float) -> LearnState:
    """Follow the sampling point nearest to image pixel (x, y) (of the followed heads)."""
    m, l, p = nearest_point(learn_focus(capture, st), x, y)
    return st.following(point_head=m, level=l, point=p)


def follow_pixel(capture, st: LearnState, x: float, y: float, level: int = 0) -> LearnState:
    """Follow the encoder pixel (token of ``level``) under image pixel (x, y)."""
    return st.following(part="encoder", row=int(capture.geometry.nearest_token(x, y, level)))


def follow_query(st: LearnState, query: int) -> LearnState:
    return st.following(part="decoder", row=int(query))


def focus_markdown(f: Focus) -> str:
    what = f"{f.what}" + (f" ({f.label} {f.score:.2f})" if f.label else "")
    return (f"Following **{what}**, {f.part} layer {f.layer}, "
            f"{'all heads' if f.head is None else f'head {f.head}'}; followed point: head {f.shown_head}, "
            f"level {f.level}, point {f.point} (A = {f.weights[f.shown_head, f.level, f.point]:.3f}).")


# ----------------------------------------------------------------------------- the model's runs
def _inputs(model, capture, st: LearnState, cache: dict):
    f = learn_focus(capture, st)
    key = ("learn_inputs", f.part, f.layer)
    if key not in cache:
        cache[key] = layer_inputs(model, capture.image, f.part, f.layer)
    return f, cache[key]


def what_if_view(model, capture, st: LearnState, cache: dict):
    """(markdown, figure): the followed point moved by ``st.shift`` level cells and/or given
    weight ``st.weight``; the op reruns on this layer's value tensor (captured once per layer
    and image, kept in ``cache``)."""
    f, inp = _inputs(model, capture, st, cache)
    r = what_if(inp, f.row, f.shown_head, f.level, f.point, st.shift, st.weight)
    return whatif_markdown(r, f.level, f.point), whatif_figure(r)


def history_view(capture, st: LearnState, cache: dict, folder: Path = SNAPSHOTS):
    """(markdown, figure): the followed query / pixel at every training snapshot of the shipped
    model. A decoder query is followed by its box (two-stage queries are proposals, so the
    same object has another query number in another snapshot)."""
    f = learn_focus(capture, st)
    key = ("learn_history", f.part, f.layer, f.row)
    if key not in cache:
        snaps = list_snapshots(folder)
        box = f.box_image_px if f.part == "decoder" else None
        cache[key] = sampling_history(snaps, capture.image, f.part, f.layer, f.row if box is None else None, box)
    hist = cache[key]
    heads = None if f.head is None else [f.head]
    return history_markdown(capture.geometry, hist), history_figure(capture.image, capture.geometry, hist, heads)


def slides(capture, st: LearnState, out_dir) -> SlideFiles:
    f = learn_focus(capture, st)
    stem = f"lesson-{f.part}-layer{f.layer}-" + (f"query{f.row}" if f.part == "decoder" else f"token{f.row}")
    return export_slides(f, None, out_dir, stem)


def cost_view(height: int, width: int, levels: int, points: int, heads: int):
    case = cost_case(int(height), int(width), int(levels), int(points), int(heads))
    return cost_markdown(case), cost_figure(case)


GLOSSARY_MD = glossary_markdown()
