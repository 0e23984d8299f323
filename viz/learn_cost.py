"""The cost explorer: choose an image size, levels, points and heads; see what dense and
deformable attention cost (multiply-adds and attention memory per layer), next to the
paper's setting, ResNet-50 at 800 x 1333 (L = 4, K = 4, M = 8, C = 256, 300 queries).

Every number comes from ``viz.cost`` (the terms are listed with the formula they sum to), so
the formula printed is the one the numbers are computed from.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .cost import ImageCost, human, image_cost, pyramid_shapes

R50 = dict(height=800, width=1333, levels=4, points=4, heads=8, channels=256, queries=300)


@dataclass
class CostCase:
    height: int
    width: int
    levels: int
    points: int
    heads: int
    channels: int
    queries: int
    cost: ImageCost

    @property
    def label(self) -> str:
        return (f"{self.height}×{self.width}, L={self.levels}, K={self.points}, M={self.heads}, "
                f"C={self.channels}, {self.queries} queries")


def cost_case(height: int, width: int, levels: int = 4, points: int = 4, heads: int = 8, channels: int = 256,
              queries: int = 300) -> CostCase:
    """Dense vs deformable cost of one encoder and one decoder layer for these settings."""
    if channels % heads:
        raise ValueError(f"C = {channels} channels cannot be split evenly into M = {heads} heads; "
                         "choose M dividing C")
    shapes = pyramid_shapes(height, width, levels)
    return CostCase(int(height), int(width), int(levels), int(points), int(heads), int(channels), int(queries),
                    image_cost(shapes, channels, heads, points, queries, 1, 1))


def r50_case() -> CostCase:
    return cost_case(**R50)


def cost_markdown(case: CostCase) -> str:
    """The numbers, each with the formula (and its terms) it was summed from."""
    c = case.cost
    shapes = ", ".join(f"{w}×{h}" for h, w in c.spatial_shapes)
    out = [f"**{case.label}**: levels {shapes} = N_v = {c.n_tokens} cells (N_v: value tokens; in the encoder "
           f"every cell is also a query and a key, N_q = N_k = N_v).", "",
           "| layer | attention | formula (multiply-adds) | multiply-adds | attention memory |",
           "|---|---|---|---:|---:|"]
    for where in ("encoder", "decoder"):
        for kind in ("dense", "deformable"):
            a = getattr(c, f"{where}_{kind}")
            out.append(f"| {where} | {kind} | {a.formula} | {human(a.macs)} | {human(a.attention_bytes)}B |")
    e = c.encoder_dense.macs / c.encoder_deformable.macs
    out += ["", f"Encoder: deformable needs {e:.1f}× fewer multiply-adds and "
                f"{c.encoder_dense.attention_bytes / c.encoder_deformable.attention_bytes:.0f}× less attention memory. "
                "Memory counts float32 attention weights (dense: M N_q N_k; deformable: M N_q L K, plus 2 M N_q L K "
                "sampling coordinates). The paper's form is "
                f"{c.encoder_deformable.paper_formula}; the implementation projects all N_v values once, the "
                "N_v C² branch, which is what is counted here for both encoder and decoder."]
    return "\n".join(out)


def cost_figure(case: CostCase, reference: CostCase | None = None) -> go.Figure:
    """Multiply-adds and attention memory per layer, log scale: the chosen case and the R50
    800x1333 reference side by side (marked)."""
    reference = reference or r50_case()
    fig = make_subplots(1, 2, subplot_titles=["multiply-adds per layer", "attention memory per layer (bytes)"])
    groups = [("your settings", case), ("R50 800×1333 (paper)", reference)]
    for kind, color in (("dense", "#999999"), ("deformable", "#0072B2")):
        for j, (metric, getter) in enumerate((("macs", lambda a: a.macs), ("bytes", lambda a: a.attention_bytes))):
            xs, ys, texts = [], [], []
            for gname, cc in groups:
                for where in ("encoder", "decoder"):
                    a = getattr(cc.cost, f"{where}_{kind}")
                    xs.append([gname, where])
                    ys.append(getter(a))
                    texts.append(human(getter(a)) + ("B" if metric == "bytes" else ""))
            fig.add_trace(go.Bar(x=[[x[0] for x in xs], [x[1] for x in xs]], y=ys, name=kind, marker_color=color,
                                 text=texts, textposition="outside", legendgroup=kind, showlegend=j == 0,
                                 meta=f"cost_{metric}_{kind}"), 1, j + 1)
    fig.update_yaxes(type="log")
    fig.update_layout(barmode="group", height=420, plot_bgcolor="white", margin=dict(l=10, r=10, t=60, b=10),
                      title=dict(text=f"Dense vs deformable: {case.label}", x=0.01, font=dict(size=14)),
                      legend=dict(orientation="h", y=-0.15))
    return fig
