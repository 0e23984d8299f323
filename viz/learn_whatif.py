"""What if: the followed head's output before and after a change of one sampling point, as a
figure (its D channels side by side) and a few sentences that say what the numbers mean.

The numbers come from ``ddetr.whatif.what_if`` (the project's op, run on the layer's captured
value tensor); nothing is computed here but their presentation.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go


def whatif_figure(r) -> go.Figure:
    """Bars: the changed head's D output channels before (grey) and after (blue)."""
    s = r.head_slice
    ch = np.arange(r.head_dim)
    fig = go.Figure([
        go.Bar(x=ch, y=r.before[s], name="before", marker_color="#999999", meta="whatif_before"),
        go.Bar(x=ch, y=r.after[s], name="after the change", marker_color="#0072B2", meta="whatif_after"),
    ])
    fig.update_layout(barmode="group", height=300, plot_bgcolor="white", margin=dict(l=10, r=10, t=50, b=10),
                      title=dict(text=f"Head {r.head}'s output, channel by channel (change {100 * r.head_change:.1f}%)",
                                 x=0.01, font=dict(size=14)),
                      xaxis_title=f"channel of head {r.head} (D = {r.head_dim})", legend=dict(orientation="h", y=1.12))
    return fig


def whatif_markdown(r, level: int, point: int) -> str:
    """The change in words: what moved, by how much the outputs changed, and why only one head."""
    moved = r.location_after - r.location_before
    what = []
    if np.any(np.abs(moved) > 1e-6):
        what.append(f"moved by ({moved[0]:+.2f}, {moved[1]:+.2f}) cells of level {level}, from "
                    f"({r.location_before[0]:.2f}, {r.location_before[1]:.2f}) to "
                    f"({r.location_after[0]:.2f}, {r.location_after[1]:.2f})")
    if abs(r.weight_after - r.weight_before) > 1e-6:
        what.append(f"its attention weight set from {r.weight_before:.3f} to {r.weight_after:.3f} (the head's other "
                    f"{r.weights_after.size - 1} weights rescaled so that they still sum to {r.weights_after.sum():.3f})")
    if not what:
        return ("**What if** — nothing changed yet: move the point or change its weight, and the op recomputes this "
                "query's output.")
    return (f"**What if** head {r.head}'s level-{level} point {point} is " + " and ".join(what) + ". "
            f"Recomputed with the op on this layer's real value tensor: head {r.head}'s {r.head_dim}-channel result "
            f"changes by **{100 * r.head_change:.1f}%** (length of the difference over the length of the original), "
            f"and the module's output after the output projection by **{100 * r.output_change:.1f}%**. "
            "The other heads' channels do not change at all: each head reads only its own points. "
            "A small number means the point sits where the features look alike, or carries little weight.")
