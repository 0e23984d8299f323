"""The A/B tab: the session's checkpoint (A) against another checkpoint of the server (B) on
the same image and detection, both attention views side by side and what changed
(``viz.compare``). The action runs B on the current image once; the tab then redraws for any
selected detection, layer or head without running a model again.
"""
from __future__ import annotations

from .state import UserError
from .views import NEED_IMAGE, NEED_QUERY, Action, Drawn, Selected, Tab, register

HOW = ("*Pick checkpoint B (the server's --checkpoint-dir) and press **Compare**: B runs on this image, "
       "then select any detection to see A and B side by side.*")


def run_compare(explorer, session, choice) -> None:
    """Capture checkpoint ``choice`` on the session's image; kept with this image's capture."""
    from ddetr.capture import capture
    from viz.compare import check_comparable

    if session.capture is None:
        raise UserError(NEED_IMAGE.strip("*"))
    if not choice:
        raise UserError("pick checkpoint B first")
    lm = explorer.registry.get(str(choice))
    with lm.lock, explorer.timings.timer("compare"):
        with capture(lm.model, max_bytes=explorer.capture_bytes) as s:
            lm.model.predict(session.capture.image)
        lm.runs += 1
    try:
        check_comparable(session.capture, s.captures[0])
    except ValueError as e:
        raise UserError(f"cannot compare with {choice!r}: {e}") from None
    session.cache["compare"] = (str(choice), s.captures[0])  # dropped with this image's capture


def draw_compare(capture, selected: Selected, view) -> Drawn:
    from viz.compare import compare_figure, compare_query

    got = selected.cache.get("compare")
    if got is None:
        return Drawn(HOW)
    if selected.query is None:
        return Drawn(NEED_QUERY)
    name, b = got
    diff = compare_query(capture, b, selected.query, layer=selected.decoder.layer)
    a_name = selected.model.name if selected.model is not None else "A"
    fig = compare_figure(capture, b, diff, selected.decoder, names=(f"A {a_name}", f"B {name}"))
    change = ", ".join(f"level {i} {c:+.1%}" for i, c in enumerate(diff.level_mass_change))
    moved = max(range(len(diff.weight_change)), key=lambda m: diff.weight_change[m])
    note = (f"A **{a_name}** query {diff.query_a} ↔ B **{name}** query {diff.query_b} (box IoU {diff.iou:.2f}), "
            f"decoder layer {diff.layer}. Attention mass per level, B − A: {change}. Head {moved} changed most "
            f"({diff.weight_change[moved]:.0%} of its weight moved, points shifted {diff.point_shift[moved]:.1f} px).")
    return Drawn(note, fig)


register(Tab("compare", "A/B", "Two checkpoints of one architecture (two epochs, before and after a fine-tune) on "
             "the same image and detection: both attention views side by side, and the difference in attention "
             "mass per level, offset distance per head and how much of each head's weight moved.",
             draw_compare, action=Action("Compare", run_compare, model=True, checkpoint_choice=True)))
