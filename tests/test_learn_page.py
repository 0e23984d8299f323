"""The Learn tab's logic without a server: stepping, following, what if, history, slides."""
import numpy as np
import pytest
import torch
from PIL import Image

from ddetr.capture import capture
from ddetr.checkpoint import load
from explorer.learn import (LearnState, follow_click, follow_pixel, history_view, learn_focus, lesson_view, slides,
                            step_to, teaching_example, teaching_state, what_if_view)
from viz.learn_steps import STEPS


@pytest.fixture(scope="module")
def teaching():
    torch.set_num_threads(2)
    model, _ = load("examples/default_model.safetensors")
    doc = teaching_example()
    with capture(model) as s:
        model.predict(Image.open(doc["path"]))
    return model, s.last


def test_walks_every_step_of_the_teaching_example(teaching):
    _, cap = teaching
    st = teaching_state()
    assert st.part == "decoder" and st.row == teaching_example()["query"]
    seen = []
    for _ in range(len(STEPS) + 2):  # Next past the end stays on the last step
        v = lesson_view(cap, st)
        seen.append(v.step.id)
        assert v.text and len(v.figure.data) > 0
        st = step_to(st, st.step + 1)
    assert seen[: len(STEPS)] == [s.id for s in STEPS] and seen[-1] == STEPS[-1].id
    assert step_to(st, -3).step == 0


def test_a_click_follows_the_nearest_point_and_what_if_changes_the_output(teaching):
    model, cap = teaching
    st = teaching_state()
    f = learn_focus(cap, st)
    m, l, p = 5, 1, 3
    x, y = f.image_px[m, l, p]
    st2 = follow_click(cap, st, x, y)
    g = learn_focus(cap, st2)
    assert np.allclose(g.image_px[g.shown_head, g.level, g.point], f.image_px[m, l, p])
    cache = {}
    md0, fig0 = what_if_view(model, cap, st2, cache)
    assert "nothing changed" in md0
    md1, fig1 = what_if_view(model, cap, st2.with_(shift=(1.5, -1.0)), cache)
    assert "%" in md1 and len(cache) == 1  # the layer's inputs were captured once
    assert not np.allclose(np.asarray(fig1.data[1].y, float), np.asarray(fig0.data[1].y, float))
    enc = follow_pixel(cap, st, x, y)
    assert enc.part == "encoder" and learn_focus(cap, enc).what.startswith("encoder pixel")


def test_history_in_training_order_and_slides(teaching, tmp_path):
    _, cap = teaching
    st = teaching_state()
    md, fig = history_view(cap, st, {})
    rows = md.splitlines()[2:]
    assert len(rows) >= 5 and rows[0].startswith("| initialization")
    steps = [t.meta for t in fig.data if t.meta and t.meta.startswith("snapshot_")]
    order = [int(m.split("_")[1]) for i, m in enumerate(steps) if m not in steps[:i]]
    assert order == sorted(order) and len(order) >= 5
    files = slides(cap, st, tmp_path)
    assert files.pdf.is_file() and len(files.pngs) == len(STEPS)
