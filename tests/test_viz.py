"""viz: figure *contents* equal the capture (coordinates, counts, colour ranges), the math of
the heatmap / lesson / cost views, exported files that open and are not blank."""
import base64
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import viz
from viz.heatmap import attention_maps, bilinear_corners, splat
from viz.overlay import SAMPLING
from viz.selection import Selection, decoder_table


@pytest.fixture(scope="module")
def cap(captured):
    return captured.capture


@pytest.fixture(scope="module")
def query(cap):
    return int(cap.detections.query_index[0])


def _array(v):
    """A plotly JSON array: a list, or numpy data as {"dtype", "bdata" (base64)}."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v, dtype=float)


def sampling_traces(fig):
    return [t for t in fig.data if t.meta == SAMPLING]


def trace_points(fig):
    """(N, 2) x, y and (N, 13) customdata of every sampling-point trace of a plotly figure."""
    tr = sampling_traces(fig)
    xy = np.concatenate([np.column_stack([t.x, t.y]) for t in tr])
    cd = np.concatenate([np.asarray(t.customdata) for t in tr])
    return xy, cd


def expected_xy(pts, cd):
    """The capture's image-pixel location of each (head, level, point) in customdata."""
    h, l, p = (cd[:, i].astype(int) for i in (1, 2, 3))
    return pts["image_px"][h, l, p]


# ----------------------------------------------------------------------------- query view
@pytest.mark.parametrize("sel", [
    Selection(),
    Selection(color_by="weight"),
    Selection(layer=0, heads=(1, 5), levels=(0, 3)),
    Selection(merged=False),
    Selection(merged=False, color_by="weight", heads=(2,)),
])
def test_query_view_points_are_the_capture_points(cap, query, sel):
    fig = viz.query_figure(cap, query, sel)
    layer = sel.layer % cap.meta["dec_layers"]
    pts = cap.decoder_points(layer, query)
    M, L, P = pts["weights"].shape
    n_heads = len(sel.heads) if sel.heads else M
    n_levels = len(sel.levels) if sel.levels else L
    xy, cd = trace_points(fig)
    assert len(xy) == n_heads * n_levels * P
    np.testing.assert_allclose(xy, expected_xy(pts, cd), rtol=0, atol=1e-9)
    # every (head, level, point) of the selection exactly once
    keys = {tuple(r) for r in cd[:, 1:4].astype(int)}
    assert len(keys) == len(xy)
    assert {k[0] for k in keys} == set(sel.heads or range(M)) and {k[1] for k in keys} == set(sel.levels or range(L))
    # hover data: weight, offsets and location come from the capture too
    h, l, p = (cd[:, i].astype(int) for i in (1, 2, 3))
    np.testing.assert_allclose(cd[:, 4], pts["weights"][h, l, p], rtol=1e-6)
    np.testing.assert_allclose(cd[:, 5:7], pts["offsets_level_px"][h, l, p], atol=1e-9)
    np.testing.assert_allclose(cd[:, 7:9], pts["offsets_image_px"][h, l, p], atol=1e-9)
    assert (cd[:, 0] == layer).all()
    if not sel.merged:  # one panel per level, each holding only that level's points
        for t in sampling_traces(fig):
            lv = set(np.asarray(t.customdata)[:, 2].astype(int))
            assert len(lv) == 1
            lvl = lv.pop()
            panel = [i for i, a in enumerate(fig.layout.annotations) if a.text.startswith(f"level {lvl}:")]
            assert panel and t.xaxis == ("x" if panel[0] == 0 else f"x{panel[0] + 1}")


def test_colour_by_weight_spans_the_weights(cap, query):
    fig = viz.query_figure(cap, query, Selection(color_by="weight"))
    (t,) = sampling_traces(fig)
    w = np.asarray(t.marker.color)
    pts = cap.decoder_points(cap.meta["dec_layers"] - 1, query)
    assert w.max() > w.min()  # the test model's weights differ
    assert t.marker.cmin == pytest.approx(pts["weights"].min()) and t.marker.cmax == pytest.approx(pts["weights"].max())
    assert t.marker.cmin == w.min() and t.marker.cmax == w.max()
    sizes = np.asarray(t.marker.size)
    assert sizes[np.argmax(w)] == sizes.max() and sizes[np.argmin(w)] == sizes.min()


