"""How it learned (snapshots in training order, one row's sampling in each) and the teaching
example's head-specialisation measure."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddetr.capture import capture
from ddetr.checkpoint import load, save
from ddetr.snapshots import list_snapshots, sampling_history
from ddetr.whatif import layer_inputs
from viz.learn_focus import Focus, focus
from viz.learn_history import history_figure, history_markdown
from viz.learn_teaching import specialisation

from conftest import default_model, example_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory):
    """Three float16 snapshots: the model, and two copies with perturbed offset layers; the
    index lists them out of order, with AP."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("snaps")
    entries = []
    for step, noise in ((300, 0.0), (0, 0.05), (100, 0.02)):
        m = default_model()  # a fresh copy each time
        with torch.no_grad():
            for layer in m.transformer.encoder.layers:
                layer.self_attn.sampling_offsets.bias.add_(noise * torch.randn_like(layer.self_attn.sampling_offsets.bias))
        save(m, d / f"step_{step:06d}.safetensors", dtype=torch.float16, metadata={"step": str(step)})
        entries.append({"file": f"step_{step:06d}.safetensors", "step": step, "epoch": 0, "images_seen": 4 * step,
                        "AP": step / 1000, "AP50": step / 500, "eval_images": 200})
    (d / "snapshots.json").write_text(json.dumps(entries))
    return d


def test_snapshots_in_training_order_and_one_row_each(snapshot_dir):
    snaps = list_snapshots(snapshot_dir)
    assert [s.step for s in snaps] == [0, 100, 300] and snaps[0].label.startswith("initialization")
    image = example_image()
    model, _ = load(snaps[-1].path)
    with capture(model) as s:
        model.predict(image)
    cap = s.last
    token = int(cap.geometry.nearest_token(100.0, 120.0, 1))
    hist = sampling_history(snaps, image, "encoder", 2, token)
    assert [h.snapshot.step for h in hist] == [0, 100, 300] and all(h.row == token for h in hist)
    # the last snapshot's row is what its own run computed
    own = layer_inputs(model, image, "encoder", 2)
    np.testing.assert_allclose(hist[-1].locations, own.locations[0, token].numpy())
    assert not np.allclose(hist[0].locations, hist[-1].locations)  # the perturbed snapshot samples elsewhere
    fig = history_figure(cap.image, cap.geometry, hist)
    metas = [t.meta for t in fig.data if t.meta]
    order = [m for i, m in enumerate(metas) if m not in metas[:i]]
    assert order == ["snapshot_0", "snapshot_100", "snapshot_300"]
    assert len(history_markdown(cap.geometry, hist).splitlines()) == 2 + 3
    # decoder: the query whose box overlaps the given box most, in every snapshot
    box = cap.detections.boxes[0].numpy()
    dh = sampling_history(snaps, image, "decoder", 2, box=box)
    assert dh[-1].row == int(cap.detections.query_index[0]) and dh[-1].iou == pytest.approx(1.0, abs=1e-4)


def test_missing_snapshot_is_named(tmp_path):
    (tmp_path / "snapshots.json").write_text(json.dumps([{"file": "gone.safetensors", "step": 5}]))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        list_snapshots(tmp_path)
    with pytest.raises(FileNotFoundError, match="no snapshot index"):
        list_snapshots(tmp_path / "nothing")


def _fake_focus(directions_deg, levels, dist=10.0, top=0.5):
    """8 heads, 2 levels, 2 points; each head's points along one direction, weight on one level."""
    M, L, P = len(directions_deg), 2, 2
    ang = np.radians(np.asarray(directions_deg, dtype=float))
    unit = np.stack([np.cos(ang), np.sin(ang)], -1)  # (M, 2)
    ref = np.array([50.0, 50.0])
    image_px = ref + unit[:, None, None, :] * dist * np.array([1.0, 2.0])[None, None, :, None]
    w = np.full((M, L, P), (1 - top) / (L * P - 1))
    for m, l in enumerate(levels):
        w[m, l, 0] = top
    z = np.zeros((M, L, P, 2))
    return Focus(None, "decoder", 0, 0, None, 0, 0, z, z, image_px, w, z, z, np.zeros((L, 2)), np.zeros((L, 2)), ref)


def test_specialisation_measures_direction_level_and_concentration():
    spread = specialisation(_fake_focus(np.arange(8) * 45, [0, 1] * 4))
    same = specialisation(_fake_focus([30] * 8, [0] * 8))
    assert spread.direction_spread == pytest.approx(1.0, abs=1e-6) and same.direction_spread == pytest.approx(0.0, abs=1e-6)
    assert spread.level_diversity == 1.0 and same.level_diversity == 0.5
    assert spread.score > same.score
    peaked = specialisation(_fake_focus(np.arange(8) * 45, [0, 1] * 4, top=0.97))
    assert peaked.max_weight == pytest.approx(0.97) and peaked.score < spread.score
    np.testing.assert_allclose(np.mod(spread.directions_deg, 360), np.arange(8) * 45, atol=1e-6)


def test_shipped_teaching_example_is_what_its_file_says():
    doc = json.loads((ROOT / "examples" / "teaching" / "teaching.json").read_text())
    model, _ = load(ROOT / "examples" / "default_model.safetensors")
    from PIL import Image

    image = Image.open(ROOT / "examples" / "teaching" / doc["image"])
    with capture(model, encoder=False) as s:
        dets = model.predict(image)[0]
    q = doc["query"]
    assert q in dets.query_index.tolist()
    f = focus(s.last, "decoder", doc["layer"], q)
    sp = specialisation(f)
    assert sp.score == pytest.approx(doc["chosen"]["specialisation"], abs=0.02)
    assert sp.max_weight < 0.9 and len(set(sp.levels.tolist())) >= 2
