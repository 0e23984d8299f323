"""The lesson as a sequence of steps: each a title, a short text with the followed row's
numbers (``viz.learn_text``) and a figure (``viz.learn_figures``; for slides
``viz.learn_slides``). A page shows ``step_view(f, i)`` with Prev / Next.

    f = focus(capture, "decoder")                 # viz.learn_focus
    stacks = layer_stack(capture, f)              # the same row in every captured layer
    v = step_view(f, "offsets", stacks)           # v.title, v.text, v.figure
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from . import learn_figures as figs
from .learn_focus import Focus, focus
from .learn_text import TEXTS


@dataclass(frozen=True)
class Step:
    id: str
    title: str


STEPS: tuple[Step, ...] = (
    Step("pyramid", "The feature pyramid"),
    Step("query", "The query and its reference point"),
    Step("heads", "Heads"),
    Step("offsets", "Offsets"),
    Step("bilinear", "Bilinear sampling"),
    Step("weights", "Attention weights"),
    Step("sum", "Weighted sum and output projection"),
    Step("cost", "Dense vs deformable cost"),
    Step("layers", "Across layers"),
)
STEP_IDS = tuple(s.id for s in STEPS)

FIGURES = {
    "pyramid": figs.figure_pyramid, "query": figs.figure_query, "heads": figs.figure_heads,
    "offsets": figs.figure_offsets, "bilinear": figs.figure_bilinear, "weights": figs.figure_weights,
    "sum": figs.figure_sum, "cost": figs.figure_cost,
}


@dataclass
class StepView:
    index: int
    step: Step
    text: str  # Markdown
    figure: go.Figure

    @property
    def label(self) -> str:
        return f"{self.index + 1}. {self.step.title}"


def step_index(step: int | str) -> int:
    """0-based index of a step given by index or id."""
    if isinstance(step, str):
        if step not in STEP_IDS:
            raise KeyError(f"no lesson step {step!r}; steps: {', '.join(STEP_IDS)}")
        return STEP_IDS.index(step)
    i = int(step)
    if not 0 <= i < len(STEPS):
        raise IndexError(f"lesson step {i} does not exist; steps are 0..{len(STEPS) - 1}")
    return i


def step_labels() -> list[str]:
    return [f"{i + 1}. {s.title}" for i, s in enumerate(STEPS)]


def layer_stack(capture, f: Focus) -> dict[int, Focus]:
    """The followed row in every captured layer of its part (same head / level / point)."""
    layers = capture.decoder_layers if f.part == "decoder" else capture.encoder_layers
    return {i: focus(capture, f.part, i, f.row, f.head, f.level, f.point, f.shown_head) for i in layers}


def step_view(f: Focus, step: int | str, stacks: dict[int, Focus] | None = None) -> StepView:
    i = step_index(step)
    s = STEPS[i]
    if s.id == "layers":
        figure = figs.figure_layers(f, stacks if stacks is not None else layer_stack(f.capture, f))
    else:
        figure = FIGURES[s.id](f)
    return StepView(i, s, TEXTS[s.id](f), figure)