def test_colour_by_head_one_trace_per_head_in_the_palette(cap, query):
    from viz.style import head_color

    tr = sampling_traces(viz.query_figure(cap, query, Selection()))
    assert [t.name for t in tr] == [f"head {m}" for m in range(cap.meta["n_heads"])]
    assert all(t.marker.color == head_color(m) for m, t in enumerate(tr))


def test_reference_is_a_green_cross_at_the_capture_reference(cap, query):
    from viz.style import REFERENCE_COLOR

    fig = viz.query_figure(cap, query)
    (ref,) = [t for t in fig.data if t.name == "reference point"]
    pts = cap.decoder_points(cap.meta["dec_layers"] - 1, query)
    assert ref.marker.symbol == "cross" and ref.marker.color == REFERENCE_COLOR
    np.testing.assert_allclose([ref.x[0], ref.y[0]], pts["reference_image_px"][0, :2])
    (box,) = [t for t in fig.data if t.name == "box" and t.line.color == "#FFFFFF"]
    x0, y0, x1, y1 = pts["box_image_px"]
    np.testing.assert_allclose(box.x, [x0, x1, x1, x0, x0])


def test_top_k_keeps_the_heaviest(cap, query):
    full = decoder_table(cap, query, Selection())
    top = decoder_table(cap, query, Selection(top_k=5))
    assert len(top) == 5
    np.testing.assert_allclose(np.sort(top.weight), np.sort(full.weight)[-5:])


def test_matplotlib_view_draws_the_capture_points(cap, query):
    fig = viz.query_figure_mpl(cap, query, Selection(color_by="weight"))
    ax = fig.axes[0]
    sc = [c for c in ax.collections if c.get_array() is not None][0]
    pts = cap.decoder_points(cap.meta["dec_layers"] - 1, query)
    got = np.asarray(sc.get_offsets())
    want = pts["image_px"].reshape(-1, 2)
    assert len(got) == want.shape[0]
    # same set of points (drawn lightest first)
    np.testing.assert_allclose(np.sort(got, 0), np.sort(want, 0), atol=1e-9)
    lo, hi = sc.get_clim()
    assert lo == pytest.approx(pts["weights"].min()) and hi == pytest.approx(pts["weights"].max())


def test_raster_overlay_marks_the_points(cap, query):
    from viz.raster import display_scale

    sel = Selection(color_by="weight")
    s = display_scale(cap.image.shape)
    rgb = viz.render_query_overlay(cap, query, sel)
    h, w = cap.image.shape[:2]
    assert rgb.dtype == np.uint8 and rgb.shape == (round(h * s), round(w * s), 3)
    plain = np.asarray(Image.fromarray(cap.image).resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR))
    t = decoder_table(cap, query, sel)
    inside = [(x, y) for x, y in t.image_px * s if 2 <= x < rgb.shape[1] - 2 and 2 <= y < rgb.shape[0] - 2]
    assert inside
    changed = [np.abs(rgb[int(y), int(x)].astype(int) - plain[int(y), int(x)]).sum() > 30 for x, y in inside]
    assert np.mean(changed) > 0.9
    # clicks map back: a display pixel -> its image point
    u, v = inside[0]
    x, y = viz.to_image_px(int(u), int(v), s)
    assert abs(x - u / s) <= 1 / s and abs(y - v / s) <= 1 / s


@pytest.mark.parametrize("merged", [True, False])
def test_attention_picture_fits_its_box_and_clicks_map_back(cap, query, merged):
    """Pictures are drawn at the size shown (``panel_layout``); every point drawn lies where a
    click on it maps back (``Panel.image_point``), in the merged and the per-level layout."""
    from viz.query_view import attention_raster
    from viz.raster import panel_layout

    h, w = cap.image.shape[:2]
    sel = Selection(merged=merged)
    t = decoder_table(cap, query, sel)
    for box in ((640, 480), (300, 900)):
        panels = panel_layout((0, 0, w, h), list(range(t.n_levels)), merged, box)
        rgb = attention_raster(cap, t, sel, panels)
        assert rgb.shape[1] <= box[0] + 1 and rgb.shape[0] <= box[1] + 1
        assert max(rgb.shape[1] / box[0], rgb.shape[0] / box[1]) > 0.9  # as large as fits
        for p in panels:
            rows = np.flatnonzero(t.level == p.level) if p.level is not None else np.arange(len(t))
            for x, y in t.image_px[rows]:
                u, v = p.left + (x - p.origin[0]) * p.scale, p.top + (y - p.origin[1]) * p.scale
                back = p.image_point(u - 0.5, v - 0.5) if p.left <= u - 0.5 < p.left + p.width and \
                    p.top <= v - 0.5 < p.top + p.height else None
                if back is not None:
                    assert back == pytest.approx((x, y), abs=1e-6)


