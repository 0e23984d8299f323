"""Hovering a sampling point in the attention picture: its numbers and the four feature cells
its bilinear sample reads, outlined on its level, without a round trip to the server.

The attention picture is a raster drawn on the server (``viz.query_view.attention_raster``).
With each picture the page also receives its *hover map* (``hover_map``): for every point
drawn, where it is in the picture (display pixels), how far a pointer may be from it to hit it
(its dot's radius + 3 px, the rule clicks use: ``Explorer.click_attention``), a one-line
description, and the rectangles of the cells it reads, in the same pixels. The map rides in the
legend's HTML (a hidden element, ``map_html``); ``HOVER_JS`` (put in the page's ``<head>``)
follows the pointer over ``#att-image``, finds the heaviest point under it and draws the cells
and the description in an SVG laid over the picture. A click still picks the point for good
(status line, ringed in the picture). bertviz and CNN Explainer answer hover this way too: the
data for the whole view is sent once, and hovering is pure client work (no 100 ms per move).
"""
from __future__ import annotations

import html
import json

import numpy as np

MAP_ID = "att-hover-map"


def hover_map(x, s) -> dict | None:
    """{"w", "h": picture size in display px, "pts": [[u, v, r, weight, text, cells], ...]} for
    session ``s``'s attention picture: one entry per point drawn, in each panel it appears in
    (u, v: its centre; r: hit radius; cells: [[x0, y0, x1, y1, bilinear weight], ...], the
    rectangles of the cells it reads). None without a selection (the picture shows no points).
    The pointer picks as a click does: the heaviest point within its radius."""
    from viz.canvas import level_grid_lines
    from viz.overlay import diameters, read_cells

    table, sel = x.table(s)
    if table is None or len(table) == 0:
        return None
    panels = x.attention_panels(s)
    g = s.capture.geometry
    radius = diameters(table, sel) / 2 + 3
    lines = {}
    pts = []
    for p in panels:
        rows = np.arange(len(table)) if p.level is None else np.flatnonzero(table.level == p.level)
        for k in rows.tolist():
            u = p.left + (float(table.image_px[k, 0]) - p.origin[0]) * p.scale
            v = p.top + (float(table.image_px[k, 1]) - p.origin[1]) * p.scale
            if not (np.isfinite(u) and np.isfinite(v)):
                continue
            lvl = int(table.level[k])
            if lvl not in lines:
                lines[lvl] = level_grid_lines(g, lvl)
            xs, ys = lines[lvl]
            cells = []
            for cx, cy, bw in read_cells(table.level_px[k], g.valid_wh[lvl]):
                x0 = p.left + (float(xs[cx]) - p.origin[0]) * p.scale
                y0 = p.top + (float(ys[cy]) - p.origin[1]) * p.scale
                x1 = p.left + (float(xs[cx + 1]) - p.origin[0]) * p.scale
                y1 = p.top + (float(ys[cy + 1]) - p.origin[1]) * p.scale
                cells.append([round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1), round(bw, 3)])
            pts.append([round(u, 1), round(v, 1), round(float(radius[k]), 1), float(table.weight[k]),
                        _words(table, k, cells), cells])
    w = max(p.left + p.width for p in panels)
    h = max(p.top + p.height for p in panels)
    return {"w": int(w), "h": int(h), "pts": pts}


def _words(table, k: int, cells: list) -> str:
    ox, oy = table.offset_level_px[k]
    off = "" if not np.isfinite(ox) else f" · offset ({ox:+.2f}, {oy:+.2f}) level px"
    reads = (f"reads {len(cells)} level-{int(table.level[k])} cells (outlined)" if cells
             else "outside the map: reads zeros")
    return (f"head {int(table.head[k])} · level {int(table.level[k])} · point {int(table.point[k])} · "
            f"weight {float(table.weight[k]):.4f}{off} · {reads}")


def map_html(x, s) -> str:
    """The hover map as a hidden element for the legend's HTML ("" without one)."""
    m = hover_map(x, s)
    if m is None:
        return ""
    data = html.escape(json.dumps(m, separators=(",", ":")), quote=True)
    return f'<div id="{MAP_ID}" hidden data-map="{data}"></div>'


# Runs once per page (in <head>): listens on the document, so it works for pictures that arrive
# later. The overlay is fixed-position and redrawn on every move (scrolling cannot misplace it);
# pointer-events: none keeps clicks going to the picture. A map whose size differs from the
# picture's (a new picture still loading) is not used.
HOVER_JS = """
<script>
(() => {
  const NS = 'http://www.w3.org/2000/svg';
  let cached = null, src = null, svg = null, tip = null;
  function map() {
    const el = document.getElementById('%(id)s');
    if (!el) return null;
    if (el.dataset.map !== src) { src = el.dataset.map; try { cached = JSON.parse(src); } catch (e) { cached = null; } }
    return cached;
  }
  function parts() {
    if (!svg) {
      svg = document.createElementNS(NS, 'svg');
      svg.id = 'att-hover-svg';
      svg.style.cssText = 'position:fixed;pointer-events:none;z-index:50;display:none;overflow:visible';
      tip = document.createElement('div');
      tip.id = 'att-hover-tip';
      tip.style.cssText = 'position:fixed;pointer-events:none;z-index:51;display:none;max-width:360px;' +
        'background:rgba(20,20,20,.88);color:#fff;font-size:12px;line-height:1.35;padding:4px 7px;border-radius:4px';
      document.body.append(svg, tip);
    }
    return [svg, tip];
  }
  function hide() { if (svg) { svg.style.display = 'none'; tip.style.display = 'none'; } }
  document.addEventListener('mousemove', (e) => {
    // By position, not by event target: the picture's own buttons (fullscreen) lie over it.
    const img = document.querySelector('#att-image img');
    const m = img && map();
    if (!m || !img.naturalWidth || img.naturalWidth !== m.w || img.naturalHeight !== m.h) return hide();
    const r = img.getBoundingClientRect();
    if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) return hide();
    const q = Math.min(r.width / m.w, r.height / m.h);
    const ox = r.left + (r.width - m.w * q) / 2, oy = r.top + (r.height - m.h * q) / 2;
    const u = (e.clientX - ox) / q, v = (e.clientY - oy) / q;
    let p = null;  // as a click picks (Explorer.click_attention): the heaviest point within its radius
    for (const c of m.pts)
      if (Math.hypot(c[0] - u, c[1] - v) <= c[2] && (!p || c[3] > p[3])) p = c;
    if (!p) return hide();
    const [s, t] = parts();
    s.setAttribute('viewBox', `0 0 ${m.w} ${m.h}`);
    Object.assign(s.style, {left: ox + 'px', top: oy + 'px', width: m.w * q + 'px', height: m.h * q + 'px',
                            display: 'block'});
    let body = `<circle cx="${p[0]}" cy="${p[1]}" r="${p[2] + 3}" fill="none" stroke="#fff" stroke-width="2.5"/>`;
    for (const c of p[5])
      body += `<rect class="cell" x="${c[0]}" y="${c[1]}" width="${c[2] - c[0]}" height="${c[3] - c[1]}" ` +
              `fill="none" stroke="#FF00FF" stroke-width="${1 + 3 * c[4]}"/>`;
    s.innerHTML = body;
    t.textContent = p[4];
    Object.assign(t.style, {display: 'block', left: Math.min(e.clientX + 14, innerWidth - 370) + 'px',
                            top: Math.min(e.clientY + 14, innerHeight - 60) + 'px'});
  }, {passive: true});
  document.addEventListener('scroll', hide, {passive: true, capture: true});
})();
</script>
""" % {"id": MAP_ID}
