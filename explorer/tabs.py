"""The explorer's own tabs, registered in the order the page shows them (``explorer.views``
explains the registry). Each ``draw`` is a call into ``viz``; none runs the model."""
from __future__ import annotations

from .state import UserError
from .views import NEED_QUERY, Action, Drawn, Selected, Tab, register


# ----------------------------------------------------------------------------- interactive
def draw_interactive(capture, selected: Selected, view) -> Drawn:
    from viz.query_view import table_figure

    table, sel = _table(capture, selected, view)
    if table is None:
        return Drawn("*Select a detection or click a pixel first.*")
    return Drawn("", table_figure(capture, table, sel))


def _table(capture, selected: Selected, view):
    from viz.selection import decoder_table, encoder_table

    t = selected.target
    if t is None:
        return None, None
    if t[0] == "detection":
        return decoder_table(capture, selected.query, selected.decoder), selected.decoder
    x, y = t[1]
    return encoder_table(capture, x, y, view.enc_level, selected.encoder), selected.encoder


register(Tab("interactive", "Interactive", "The attention view as an interactive figure: drag a box to zoom "
             "in (any depth), double-click to zoom out; hover a point for its head, level, weight and offsets; click legend "
             "entries to hide heads.", draw_interactive))


# ----------------------------------------------------------------------------- refinement
def draw_trajectory(capture, selected: Selected, view) -> Drawn:
    from viz.refinement import refinement_figure

    if selected.query is None:
        return Drawn(NEED_QUERY)
    return Drawn("", refinement_figure(capture, selected.query))


register(Tab("trajectory", "Refinement", "Iterative box refinement (paper sec. 4.1): the selected query's "
             "reference and box after each decoder layer, light (first) to dark (last).", draw_trajectory))


# ----------------------------------------------------------------------------- proposals
def draw_proposals(capture, selected: Selected, view) -> Drawn:
    from viz.proposals import proposals_figure

    if "proposals/boxes" not in capture.arrays and capture.meta.get("family"):
        return Drawn(f"*Encoder proposals are not recorded for transformers models ({capture.meta['variant']}).*")
    if "proposals/boxes" not in capture.arrays:
        return Drawn(f"*This model ({capture.meta['variant']}) is not two-stage: its queries are learned "
                     "embeddings, not encoder proposals.*")
    return Drawn("", proposals_figure(capture, threshold=view.threshold))


register(Tab("proposals", "Proposals", "Two-stage models (paper sec. 4.1) score every encoder pixel as a "
             "proposal; the best become the decoder's queries. Ringed: proposals that became queries.",
             draw_proposals))


# ----------------------------------------------------------------------------- heatmaps
def draw_heatmaps(capture, selected: Selected, view) -> Drawn:
    from viz.heatmap import heatmap_figure

    note = "" if selected.query is not None else f"*All detections scoring at least {view.threshold:.2f}, summed.*"
    return Drawn(note, heatmap_figure(capture, selected.query, selected.decoder, threshold=view.threshold))


register(Tab("heatmaps", "Heatmaps", "Where attention mass lands: every point's weight spread onto the feature "
             "cells the op reads (bilinear), per level and summed. The selected detection, or all shown "
             "detections.", draw_heatmaps))


# ----------------------------------------------------------------------------- layer x head grid
GRID_CELL = 120  # longest side of one cell (px)
GRID_GAP = 2


def draw_grid(capture, selected: Selected, view) -> Drawn:
    from viz.grid import render_grid

    if selected.query is None:
        return Drawn(NEED_QUERY)
    sel = selected.decoder.with_(color_by="weight", heads=None)
    picture = render_grid(capture, selected.query, sel, cell=GRID_CELL)
    heads, layers = selected.decoder.heads, list(capture.decoder_layers)
    layer = selected.decoder.layer % int(capture.meta["dec_layers"])
    if heads is not None and len(heads) == 1 and layer in layers:  # the cell the other views show
        picture = _frame_cell(picture, layers.index(layer), heads[0], len(layers), int(capture.meta["n_heads"]))
    return Drawn("Rows: decoder layers 0 (top) to last; columns: heads 0 to last; colour = attention weight "
                 "(one range for all cells). **Click a cell** to show that layer and that single head everywhere.",
                 picture)


