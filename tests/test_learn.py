"""The Learn lesson: every number it prints (what-if outputs, cost formulas, bilinear weights,
softmax sums) checked against an independent computation; steps, texts, slides."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ops
from ddetr.whatif import layer_inputs, reweighted, what_if
from viz.cost import deformable_attention_cost, dense_attention_cost, pyramid_shapes
from viz.learn_cost import cost_case, cost_figure, cost_markdown, r50_case
from viz.learn_focus import focus, nearest_point
from viz.learn_slides import export_slides
from viz.learn_steps import STEPS, layer_stack, step_view
from viz.learn_text import GLOSSARY, SYMBOLS, TEXTS, word_count



@pytest.fixture(scope="module")
def model_image(captured):
    return captured.model, captured.image


@pytest.fixture(scope="module")
def cap(captured):
    return captured.capture


# ----------------------------------------------------------------------------- what if
@pytest.mark.parametrize("part, layer", [("decoder", 1), ("encoder", 0)])
def test_what_if_equals_a_direct_op_call_on_the_modified_inputs(model_image, part, layer):
    model, image = model_image
    inp = layer_inputs(model, image, part, layer)
    q, m, l, p = min(5, inp.n_rows - 1), 3, 1, 2
    r = what_if(inp, q, m, l, p, shift_level_px=(1.25, -0.75), weight=0.4)
    # Independently: change the full tensors, run the op on every row, take row q.
    loc, w = inp.locations.clone(), inp.weights.clone()
    H, W = inp.spatial_shapes[l].tolist()
    loc[0, q, m, l, p] += torch.tensor([1.25 / W, -0.75 / H])
    head = w[0, q, m]
    others = torch.ones_like(head, dtype=torch.bool)
    others[l, p] = False
    head[others] *= (1 - 0.4) / head[others].sum()
    head[l, p] = 0.4
    direct = ops.ms_deform_attn(inp.value, inp.spatial_shapes, inp.level_start_index, loc, w)[0, q]
    np.testing.assert_allclose(r.after, direct.numpy(), rtol=1e-5, atol=1e-6)
    before = ops.ms_deform_attn(inp.value, inp.spatial_shapes, inp.level_start_index, inp.locations, inp.weights)[0, q]
    np.testing.assert_allclose(r.before, before.numpy(), rtol=1e-5, atol=1e-6)
    proj = F.linear(direct, inp.output_weight, inp.output_bias)
    np.testing.assert_allclose(r.projected_after, proj.numpy(), rtol=1e-5, atol=1e-5)
    assert r.weights_after.sum() == pytest.approx(1.0, abs=1e-5) and r.weight_after == pytest.approx(0.4)
    np.testing.assert_allclose(r.location_after - r.location_before, [1.25, -0.75], atol=1e-4)
    assert r.head_change > 0 and r.output_change > 0
    # Only the changed head's channels move.
    s = r.head_slice
    np.testing.assert_array_equal(np.delete(r.after, np.arange(s.start, s.stop)),
                                  np.delete(r.before, np.arange(s.start, s.stop)))
    same = what_if(inp, q, m, l, p)
    assert same.head_change == 0 and same.output_change == 0


def test_layer_inputs_hold_what_the_model_computed(model_image):
    """The op on the captured inputs reproduces the core's output in the model's forward."""
    model, image = model_image
    core = model.transformer.decoder.layers[0].cross_attn.core
    outs = []
    h = core.register_forward_hook(lambda mod, a, o: outs.append(o.detach().clone()))
    try:
        inp = layer_inputs(model, image, "decoder", 0)
    finally:
        h.remove()
    again = ops.ms_deform_attn(inp.value, inp.spatial_shapes, inp.level_start_index, inp.locations, inp.weights)
    torch.testing.assert_close(again, outs[0])
    assert not core._forward_hooks  # layer_inputs removed its hook
    with pytest.raises(IndexError, match="layers 0"):
        layer_inputs(model, image, "decoder", 99)


def test_reweighted_keeps_the_softmax_sum():
    w = torch.softmax(torch.randn(4, 4), -1) / 4
    w = w / w.sum()
    for new in (0.0, 0.3, 1.0):
        r = reweighted(w, 2, 1, new)
        assert float(r.sum()) == pytest.approx(1.0, abs=1e-6) and float(r[2, 1]) == pytest.approx(new)
        ratio = (r / w).flatten()
        keep = torch.ones(16, dtype=torch.bool)
        keep[2 * 4 + 1] = False
        assert torch.allclose(ratio[keep], ratio[keep][0].expand(15))  # others scaled alike
    with pytest.raises(ValueError, match="softmax"):
        reweighted(w, 0, 0, 1.5)


# ----------------------------------------------------------------------------- cost
def _evaluate(formula: str, values: dict) -> int:
    """'3 N_q C M L K + N_v C²' -> the number: terms are products of integers and symbols."""
    total = 0
    for term in formula.split(" + "):
        prod = 1
        for tok in term.split():
            sq = tok.endswith("²")
            v = int(tok) if tok.isdigit() else values[tok.rstrip("²")]
            prod *= v * v if sq else v
        total += prod
    return total


def test_cost_r50_hand_count_and_the_formula_shown():
    assert pyramid_shapes(800, 1333, 4) == ((100, 167), (50, 84), (25, 42), (13, 21))
    c = r50_case().cost
    n = 16700 + 4200 + 1050 + 273  # 22,223 tokens, counted by hand
    assert c.n_tokens == n == 22223
    C, M, L, K, Q = 256, 8, 4, 4, 300
    assert c.encoder_dense.macs == 4 * n * C * C + 2 * n * n * C
    assert c.encoder_deformable.macs == 3 * n * C * M * L * K + 2 * n * C * C + 5 * n * L * K * C
    assert c.decoder_deformable.macs == 3 * Q * C * M * L * K + n * C * C + Q * C * C + 5 * Q * L * K * C
    assert c.decoder_dense.macs == 2 * Q * C * C + 2 * n * C * C + 2 * Q * n * C
    assert c.encoder_dense.attention_bytes == 4 * M * n * n
    assert c.encoder_deformable.attention_bytes == 4 * 3 * M * n * L * K
    # the printed formula evaluates to the printed number, encoder and decoder alike
    for a, q in ((c.encoder_dense, n), (c.encoder_deformable, n), (c.decoder_dense, Q), (c.decoder_deformable, Q)):
        vals = {"N_q": q, "N_k": n, "N_v": n, "C": C, "M": M, "L": L, "K": K}
        assert _evaluate(a.formula, vals) == a.macs, a.name
    assert "min(" not in c.decoder_deformable.formula  # the counted branch, not the paper's min
    md = cost_markdown(r50_case())
    assert c.decoder_deformable.formula in md and "22223" in md
    fig = cost_figure(cost_case(400, 600, levels=3, points=2, heads=4))
    macs = [t for t in fig.data if t.meta == "cost_macs_deformable"][0]
    assert list(macs.x[0]).count("R50 800×1333 (paper)") == 2  # the paper's case is always shown
    with pytest.raises(ValueError, match="heads"):
        cost_case(800, 1333, heads=7)


def test_small_formulas_by_hand():
    d = dense_attention_cost(10, 10, 8, 2)
    assert d.macs == _evaluate(d.formula, {"N_q": 10, "N_k": 10, "C": 8}) == 4 * 10 * 64 + 2 * 100 * 8
    f = deformable_attention_cost(10, 50, 8, 2, 3, 4)
    assert f.macs == _evaluate(f.formula, {"N_q": 10, "N_v": 50, "C": 8, "M": 2, "L": 3, "K": 4})


# ----------------------------------------------------------------------------- bilinear, softmax
def test_bilinear_weights_read_what_grid_sample_reads(cap):
    f = focus(cap, "decoder", -1)
    H, W = (int(v) for v in cap.geometry.spatial_shapes[f.level])
    rng = np.random.default_rng(0)
    vmap = rng.normal(size=(H, W))
    cells, w, inside = f.corners()
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    ours = sum(wc * vmap[iy, ix] for (ix, iy), wc, ins in zip(cells, w, inside) if ins)
    u = f.locations[f.shown_head, f.level, f.point]  # op frame in [0, 1]
    grid = torch.tensor(u * 2 - 1, dtype=torch.float64).view(1, 1, 1, 2)
    ref = F.grid_sample(torch.tensor(vmap).view(1, 1, H, W), grid, align_corners=False, padding_mode="zeros")
    assert ours == pytest.approx(float(ref), abs=1e-9)


def test_softmax_sums_and_printed_weights(cap):
    f = focus(cap, "decoder", -1, head=2)
    np.testing.assert_allclose(f.weights.sum((1, 2)), 1.0, atol=2e-3)  # float16 storage
    text = TEXTS["weights"](f)
    printed = float(re.search(r"together \(([\d.]+)\)", text).group(1))
    assert printed == pytest.approx(f.weights[2].sum(), abs=1e-4)
    per_level = [float(v) for v in re.findall(r"level \d: (\d\.\d+)", text)]
    assert sum(per_level) == pytest.approx(1.0, abs=0.02) and len(per_level) == f.n_levels
    assert f"A = {f.weights[2, f.level, f.point]:.4f}" in text


# ----------------------------------------------------------------------------- steps and texts
@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_every_step_has_a_short_text_and_a_figure(cap, part):
    f = focus(cap, part, -1)
    stacks = layer_stack(cap, f)
    for i, s in enumerate(STEPS):
        v = step_view(f, i, stacks)
        assert v.step.id == s.id and len(v.figure.data) > 0
        assert 20 <= word_count(v.text) <= 120, (s.id, word_count(v.text))
        if v.figure.layout.meta and v.figure.layout.meta.get("animate"):
            assert len(v.figure.frames) > 2
    assert {"pyramid", "query", "heads", "offsets", "bilinear", "weights", "sum", "cost", "layers"} == {
        s.id for s in STEPS}


def test_symbols_are_explained_where_they_first_appear(cap):
    f = focus(cap, "decoder", -1)
    texts = {s.id: TEXTS[s.id](f) for s in STEPS}
    order = [s.id for s in STEPS]
    for sym, (step, _) in SYMBOLS.items():
        pat = re.compile(r"(?<![\w'])" + re.escape(sym) + r"(?![\w'])")
        assert pat.search(texts[step]), f"{sym} missing from step {step}"
        for earlier in order[:order.index(step)]:
            assert not pat.search(texts[earlier]), f"{sym} used in {earlier} before it is explained in {step}"
    for term in ("query", "reference point", "feature level", "stride", "head", "sampling point", "offset",
                 "bilinear sampling", "attention weight", "softmax over levels x points", "value projection",
                 "output projection", "encoder vs decoder", "iterative refinement", "two-stage"):
        assert term in GLOSSARY


def test_following_one_head_and_clicking_a_point(cap):
    f = focus(cap, "decoder", -1, head=5)
    fig = step_view(f, "heads").figure
    pts = [t for t in fig.data if t.meta == "points"]
    assert len(pts) == 1 and set(np.asarray(pts[0].customdata)[:, 0]) == {5}
    assert f.shown_head == 5 and f.weights[5, f.level, f.point] == f.weights[5].max()
    every = focus(cap, "decoder", -1)
    assert len([t for t in step_view(every, "heads").figure.data if t.meta == "points"]) == every.n_heads
    m, l, p = 3, 2, 1
    x, y = every.image_px[m, l, p]
    assert nearest_point(every, x + 0.01, y) == (m, l, p) or np.allclose(
        every.image_px[nearest_point(every, x, y)], every.image_px[m, l, p])


def test_slides_one_page_per_step_none_blank(cap, tmp_path):
    f = focus(cap, "decoder", -1)
    files = export_slides(f, None, tmp_path, "q")
    pdf = files.pdf.read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) == len(STEPS)
    assert len(files.pngs) == len(STEPS)
    from PIL import Image

    for png in files.pngs:
        im = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
        assert im.shape[1] / im.shape[0] == pytest.approx(16 / 9, rel=0.01)
        left, right = im[:, : im.shape[1] // 2], im[:, im.shape[1] // 2:]
        assert (left < 200).mean() > 0.02 and (right < 128).mean() > 0.005, png.name  # a figure and text


def test_what_if_words_and_figure_show_the_computed_numbers(model_image):
    from viz.learn_whatif import whatif_figure, whatif_markdown

    model, image = model_image
    inp = layer_inputs(model, image, "decoder", 2)
    r = what_if(inp, 3, 1, 0, 2, shift_level_px=(2.0, 0.0))
    md = whatif_markdown(r, 0, 2)
    assert f"{100 * r.head_change:.1f}%" in md and f"{100 * r.output_change:.1f}%" in md and "+2.00" in md
    fig = whatif_figure(r)
    after = [t for t in fig.data if t.meta == "whatif_after"][0]
    np.testing.assert_allclose(np.asarray(after.y, dtype=float), r.after[r.head_slice], rtol=1e-6)
    assert "nothing changed" in whatif_markdown(what_if(inp, 3, 1, 0, 2), 0, 2)
