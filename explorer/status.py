"""The page's words: the header naming the model, the status line under the pictures, and the
legend of the attention view. Plain functions of a session (no Gradio)."""
from __future__ import annotations

import html

import numpy as np

RANDOM_BANNER = "RANDOM WEIGHTS: an untrained model (--random-weights); its detections and attention are meaningless."
WELCOME = ("**Start here:** pick an example or upload an image (left). The model runs once; every change "
           "of view is then drawn from what it recorded.")


def header_parts(lm) -> tuple[str, str, str, str]:
    """(checkpoint, format, variant, classes) as shown at the top of the page (file names only)."""
    from . import serving

    r, cfg = lm.report, lm.model.cfg
    names = [n for n in cfg.class_names if n != "N/A"]  # "N/A": ids COCO never uses (official layout)
    shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    source = serving.scrub_paths(r.source) if r is not None else lm.name  # file names, never folders
    return source, (r.format if r is not None else "?"), cfg.variant, f"({len(names)}): {shown}"


def model_header(lm) -> str:
    source, fmt, variant, classes = header_parts(lm)
    head = (f"**Deformable DETR Explorer** · checkpoint `{source}` ({fmt}) · {variant} · classes {classes}")
    if lm.random_weights:
        head = f'<div class="ddetr-banner">{RANDOM_BANNER}</div>\n\n' + head
    elif lm.missing:
        names = ", ".join(lm.missing[:8]) + (f", ... ({len(lm.missing) - 8} more)" if len(lm.missing) > 8 else "")
        head = (f'<div class="ddetr-banner">OPENED ANYWAY: {len(lm.missing)} tensors of this checkpoint are '
                f'missing and stay randomly initialized: {html.escape(names)}</div>\n\n' + head)
    return head


def plain_header(lm) -> str:
    source, fmt, variant, classes = header_parts(lm)
    text = f"checkpoint: {source} ({fmt}); variant: {variant}; classes {classes}"
    return (RANDOM_BANNER + "\n" + text) if lm.random_weights else text


def status(x, s) -> str:
    """Markdown: the image, what the attention view shows and, where they differ, how this
    layer's score relates to the final one; the picked point's numbers; notes on the input."""
    if s.capture is None:
        return WELCOME
    c = s.capture
    h, w = c.image.shape[:2]
    t = x.timings.summary().get("model", {})
    lines = [f"**{s.image_name}** · {w}x{h} px · {len(x.visible(s))} detection(s) ≥ {s.view.threshold:.2f}"
             + (f" · model run {t['median']:.2f} s (median)" if t else "")]
    table, _ = x.table(s)
    if table is None:
        lines.append("No detection at this threshold: lower it, pick one from the list, or click any pixel "
                     "for the encoder view there.")
    elif table.part == "decoder":
        i = s.target[1]
        final_label, final = c.detections.label_names[i], float(c.detections.scores[i])
        lines.append(f"**Showing** decoder layer {table.layer}, detection #{i}: {table.label} {table.score:.2f} "
                     f"(query {table.query}); {len(table)} sampling points.")
        last = int(c.meta["dec_layers"]) - 1
        if table.layer != last and (table.label != final_label or abs(table.score - final) >= 0.005):
            lines.append(f"*Why {table.label} {table.score:.2f} here and {final_label} {final:.2f} in the list:* "
                         f"every decoder layer has its own class head (auxiliary losses, DETR sec. 3.2); "
                         f"this is layer {table.layer}'s prediction for the query, the list shows the last "
                         f"layer's ({last}), the model's answer.")
    else:
        px, py = s.target[1]
        lines.append(f"**Showing** encoder layer {table.layer}, the level-{table.token_level} token "
                     f"{table.token} under pixel ({px:.0f}, {py:.0f}); {len(table)} sampling points.")
    row = x.picked_row(s, table)
    if row is not None:
        lines.append(point_text(c, table, row))
    lines += [f"*note: {n}*" for n in s.notes]
    return "\n\n".join(lines)


def point_text(capture, table, row: int) -> str:
    from viz.overlay import read_cells

    lvl = int(table.level[row])
    cells = read_cells(table.level_px[row], capture.geometry.valid_wh[lvl])
    ox, oy = table.offset_level_px[row]
    off = "" if not np.isfinite(ox) else f" · offset ({ox:+.2f}, {oy:+.2f}) level px"
    read = ", ".join(f"({cx}, {cy}) ×{wt:.2f}" for cx, cy, wt in cells) or "none (outside the map: reads zeros)"
    return (f"**Point** head {int(table.head[row])} · level {lvl} · point {int(table.point[row])} · weight "
            f"{float(table.weight[row]):.4f}{off} · at ({table.image_px[row][0]:.1f}, {table.image_px[row][1]:.1f}) "
            f"image px; reads the level-{lvl} cells (column, row) × bilinear weight: {read} (outlined).")


def legend_html(x, s) -> str:
    """Which colour is which head, or the weight colour bar with its range."""
    from viz.overlay import weight_range
    from viz.style import WEIGHT_CMAP, head_color, lut

    if s.capture is None:
        return ""
    table, sel = x.table(s)
    if table is None:
        return ""
    if sel.color_by == "weight":
        lo, hi = weight_range(table)
        stops = ", ".join(f"rgb{tuple(int(v) for v in lut(WEIGHT_CMAP)[k])}" for k in range(0, 256, 51))
        return (f'<div class="ddetr-legend">attention weight <span>{lo:.3f}</span>'
                f'<span class="ddetr-bar" style="background: linear-gradient(to right, {stops})"></span>'
                f'<span>{hi:.3f}</span> · dot size = weight · green + = reference</div>')
    heads = sorted(set(int(m) for m in table.head)) if len(table) else []
    items = "".join(f'<span class="ddetr-swatch"><i style="background:{head_color(m)}"></i>head {m}</span>'
                    for m in heads)
    return f'<div class="ddetr-legend">{items} · dot size = weight · green + = reference</div>'
