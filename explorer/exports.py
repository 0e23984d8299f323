"""Files the explorer writes for download: the current view as a paper figure, an interactive
page, the full report, the capture itself."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .state import UserError

REPORT_DETECTIONS = 10  # the full report draws ~7 figures per detection: keep it to the best ten


def html_page(x, s, table, sel):
    """One self-contained interactive page of the current state (``viz.html_report``)."""
    from viz.detections_view import detections_figure
    from viz.html_report import HtmlReport
    from viz.query_view import table_figure

    from .status import header_parts
    from .views import draw

    c = s.capture
    page = HtmlReport(f"Deformable DETR Explorer: {s.image_name}")
    page.text(f"model: {header_parts(x.model_of(s))[0]}\n" + c.summary(), pre=True)
    page.heading("Current view")
    page.figure(table_figure(c, table, sel))
    page.heading("Detections")
    page.figure(detections_figure(c, s.view.threshold))
    selected = x.selected(s)
    if selected.query is not None:
        from viz.grid import grid_figure

        for tab_id, title in (("trajectory", "Refinement trajectory"), ("learn", "Learn: this query step by step")):
            drawn = draw(tab_id, c, selected, s.view)
            if drawn.body is not None:
                page.open(title)
                if tab_id == "learn":
                    page.markdown(drawn.note)
                page.figure(drawn.body)
                page.close()
        page.open("Layer x head grid")
        page.figure(grid_figure(c, selected.query, selected.decoder.with_(color_by="weight", heads=None)))
        page.close()
    return page


def export(x, s, kind: str) -> Path:
    """Write the current view (png / svg), the interactive page (html), the report or the
    capture (npz) into a fresh folder of the server's export directory; returns the file."""
    from viz.export import save_figure
    from viz.query_view import table_figure_mpl

    if s.capture is None:
        raise UserError("no image yet: upload an image or pick an example first")
    stem = Path(s.image_name).stem or "image"
    out = Path(tempfile.mkdtemp(dir=x.export_dir))
    with x.timings.timer(f"export_{kind}"):
        if kind == "report":
            from viz.bundle import write_bundle

            grads = {k[1]: v for k, v in s.cache.items() if isinstance(k, tuple) and k[0] == "gradients"}
            written = write_bundle(s.capture, out, threshold=s.view.threshold, formats=(),
                                   max_detections=REPORT_DETECTIONS, gradients=grads, progress=False,
                                   title=f"Deformable DETR Explorer: {s.image_name}")
            return written["report"][0]
        if kind == "capture":
            path = out / f"{stem}.capture.npz"
            s.capture.save(path)
            return path
        table, sel = x.table(s)
        if table is None:
            raise UserError("select a detection or a pixel first: the export is of the current view")
        what = f"{stem}-{table.part}-layer{table.layer}-" + (f"query{table.query}" if table.part == "decoder"
                                                              else f"token{table.token}")
        if kind in ("png", "svg"):
            return save_figure(table_figure_mpl(s.capture, table, sel), out / f"{what}.{kind}")[0]
        if kind == "html":
            return html_page(x, s, table, sel).write(out / f"{what}.html")
    raise UserError(f"unknown export {kind!r}; choose png, svg, html, report or capture")