def _frame_cell(picture, row: int, col: int, rows: int, cols: int):
    """``picture`` with cell (row, col) of the grid framed in the selection colour."""
    import numpy as np
    from PIL import Image, ImageDraw

    from viz.style import SELECTED_COLOR, hex_to_rgb

    h, w = picture.shape[:2]
    tw, th = (w - (cols - 1) * GRID_GAP) / cols, (h - (rows - 1) * GRID_GAP) / rows
    im = Image.fromarray(picture)
    x0, y0 = col * (tw + GRID_GAP), row * (th + GRID_GAP)
    ImageDraw.Draw(im).rectangle([x0, y0, x0 + tw - 1, y0 + th - 1], outline=hex_to_rgb(SELECTED_COLOR), width=4)
    return np.asarray(im)


def click_grid(capture, selected: Selected, view, u: float, v: float, shape: tuple[int, int]) -> dict | None:
    """A click at picture pixel (u, v) of a grid of ``shape`` (h, w) -> {layer, heads} of that cell."""
    layers = list(capture.decoder_layers)
    rows, cols = len(layers), int(capture.meta["n_heads"])
    h, w = shape
    tw, th = (w - (cols - 1) * GRID_GAP) / cols, (h - (rows - 1) * GRID_GAP) / rows
    c, r = int(u // (tw + GRID_GAP)), int(v // (th + GRID_GAP))
    if not (0 <= r < rows and 0 <= c < cols):
        return None
    return {"layer": int(layers[r]), "heads": (c,)}


register(Tab("grid", "Layer × head", "Small multiples of the selected query, as bertviz's model view: rows are "
             "decoder layers, columns heads. A head's habit (direction, distance, level) and its change with depth.",
             draw_grid, body="image", click=click_grid))


# ----------------------------------------------------------------------------- statistics
def draw_statistics(capture, selected: Selected, view) -> Drawn:
    from viz.stats import stats_figure

    return Drawn("", stats_figure(capture, threshold=view.threshold, layer=selected.decoder.layer))


register(Tab("statistics", "Statistics", "Over all shown detections: mass per level against object size, each "
             "head's mean offset, attention entropy per head and layer, points outside the image.", draw_statistics))


# ----------------------------------------------------------------------------- learn
def draw_learn(capture, selected: Selected, view) -> Drawn:
    # The lesson draws itself below (explorer.learn_page); this note only says what it follows.
    return Drawn("*The lesson below starts on the teaching example; under Follow choose this page's image "
                 "and selection to learn on this image.*")


def build_learn(c, handlers) -> None:
    from .learn_page import build  # Gradio components: imported only by the page

    build(c, handlers)


register(Tab("learn", "Learn", "New to deformable attention? A guided lesson on Eq. 3 of the paper with the "
             "model's real numbers, one step at a time (Prev / Next): the feature pyramid, the query and its "
             "reference point, heads, offsets, bilinear sampling, attention weights, the weighted sum, the cost "
             "against dense attention, and the layers. It starts on a teaching example chosen because its heads "
             "visibly specialise; follow this page's image instead, an encoder pixel, a single head, or click a "
             "point. 'What if' moves a point and reruns the op; 'How it learned' shows training snapshots.",
             draw_learn, body="custom", build=build_learn))


# ----------------------------------------------------------------------------- gradients (Figure 5)
def draw_gradients(capture, selected: Selected, view) -> Drawn:
    from viz.gradients import gradient_figure

    if capture.meta.get("family"):  # ddetr.gradients differentiates ddetr's own model
        return Drawn(f"*Gradient maps are computed for Deformable DETR checkpoints; this is a transformers "
                     f"{capture.meta['variant']} model.*")
    if selected.query is None:
        return Drawn(NEED_QUERY)
    grads = selected.cache.get(("gradients", selected.query))
    if grads is None:
        return Drawn("*Press the button to compute the gradients of this detection (one forward and five "
                     "backward passes through the model).*")
    return Drawn("", gradient_figure(capture.image, grads))


def compute_gradients(explorer, session, choice=None):
    explorer.gradients(session)


register(Tab("gradients", "Gradients (Fig. 5)", "The paper's Figure 5: how strongly the selected detection's box "
             "centre, size and class score depend on each input pixel (gradient norm). Compare with where it "
             "samples.", draw_gradients,
             action=Action("Compute gradients for the selected detection", compute_gradients, model=True)))


# ----------------------------------------------------------------------------- export
EXPORT_KINDS = (("current view as PNG", "png"), ("current view as SVG", "svg"), ("interactive HTML page", "html"),
                ("full report: every view of the 10 best detections (HTML)", "report"),
                ("capture file (.npz)", "capture"))


def draw_export(capture, selected: Selected, view) -> Drawn:
    return Drawn("Choose what to download and press Export.")


def run_export(explorer, session, choice):
    from .exports import export

    path = export(explorer, session, str(choice))
    return Drawn(f"Ready: `{path.name}`", path)


register(Tab("export", "Export", "Download the current view (as a paper-ready figure), the interactive page, "
             "or the capture file (open it later with `Capture.load`).", draw_export, body="file",
             action=Action("Export", run_export, choices=EXPORT_KINDS)))


# ----------------------------------------------------------------------------- checkpoint
def draw_checkpoint(capture, selected: Selected, view) -> Drawn:
    from ddetr.diagnostics import Diagnostics, check_capture, check_parameters

    lm = selected.model
    if lm.param_findings is None:
        lm.param_findings = check_parameters(lm.model)
    if "diagnostics" not in selected.cache:
        findings, notes = check_capture(capture)
        selected.cache["diagnostics"] = Diagnostics(list(lm.param_findings) + findings, notes)
    from .serving import scrub_paths

    report = scrub_paths(str(lm.report)) if lm.report is not None else lm.name
    if lm.examples_diagnostics is not None:  # checkpoint-level: calibrated over several images
        note = "**Over the example images.** " + lm.examples_diagnostics.to_markdown()
    else:
        note = ("**This image only** (press *Diagnose* for the checkpoint-level verdict over the example "
                "images). " + selected.cache["diagnostics"].to_markdown())
    return Drawn(note, "```text\n" + report + "\n```\n\n```text\n" + capture.summary() + "\n```")


def run_diagnostics(explorer, session, choice) -> None:
    """The calibrated checks over (up to 10 of) the server's example images, once per model."""
    import numpy as np
    from PIL import Image

    from ddetr.diagnostics import diagnose, measure

    lm = explorer.model_of(session)
    paths = [p for items in explorer.examples.values() for p in items.values()][:10]
    if not paths:
        raise UserError("this server offers no example images to diagnose over")
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(np.array(im.convert("RGB")))
    with lm.lock, explorer.timings.timer("diagnostics"):
        stats = measure(lm.model, images)
        lm.runs += len(images)
    lm.examples_diagnostics = diagnose(lm.model, stats)


register(Tab("checkpoint", "Checkpoint", "What was loaded (file, SHA-256, training state) and calibrated "
             "diagnostics that name known faults: offsets still at their initialization, uniform or dead heads, "
             "starved levels, points outside the image, collapsed level embeddings, saturated references, a class "
             "head that never fires. Each finding says where (layer, head, level), what it means and what to do.",
             draw_checkpoint, body="markdown", action=Action("Diagnose", run_diagnostics, model=True)))