def test_hover_names_the_cells_a_point_reads(cap, query):
    from viz.overlay import read_cells

    t = decoder_table(cap, query, Selection())
    cd = t.customdata()
    for k in range(len(t)):
        cells = read_cells(t.level_px[k], cap.geometry.valid_wh[int(t.level[k])])
        if len(cells) == 4:  # all inside the map: the first is the top-left one
            assert (cd[k, 11], cd[k, 12]) == cells[0][:2]


def test_labels_grow_with_the_picture(cap):
    from viz.raster import Raster

    small, large = Raster(cap.image, 1.0), Raster(cap.image, 4.0)
    assert large.font.size > small.font.size >= 11


def test_scales_view_level_pictures_have_the_level_resolution(cap, query):
    from viz.canvas import level_picture

    g = cap.geometry
    for lvl in range(g.n_levels):
        pic = level_picture(cap.image, g, lvl)
        assert pic.shape[:2] == tuple(np.round(g.valid_wh[lvl][::-1]).astype(int))
    # the coarsest picture is a block average: its mean colour is the image's (up to cell-size weights)
    assert np.abs(level_picture(cap.image, g, 0).mean((0, 1)) - cap.image.mean((0, 1))).max() < 4


# ----------------------------------------------------------------------------- encoder, grid
def test_encoder_view_points_are_the_capture_points(cap):
    h, w = cap.image.shape[:2]
    layer = cap.encoder_layers[-1]
    x, y, level = w * 0.3, h * 0.6, 1
    fig = viz.encoder_figure(cap, x, y, level, Selection(layer=layer))
    pts = cap.encoder_points(layer, x, y, level)
    xy, cd = trace_points(fig)
    M, L, P = pts["weights"].shape
    assert len(xy) == M * L * P
    np.testing.assert_allclose(xy, expected_xy(pts, cd), atol=1e-9)
    (ref,) = [t for t in fig.data if t.name == "reference point"]
    np.testing.assert_allclose([ref.x[0], ref.y[0]], pts["token_image_px"], atol=1e-6)
    assert f"token {pts['token']}" in fig.layout.title.text
    assert viz.render_encoder_overlay(cap, x, y, level, Selection(layer=layer)).ndim == 3


