"""One self-contained interactive HTML page: plotly.js inlined once, every picture stored once.

Plotly's own ``write_html`` repeats plotly.js (3.5 MB) and the image (as a data URI) in
every figure; a page with 10 detections x 6 views would weigh 200 MB. Here each distinct
data URI is stored once and put back into the figures by a few lines of JavaScript, and a
figure inside a closed ``<details>`` is drawn when it is first opened (plotly cannot size a
figure that is not displayed, and the page opens at once).
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import plotly.io as pio
from plotly.offline import get_plotlyjs

_URI = re.compile(r'"(data:image[^"]*)"')  # plotly's JSON writes "/" as \u002f

_JS = """
function fixImages(obj){
  if (Array.isArray(obj)) { for (let i = 0; i < obj.length; i++) obj[i] = fixImages(obj[i]); return obj; }
  if (obj && typeof obj === 'object') { for (const k in obj) obj[k] = fixImages(obj[k]); return obj; }
  if (typeof obj === 'string' && obj.startsWith('@img:')) return IMAGES[+obj.slice(5)];
  return obj;
}
function draw(el){
  if (el.dataset.drawn) return;
  el.dataset.drawn = 1;
  const fig = fixImages(JSON.parse(document.getElementById(el.id + '-json').textContent));
  Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false, scrollZoom: true});
}
function drawVisible(root){
  root.querySelectorAll('.plot').forEach(el => { if (el.offsetParent !== null) draw(el); });
}
document.addEventListener('DOMContentLoaded', () => {
  drawVisible(document);
  document.querySelectorAll('details').forEach(d => d.addEventListener('toggle', () => { if (d.open) drawVisible(d); }));
});
"""

_CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
details{margin:.6em 0;border:1px solid #ddd;border-radius:4px;padding:.3em .8em}
summary{cursor:pointer;font-weight:bold} pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .6em;font-size:.9em}
.plot{width:100%;min-height:300px} .md p{line-height:1.45}
"""


def markdown_to_html(md: str) -> str:
    """The small Markdown subset the lesson writes: ### headings, **bold**, pipe tables, paragraphs."""
    out, para, table = [], [], []

    def inline(s: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s))

    def flush():
        if para:
            out.append("<p>" + " ".join(inline(p) for p in para) + "</p>")
            para.clear()
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|[\s:|-]+\|", r)]
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            body = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{inline(c)}</{'th' if i == 0 else 'td'}>"
                                            for c in row) + "</tr>" for i, row in enumerate(cells))
            out.append(f"<table>{body}</table>")
            table.clear()

    for line in md.splitlines():
        s = line.strip()
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            level = min(len(s) - len(s.lstrip("#")), 6)
            out.append(f"<h{level}>{inline(s.lstrip('#').strip())}</h{level}>")
        elif s.startswith("|"):
            if para:
                flush()
            table.append(s)
        else:
            if table:
                flush()
            para.append(s)
    flush()
    return "\n".join(out)


class HtmlReport:
    """Collects sections of plotly figures, text and Markdown; ``write`` makes one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.images: dict[str, int] = {}
        self._n = 0
        self._open = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, pre: bool = False) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>" if pre else f"<p>{html.escape(text)}</p>")

    def markdown(self, md: str) -> None:
        self.parts.append(f'<div class="md">{markdown_to_html(md)}</div>')

    def open(self, summary: str, opened: bool = False) -> None:
        """Start a collapsible section (figures in it are drawn when it is first opened)."""
        self.parts.append(f"<details{' open' if opened else ''}><summary>{html.escape(summary)}</summary>")
        self._open += 1

    def close(self) -> None:
        if self._open:
            self.parts.append("</details>")
            self._open -= 1

    def figure(self, fig) -> None:
        """Add a plotly figure; its pictures are stored once for the whole page."""
        js = pio.to_json(fig, validate=False)

        def swap(m):
            uri = json.loads(f'"{m.group(1)}"')
            if uri not in self.images:
                self.images[uri] = len(self.images)
            return f'"@img:{self.images[uri]}"'

        js = _URI.sub(swap, js).replace("</", "<\\/")  # a figure string must not close the <script>
        div = f"fig{self._n}"
        self._n += 1
        height = (fig.layout.height or 450)
        self.parts.append(f'<div class="plot" id="{div}" style="height:{height}px"></div>'
                          f'<script type="application/json" id="{div}-json">{js}</script>')

    def html(self) -> str:
        while self._open:
            self.close()
        images = json.dumps(sorted(self.images, key=self.images.get))
        return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
                f"<script>{get_plotlyjs()}</script><script>const IMAGES = {images};{_JS}</script></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.parts) + "</body></html>")

    def write(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path
