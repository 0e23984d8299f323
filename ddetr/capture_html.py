"""A capture as one self-contained HTML fragment, for Jupyter (``Capture._repr_html_``).

The summary, and a sketch of the paper's Figure 6 for the best detection: the image, the
detection's box, every (head, level, point) sample of its query at the last captured decoder
layer coloured and sized by attention weight, and the reference point as a green cross. An
inline SVG over an embedded JPEG: no script, no external file, a few tens of kB. The full,
interactive figures are ``viz.query_figure`` (plotly) and ``viz.query_figure_mpl``; this
module only needs numpy and PIL, since ``ddetr`` never imports ``viz``.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

MAX_SIDE = 480  # shown size of the longer image side, in CSS pixels
# Viridis at 0, 0.25, 0.5, 0.75, 1: low weights dark blue, high weights yellow (as in viz).
_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)


def _colour(t: float) -> str:
    """Hex colour of ``t`` in [0, 1] on the viridis stops (linear between them)."""
    x = float(np.clip(t, 0.0, 1.0)) * (len(_STOPS) - 1)
    i = min(int(x), len(_STOPS) - 2)
    r, g, b = (_STOPS[i] + (x - i) * (_STOPS[i + 1] - _STOPS[i])).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def _jpeg_data_uri(image: np.ndarray, size: tuple[int, int]) -> str:
    """The (h, w, 3) uint8 image, shrunk to at most ``size`` (w, h), as a JPEG data: URI
    (a photograph or a textured scene is several times smaller as JPEG than as PNG)."""
    im = Image.fromarray(image)
    if size[0] < im.width:
        im = im.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure6_svg(capture, query: int, layer: int) -> str:
    """SVG of ``query``'s sampling points at decoder ``layer`` over the image (Figure 6 style).

    Uses ``capture.decoder_points``: image_px (M, L, P, 2), weights (M, L, P), the layer's
    output box (xyxy image pixels) and reference (L, 2|4 image pixels)."""
    pts = capture.decoder_points(layer=layer, query=query)
    h0, w0 = capture.image.shape[:2]
    s = MAX_SIDE / max(h0, w0)  # small images are enlarged too: the points sit close together
    W, H = max(1, round(w0 * s)), max(1, round(h0 * s))
    xy = pts["image_px"].reshape(-1, 2) * s  # (M*L*P, 2)
    w = pts["weights"].reshape(-1).astype(np.float64)  # (M*L*P,)
    top = float(w.max()) if w.size and w.max() > 0 else 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             f'style="overflow:hidden;max-width:100%;height:auto">',
             f'<image href="{_jpeg_data_uri(capture.image, (W, H))}" width="{W}" height="{H}" '
             'preserveAspectRatio="none"/>']
    x0, y0, x1, y1 = (np.asarray(pts["box_image_px"], float) * s).tolist()
    parts.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" '
                 'fill="none" stroke="white" stroke-width="1.5" stroke-dasharray="4 3"/>')
    for i in np.argsort(w, kind="stable"):  # heaviest drawn last, on top
        if not np.isfinite(xy[i]).all():
            continue
        t = w[i] / top
        parts.append(f'<circle cx="{xy[i, 0]:.1f}" cy="{xy[i, 1]:.1f}" r="{1.5 + 4.5 * np.sqrt(t):.1f}" '
                     f'fill="{_colour(t)}" stroke="black" stroke-width="0.4"/>')
    ref = pts["reference_image_px"]
    if ref is not None:
        cx, cy = (np.asarray(ref, float)[0, :2] * s).tolist()  # the same centre on every level
        parts.append(f'<path d="M{cx - 7:.1f},{cy:.1f}H{cx + 7:.1f}M{cx:.1f},{cy - 7:.1f}V{cy + 7:.1f}" '
                     'stroke="#00d000" stroke-width="3"/>')
    parts.append("</svg>")
    return "".join(parts)


def capture_html(capture) -> str:
    """Summary (``capture.summary()``) and, when the best detection's query was captured at
    some decoder layer, its Figure-6 sketch at the last such layer."""
    out = ['<div class="ddetr-capture" style="font-family:sans-serif;font-size:13px">',
           f"<pre style=\"margin:0 0 6px 0;white-space:pre-wrap\">{html.escape(capture.summary())}</pre>"]
    det = capture.detections
    layers = capture.decoder_layers
    if len(det) == 0:
        out.append("<p>No detections: nothing to draw.</p>")
    elif not layers:
        out.append("<p>No decoder layer was captured: capture with decoder=True to see where the best "
                   "detection's query sampled.</p>")
    else:
        query, layer = int(det.query_index[0]), layers[-1]
        try:
            svg = figure6_svg(capture, query, layer)
        except KeyError as e:  # the query was not among the captured ones
            out.append(f"<p>{html.escape(str(e.args[0] if e.args else e))}</p>")
        else:
            m = capture.meta
            out.append(
                f"<p style=\"margin:0 0 4px 0\">Best detection: <b>{html.escape(det.label_names[0])}</b> "
                f"{float(det.scores[0]):.2f} (query {query}), decoder layer {layer}: "
                f"{m['n_heads']} heads &times; {m['n_levels']} levels &times; {m['n_points']} points, "
                "colour and size = attention weight, green cross = reference point, dashed = box.</p>")
            out.append(svg)
    out.append("</div>")
    return "".join(out)
