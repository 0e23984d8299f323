"""The offline HTML page of ``python -m ddetr.inspect``: plots as inline PNGs (matplotlib,
no scripts, no network), COCO summary, calibrated diagnostics and the worst images.

``write_report(stats, path)`` reads only the ``stats.json`` dict, so a report can be rebuilt
from a saved ``stats.json`` without the model.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never a window


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _layers(stats: dict) -> list[str]:
    return list(stats["attention"]["layers"])


def _layer_heatmap(stats: dict, key: str, column: str, title: str, cmap: str, vmax: float | None,
                   fmt: str, cell_width: float, fontsize: int) -> str:
    """Heat map of ``stats["attention"]["layers"][layer][key]``: one row per layer, each cell
    annotated with ``fmt`` (white on the dark part of the scale); columns named ``column + i``."""
    import matplotlib.pyplot as plt

    names = _layers(stats)
    m = np.array([stats["attention"]["layers"][k][key] for k in names])  # (layers, columns)
    vmax = max(float(m.max()), 1e-6) if vmax is None else vmax
    fig, ax = plt.subplots(figsize=(1.2 + cell_width * m.shape[1], 0.5 + 0.42 * len(names)))
    im = ax.imshow(m, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, format(v, fmt), ha="center", va="center", color="w" if v < 0.6 * vmax else "k",
                fontsize=fontsize)
    ax.set_xticks(range(m.shape[1]), [f"{column}{i}" for i in range(m.shape[1])])
    ax.set_yticks(range(len(names)), names)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(fig)


def level_mass_figure(stats: dict) -> str:
    """Heat map: layer x level share of attention mass (mean over heads and rows)."""
    return _layer_heatmap(stats, "level_mass", "level ", "attention mass per level",
                          "viridis", None, ".0%", 0.9, 8)


def entropy_figure(stats: dict) -> str:
    """Heat map: layer x head normalized entropy (1 = uniform over L * P points)."""
    return _layer_heatmap(stats, "entropy", "h", "attention entropy per head (1 = uniform)",
                          "magma", 1.0, ".2f", 0.55, 7)


def offsets_figure(stats: dict) -> str:
    """Mean offset length per layer and level, in level pixels and in image pixels."""
    import matplotlib.pyplot as plt

    names = [k for k in _layers(stats) if "offset_level_px" in stats["attention"]["layers"][k]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, unit in ((axes[0], "offset_level_px", "level px"), (axes[1], "offset_image_px", "image px")):
        vals = np.array([np.asarray(stats["attention"]["layers"][k][key]).mean(0) for k in names])  # (layers, L)
        width = 0.8 / max(vals.shape[1], 1)
        for lv in range(vals.shape[1]):
            ax.bar(np.arange(len(names)) + lv * width, vals[:, lv], width, label=f"level {lv}")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"mean offset ({unit})")
    axes[0].legend(fontsize=7)
    fig.suptitle("how far sampling points are from their reference")
    return _png(fig)


def heads_figure(stats: dict) -> str:
    """One compass per layer: each head's mean direction (arrow) and distance (label)."""
    import matplotlib.pyplot as plt

    heads = stats["heads"]
    n = len(heads)
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.6), squeeze=False)
    for ax, (name, hs) in zip(axes[0], heads.items()):
        for h in hs:
            a, c = np.radians(h["angle_deg"]), h["consistency"]
            ax.arrow(0, 0, c * np.cos(a), -c * np.sin(a), head_width=0.06, length_includes_head=True,
                     color=plt.cm.tab10(h["head"] % 10))
            ax.text(1.15 * c * np.cos(a), -1.15 * c * np.sin(a), f"{h['head']}:{h['distance_px']:.0f}",
                    fontsize=6, ha="center", va="center")
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=8)
    fig.suptitle("head directions (image frame, up is up; length = consistency; label head:distance px)", fontsize=8)
    return _png(fig)


def size_figure(stats: dict) -> str | None:
    """Decoder level mass of the queries behind correct detections, by object size."""
    import matplotlib.pyplot as plt

    by = stats["level_mass_by_object_size"]
    if not by:
        return None
    layer = max((k for k in next(iter(by.values())) if k.startswith("decoder/")), key=lambda k: int(k.split("/")[1]))
    buckets = list(by)
    vals = np.array([by[b][layer] for b in buckets])  # (buckets, L)
    fig, ax = plt.subplots(figsize=(5, 3))
    bottom = np.zeros(len(buckets))
    for lv in range(vals.shape[1]):
        ax.bar(buckets, vals[:, lv], bottom=bottom, label=f"level {lv}")
        bottom += vals[:, lv]
    ax.set_xticks(range(len(buckets)), [f"{b}\n({by[b]['objects']} objects)" for b in buckets])
    ax.set_ylabel("share of attention mass")
    ax.set_title(f"{layer}: level mass against object size")
    ax.legend(fontsize=7)
    return _png(fig)