def test_grid_is_layers_by_heads(cap, query):
    sel = Selection(color_by="weight")
    fig = viz.grid_figure(cap, query, sel)
    D, M = len(cap.decoder_layers), cap.meta["n_heads"]
    L, P = cap.meta["n_levels"], cap.meta["n_points"]
    assert sum(t.type == "image" for t in fig.data) == D * M
    tr = sampling_traces(fig)
    assert len(tr) == D * M and all(len(t.x) == L * P for t in tr)
    lo = min(min(t.marker.color) for t in tr)
    hi = max(max(t.marker.color) for t in tr)
    assert all(t.marker.cmin == lo and t.marker.cmax == hi for t in tr)  # one shared colour range
    for t in tr:
        cd = np.asarray(t.customdata)
        layer, head = int(cd[0, 0]), int(cd[0, 1])
        assert (cd[:, 1] == head).all()
        np.testing.assert_allclose(np.column_stack([t.x, t.y]), expected_xy(cap.decoder_points(layer, query), cd))
    small = viz.render_grid(cap, query, sel, cell=60)
    assert (small.shape[0] + 2) % D == 0 and (small.shape[1] + 2) % M == 0  # D x M tiles, 2 px apart
    assert max((small.shape[0] + 2) // D, (small.shape[1] + 2) // M) - 2 in (59, 60, 61)


# ----------------------------------------------------------------------------- heatmaps
def test_bilinear_splat_is_what_grid_sample_reads():
    """Σ_cells splat · V == Σ_points A · grid_sample(V) for any value map V."""
    rng = np.random.default_rng(0)
    H, W, N = 7, 9, 40
    loc = rng.uniform(-0.3, 1.3, (N, 2))  # some outside the map: they read zeros
    w = rng.uniform(0, 1, N)
    V = rng.normal(size=(H, W))
    sampled = F.grid_sample(torch.tensor(V)[None, None], torch.tensor(loc * 2 - 1)[None, None], mode="bilinear",
                            padding_mode="zeros", align_corners=False)[0, 0, 0].numpy()
    cells = splat(loc * [W, H], w, W, H)
    assert (cells * V).sum() == pytest.approx((w * sampled).sum(), rel=1e-9)
    ix, iy, cw, inside = bilinear_corners(loc * [W, H], W, H)
    np.testing.assert_allclose(cw.sum(1), 1.0)
    assert inside.all(1).sum() < N  # the test does cover points off the map


def test_heatmap_conserves_mass(cap, query):
    maps = attention_maps(cap, query)
    M = cap.meta["n_heads"]
    assert maps.weight == pytest.approx(M, rel=1e-3)  # each head's softmax sums to 1
    on_cells = sum(c.sum() for c in maps.cells)
    assert on_cells <= maps.weight + 1e-6
    g = cap.geometry
    valid = sum(c[: int(round(g.valid_wh[l][1])), : int(round(g.valid_wh[l][0]))].sum() for l, c in enumerate(maps.cells))
    assert maps.density.sum() == pytest.approx(valid, rel=1e-6)  # density integrates to the mass on the image
    fig = viz.heatmap_figure(cap, query)
    hm = [t for t in fig.data if t.meta == "heatmap"]
    assert len(hm) == 1 + g.n_levels
    for lvl in range(g.n_levels):
        vw, vh = np.round(g.valid_wh[lvl]).astype(int)
        np.testing.assert_allclose(np.asarray(hm[1 + lvl].z), maps.cells[lvl][:vh, :vw])


def test_heatmap_of_all_detections_sums_queries(cap):
    qs = [q for _, q in viz.detection_queries(cap, 0.0)][:5]
    total = attention_maps(cap, qs)
    one_by_one = sum(attention_maps(cap, q).density for q in qs)
    np.testing.assert_allclose(total.density, one_by_one, atol=1e-12)
    assert viz.render_heatmap(cap, None, threshold=0.0).shape[2] == 3


# ----------------------------------------------------------------------------- refinement, proposals, stats
def test_refinement_boxes_are_the_trajectory(cap, query):
    fig = viz.refinement_figure(cap, query)
    t = cap.trajectory(query)
    boxes = [tr for tr in fig.data if tr.meta == "box"]
    assert len(boxes) == cap.meta["dec_layers"]
    for d, tr in enumerate(boxes):
        x0, y0, x1, y1 = t["boxes"][d]
        np.testing.assert_allclose(tr.x, [x0, x1, x1, x0, x0])
        np.testing.assert_allclose(tr.y, [y0, y0, y1, y1, y0])
    refs = [tr for tr in fig.data if tr.meta == "reference"]
    np.testing.assert_allclose([[r.x[0], r.y[0]] for r in refs], t["reference_points"])


def test_proposals_mark_the_selected_tokens(cap):
    p = viz.proposals(cap)
    fig = viz.proposals_figure(cap, threshold=0.0)
    (sel,) = [t for t in fig.data if t.meta == "selected"]
    Q = cap.meta["num_queries"]
    assert len(sel.x) == Q
    centres = (p.boxes[:, :2] + p.boxes[:, 2:]) / 2
    np.testing.assert_allclose(np.column_stack([sel.x, sel.y]), centres[p.selected])
    # two-stage: the selected tokens are the top-Q valid scores
    assert set(p.selected.tolist()) == set(p.order[:Q].tolist())
    (dots,) = [t for t in fig.data if t.meta == "proposal_centres"]
    assert len(dots.x) == int(p.valid.sum())
    assert dots.marker.cmin == p.scores[p.valid].min() and dots.marker.cmax == p.scores[p.valid].max()


def test_statistics(cap):
    st = viz.statistics(cap, threshold=0.0)
    L, P = cap.meta["n_levels"], cap.meta["n_points"]
    np.testing.assert_allclose(st.level_mass.sum(1), 1.0, rtol=1e-3)
    assert (st.entropy >= 0).all() and (st.entropy <= np.log(L * P) + 1e-6).all()
    assert st.entropy.min() < np.log(L * P) - 1e-4  # the perturbed model is not uniform
    assert ((0 <= st.outside) & (st.outside <= 1)).all()
    # outside fraction by hand for the last layer from the capture's image-pixel locations
    h, w = cap.image.shape[:2]
    pts = [cap.decoder_points(st.layer, q)["image_px"] for q in st.queries]
    xy = np.stack(pts)  # (N, M, L, P, 2)
    out = (xy[..., 0] < 0) | (xy[..., 0] > w) | (xy[..., 1] < 0) | (xy[..., 1] > h)
    np.testing.assert_allclose(st.outside[st.layers.index(st.layer)], out.mean((0, 1, 3)))
    off = np.stack([cap.decoder_points(st.layer, q)["offsets_image_px"] for q in st.queries])
    np.testing.assert_allclose(st.mean_offset, off.mean((0, 2, 3)), atol=1e-9)
    fig = viz.stats_figure(cap, threshold=0.0)
    assert {t.meta for t in fig.data} >= {"level_mass", "mean_offset", "entropy", "outside"}


# ----------------------------------------------------------------------------- lesson and cost
def test_lesson_numbers_come_from_the_capture(cap, query):
    ls = viz.lesson(cap, query, head=2, level=1, point=3)
    pts = cap.decoder_points(cap.meta["dec_layers"] - 1, query)
    np.testing.assert_allclose(ls.weights, pts["weights"][2])
    assert ls.weights.sum() == pytest.approx(1.0, abs=1e-3)  # one softmax over L x K
    np.testing.assert_allclose(ls.level_px, pts["level_px"][2])
    assert ls.corner_weights.sum() == pytest.approx(1.0)
    px, py = ls.level_px[1, 3]
    assert all(abs(cx + 0.5 - px) <= 1 and abs(cy + 0.5 - py) <= 1 for cx, cy in ls.corner_cells)
    md = ls.markdown()
    assert f"{ls.weights[1, 3]:.4f}" in md and f"({px:.2f}, {py:.2f}) level px" in md
    assert "arXiv 2010.04159" in md and "| encoder layer | dense |" in md
    # defaults: the heaviest point of the query
    best = viz.lesson(cap, query)
    assert pts["weights"][best.head, best.level, best.point] == pts["weights"].max()
    fig = viz.lesson_figure(cap, query, head=2, level=1, point=3)
    got = np.concatenate([np.column_stack([t.x, t.y]) for t in fig.data if t.meta == "lesson_points"])
    np.testing.assert_allclose(got, pts["image_px"][2].reshape(-1, 2))
    (loc,) = [t for t in fig.data if t.meta == "lesson_location"]
    np.testing.assert_allclose([loc.x[1], loc.y[1]], [px, py])
    (bars,) = [t for t in fig.data if t.meta == "softmax"]
    np.testing.assert_allclose(bars.y, pts["weights"][2].ravel())


def test_cost_formulas():
    # Eq. 1 by hand: N_q = N_k = 10, C = 8, M = 2: 4 projections of 10*64 + 2 * 10*10*8
    d = viz.dense_attention_cost(10, 10, 8, 2)
    assert d.macs == 4 * 10 * 64 + 2 * 100 * 8 and d.pairs == 2 * 100
    # Eq. 3: N_q = 10, N_v = 50, C = 8, M = 2, L = 3, K = 4
    f = viz.deformable_attention_cost(10, 50, 8, 2, 3, 4)
    assert f.macs == 3 * 10 * 8 * 2 * 12 + 50 * 64 + 10 * 64 + 5 * 10 * 12 * 8 and f.pairs == 2 * 10 * 12
    # the R50 model at 800 x 1216 (stride 8..64): deformable is far cheaper in the encoder
    shapes = [(100, 152), (50, 76), (25, 38), (13, 19)]
    c = viz.image_cost(shapes, 256, 8, 4, 300, 6, 6)
    assert c.n_tokens == sum(h * w for h, w in shapes)
    assert c.encoder_dense.macs / c.encoder_deformable.macs > 20
    assert c.encoder_dense.pairs == 8 * c.n_tokens ** 2


# ----------------------------------------------------------------------------- gradients (drawn from given maps)
def test_gradient_view_draws_each_map(cap):
    h, w = cap.image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    grads = {q: np.exp(-((xx - w * f) ** 2 + (yy - h / 2) ** 2) / 200.0).astype(np.float32)
             for q, f in zip(viz.gradients.QUANTITIES, (0.2, 0.35, 0.5, 0.65, 0.8))}
    grads.update(box=np.array([10, 10, 50, 40], np.float32), query_index=3, label_name="circle", score_value=0.9)
    fig = viz.gradient_figure(cap.image, grads)
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert [t.meta for t in maps] == list(viz.gradients.QUANTITIES)
    for t, f in zip(maps, (0.2, 0.35, 0.5, 0.65, 0.8)):
        z = np.asarray(t.z)
        iy, ix = np.unravel_index(np.argmax(z), z.shape)
        assert abs((ix + 0.5) * t.dx - w * f) <= 2 * t.dx  # the peak is where the map peaks
        assert z.max() == pytest.approx(1.0) and z.min() >= 0
    with pytest.raises(ValueError, match="pass the image the gradients were computed on"):
        viz.gradient_figure(cap.image[:10], grads)


# ----------------------------------------------------------------------------- errors a user can act on
def test_errors_name_the_fix(cap, query):
    with pytest.raises(ValueError, match="color_by"):
        Selection(color_by="level")
    with pytest.raises(IndexError, match="heads 0..7"):
        viz.query_figure(cap, query, Selection(heads=(9,)))
    with pytest.raises(IndexError, match="decoder layers 0..2"):
        viz.query_figure(cap, query, Selection(layer=7))
    with pytest.raises(ValueError, match="lower the threshold"):
        viz.stats_figure(cap, threshold=1.01)


# ----------------------------------------------------------------------------- files
def test_exported_files_open_and_are_not_blank(cap, query, tmp_path):
    files = viz.save_figure(viz.query_figure_mpl(cap, query, Selection(merged=False)), tmp_path / "q")
    assert [f.suffix for f in files] == [".png", ".svg", ".pdf"]
    png = np.asarray(Image.open(files[0]).convert("RGB")).astype(float)
    assert png.std() > 10 and min(png.shape[:2]) > 300
    root = ET.parse(files[1]).getroot()
    drawn = [e for e in root.iter() if e.tag.split("}")[-1] in ("path", "image", "use")]
    assert len(drawn) > 50
    assert any(e.tag.endswith("text") for e in root.iter())  # text stays text (svg.fonttype none)
    pdf = files[2].read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    assert b"/FontFile2" in pdf  # TrueType embedded (pdf.fonttype 42), no Type 3
    with pytest.raises(ValueError, match="use one of"):
        viz.save_figure(viz.query_figure_mpl(cap, query), tmp_path / "q.jpg")


def test_html_report_is_self_contained(cap, query, tmp_path):
    page = viz.HtmlReport("test")
    page.figure(viz.query_figure(cap, query))
    page.open("more")
    page.figure(viz.query_figure(cap, query, Selection(color_by="weight")))
    page.markdown(viz.lesson(cap, query).markdown())
    path = page.write(tmp_path / "r.html")
    text = path.read_text()
    from viz.canvas import image_data_uri

    assert text.count(image_data_uri(cap.image)) == 1  # the image stored once for both figures
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing loaded from elsewhere: works offline
    assert len(re.findall(r"plotly\.js v\d", text)) == 1  # plotly.js inlined once
    figs = re.findall(r'<script type="application/json" id="fig\d+-json">(.*?)</script>', text, re.S)
    assert len(figs) == 2
    data = json.loads(figs[0])["data"]
    xs = np.concatenate([_array(t["x"]) for t in data if t.get("meta") == SAMPLING])
    assert len(xs) == cap.meta["n_heads"] * cap.meta["n_levels"] * cap.meta["n_points"]
    assert "<table>" in text and "<b>" in text


def test_box_labels_never_cover_each_other():
    """Labels of stacked boxes take the free places (above, inside, below) and the rest are left
    out; far-apart boxes all get theirs; the first (the selection) is always drawn."""
    from viz.raster import Raster

    blank = np.full((200, 300, 3), 255, dtype=np.uint8)
    same = [((100, 80, 160, 120), f"cat 0.{9 - i}") for i in range(6)]
    r = Raster(blank, 2.0)
    assert r.box_labels(same) == 3
    far = [((10, 150, 40, 190), "a 0.9"), ((200, 20, 290, 60), "b 0.8")]
    assert Raster(blank, 2.0).box_labels(far) == 2
    # a label over the picture's top edge moves into it: the box at y = 0 keeps its label
    r = Raster(blank, 1.0)
    assert r.box_labels([((0, 0, 30, 30), "edge 0.5")]) == 1
    assert (r.array()[:2, :10] == 0).all()  # its dark background (2 px margin) is inside the picture
