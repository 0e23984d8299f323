"""Plotly objects built without per-property validation.

Plotly checks every property of every trace when it is constructed and again when the
figure is (~1 ms per trace): the layer x head grid (144 traces) took 170 ms to build, 15 ms
without. The figures here come from fixed code paths, and ``tests/test_viz.py`` rebuilds
every one of them *with* validation (``validated``), so interactive redraws skip it.
"""
from __future__ import annotations

import plotly.graph_objects as go


def Figure(data=None, layout=None) -> go.Figure:
    return go.Figure(data=data, layout=layout, _validate=False)


def Scatter(**kw) -> go.Scatter:
    return go.Scatter(_validate=False, **kw)


def Image(**kw) -> go.Image:
    return go.Image(_validate=False, **kw)


def Heatmap(**kw) -> go.Heatmap:
    return go.Heatmap(_validate=False, **kw)


def validated(fig: go.Figure) -> go.Figure:
    """The same figure rebuilt with full validation (raises ValueError on a bad property)."""
    return go.Figure(fig.to_dict())