def _findings_table(d: dict) -> str:
    colour = {"ok": "#2e7d32", "warning": "#b26a00", "problem": "#c62828"}
    rows = []
    for f in sorted(d["findings"], key=lambda f: ["problem", "warning", "ok"].index(f["severity"])):
        where = " ".join(f"{k} {f[k]}" for k in ("layer", "head", "level") if f[k] is not None)
        rows.append(f"<tr><td style='color:{colour[f['severity']]}'><b>{f['severity']}</b></td><td><code>{f['check']}</code>"
                    f"</td><td>{f['module']} {where}</td><td>{html.escape(f['message'])}</td></tr>")
    return "<table><tr><th>severity</th><th>check</th><th>where</th><th>meaning</th></tr>" + "".join(rows) + "</table>"


def _worst_table(images: list[dict]) -> str:
    rows = []
    for i in images:
        missed = "; ".join(f"{m['label']} {m['box']} (closest query {m['closest_query']}, IoU {m['closest_iou']:.2f}, "
                           f"score {m['closest_score']:.2f})" for m in i["missed"]) or "none"
        fps = "; ".join(f"{f['label']} {f['score']:.2f} (query {f['query']})" for f in i["false_positives"]) or "none"
        rows.append(f"<tr><td>{i['image_id']}</td><td>{html.escape(i['file_name'])}</td><td>{i['error']:.2f}</td>"
                    f"<td>{html.escape(missed)}</td><td>{html.escape(fps)}</td></tr>")
    return ("<table><tr><th>image</th><th>file</th><th>error</th><th>missed objects</th><th>confident false positives"
            "</th></tr>" + "".join(rows) + "</table>")


def render(stats: dict) -> str:
    """The whole page as one string."""
    size = size_figure(stats)
    e = stats["errors"]
    parts = [
        f"<h1>Inspection of {html.escape(str(stats['checkpoint']))}</h1>",
        f"<p>{stats['images']} images of {html.escape(stats['dataset']['root'])} ({stats['dataset']['split']}), "
        f"variant {stats['variant']}; {e['missed']} missed objects and {e['false_positives']} confident false positives "
        f"at score &ge; {e['score_threshold']}.</p>",
        "<h2>COCO evaluation</h2>", f"<pre>{html.escape(stats['coco']['summary'])}</pre>",
        f"<h2>Diagnostics (verdict: {stats['diagnostics']['verdict']})</h2>", _findings_table(stats["diagnostics"]),
        "<h2>Attention</h2>", level_mass_figure(stats), entropy_figure(stats), offsets_figure(stats), heads_figure(stats),
        *(["<h2>Object size</h2>", size] if size else []),
        "<h2>Worst images</h2>", _worst_table(stats["worst_images"]),
    ]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ddetr inspection</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px}td,th{padding:3px 6px;border-bottom:1px solid #ddd;"
            "vertical-align:top;font-size:13px}table{border-collapse:collapse}img{max-width:100%;margin:8px 0}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")


def write_report(stats: dict, path) -> Path:
    path = Path(path)
    path.write_text(render(stats))
    return path


def read_stats(folder) -> dict:
    """``stats.json`` of an inspection folder; ValueError naming the problem and the fix."""
    import json

    path = Path(folder) / "stats.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no stats.json; run python -m ddetr.inspect --out {folder} first")
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); run the inspection again") from None
    if not isinstance(stats, dict) or "worst_images" not in stats or "dataset" not in stats:
        raise ValueError(f"{path}: not written by python -m ddetr.inspect (no worst_images / dataset)")
    return stats


def worst_image_entries(stats: dict) -> list[dict]:
    """The worst images to drill into: {"path", "image_id", "summary", "queries"} each, where
    ``queries`` are the decoder queries named by its errors (false positives, closest misses)."""
    d = stats["dataset"]
    out = []
    for i in stats["worst_images"]:
        queries = [f["query"] for f in i["false_positives"]]
        queries += [m["closest_query"] for m in i["missed"] if m["closest_query"] is not None]
        summary = (f"image {i['image_id']}: {len(i['missed'])} missed, {len(i['false_positives'])} false positive(s), "
                   f"error {i['error']:.2f}")
        out.append({"path": str(Path(d["root"]) / f"{d['split']}2017" / i["file_name"]), "image_id": i["image_id"],
                    "summary": summary, "queries": list(dict.fromkeys(queries))})
    return out
