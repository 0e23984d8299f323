"""``python -m ddetr.inspect``: one process and ``torchrun --nproc_per_node 2`` give the same
stats.json; the report is offline; per-image errors name missed objects and false positives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddetr.data.synthetic import write_dataset
from ddetr.inspect import box_iou, image_errors, main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "default_model.safetensors"
N_IMAGES = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth"), {"val": N_IMAGES}, seed=5, progress=False)


def _decimals(x: float) -> int:
    text = repr(x)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 7


def _close(a, b, path=""):
    """Equal up to float rounding: stats.json keeps float32 precision (about 7 significant
    digits), and the two runs sum the same numbers in a different order."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float):
        # A value rounded to d decimals (scores, IoUs, boxes) may land one step of 10^-d apart
        # when the unrounded values of the two runs straddle a rounding boundary.
        step = 10.0 ** -max(_decimals(a), _decimals(b))
        assert abs(a - b) <= max(2e-6 * max(1.0, abs(a), abs(b)), step * 1.0001), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(dataset, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--checkpoint", str(SHIPPED), "--coco-dir", str(dataset), "--max-images", str(N_IMAGES)]
    assert main([*common, "--out", str(one)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "ddetr.inspect", *common, "--out", str(two)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads((one / "stats.json").read_text()), json.loads((two / "stats.json").read_text())
    assert (a.pop("processes"), b.pop("processes")) == (1, 2)
    _close(a, b)
    assert a["images"] == N_IMAGES and a["coco"]["stats"]["AP"] > 0.5
    layers = a["attention"]["layers"]
    assert set(layers) == {f"{p}/{i}" for p in ("encoder", "decoder") for i in range(3)}
    for s in layers.values():
        assert np.allclose(np.sum(s["mass"], -1), 1.0, atol=1e-5)
        assert len(s["offset_level_px"]) == 8 and len(s["offset_level_px"][0]) == 4
    assert set(a["heads"]["decoder/2"][0]) == {"head", "angle_deg", "consistency", "distance_px"}
    assert a["level_mass_by_object_size"] and a["diagnostics"]["verdict"] == "ok"
    page = (one / "report.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "http://" not in page
    assert "Worst images" in page


def test_bf16_inspection_matches_fp32(dataset, tmp_path):
    """--precision bf16 reaches the model: the report says so, and its numbers stay those of fp32
    up to bfloat16's rounding of the dense layers."""
    common = ["--checkpoint", str(SHIPPED), "--coco-dir", str(dataset), "--max-images", "4"]
    runs = {}
    for prec in ("fp32", "bf16"):
        assert main([*common, "--out", str(tmp_path / prec), "--precision", prec]) == 0
        runs[prec] = json.loads((tmp_path / prec / "stats.json").read_text())
    a, b = runs["fp32"], runs["bf16"]
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    assert abs(a["coco"]["stats"]["AP"] - b["coco"]["stats"]["AP"]) <= 0.02
    mass_a = np.asarray(a["attention"]["layers"]["decoder/2"]["mass"])
    mass_b = np.asarray(b["attention"]["layers"]["decoder/2"]["mass"])
    assert 0 < np.abs(mass_a - mass_b).max() <= 0.01  # moved (bf16 ran), but only by rounding


def test_image_errors_name_missed_objects_and_false_positives():
    det = SimpleNamespace(boxes=torch.tensor([[0., 0, 10, 10], [50, 50, 60, 60], [0, 0, 9, 10], [20, 20, 30, 30]]),
                          scores=torch.tensor([0.9, 0.8, 0.7, 0.1]), labels=torch.tensor([1, 1, 1, 2]),
                          query_index=torch.tensor([7, 3, 5, 9]))
    target = {"boxes": torch.tensor([[0., 0, 10, 10], [20, 20, 30, 31]]), "labels": torch.tensor([1, 2]),
              "iscrowd": torch.tensor([0, 0])}
    e = image_errors(det, target, ["bg", "cat", "dog"], threshold=0.5)
    assert e["matched"] == [(0, 7)]
    assert [f["query"] for f in e["false_positives"]] == [3, 5]  # elsewhere; a duplicate of a taken object
    assert len(e["missed"]) == 1 and e["missed"][0]["label"] == "dog" and e["missed"][0]["closest_query"] == 9
    assert e["error"] == pytest.approx(1 + 0.8 + 0.7)
    assert box_iou(np.array([[0., 0, 2, 2]]), np.array([[1., 1, 3, 3]]))[0, 0] == pytest.approx(1 / 7)


def test_bad_dataset_is_a_clear_error(tmp_path, capsys):
    rc = main(["--checkpoint", str(SHIPPED), "--coco-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "annotation file" in err and "Traceback" not in err


def test_worst_images_of_a_report_lead_to_their_files(tmp_path):
    from ddetr.inspect_report import read_stats, worst_image_entries

    with pytest.raises(ValueError, match="no stats.json"):
        read_stats(tmp_path)
    stats = {"dataset": {"root": "/data/x", "split": "val"}, "worst_images": [
        {"image_id": 3, "file_name": "3.jpg", "error": 1.5, "false_positives": [{"query": 4, "score": 0.5}],
         "missed": [{"closest_query": 7}, {"closest_query": 4}]}]}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    [e] = worst_image_entries(read_stats(tmp_path))
    assert e["path"] == "/data/x/val2017/3.jpg" and e["queries"] == [4, 7] and "1 missed" not in e["summary"]
    assert "2 missed, 1 false positive(s)" in e["summary"]


def test_app_inspect_adds_the_worst_images_to_the_examples(tmp_path, capsys):
    from explorer.cli import inspected_examples

    root = tmp_path / "data"
    (root / "val2017").mkdir(parents=True)
    scene = ROOT / "examples" / "synthetic" / "synthetic_00.png"
    (root / "val2017" / "a.png").write_bytes(scene.read_bytes())
    images = [{"image_id": 1, "file_name": "a.png", "error": 2.0, "false_positives": [],
               "missed": [{"closest_query": 3}, {"closest_query": None}]},
              {"image_id": 2, "file_name": "gone.png", "error": 1.0, "false_positives": [], "missed": [{}]}]
    images[1]["missed"] = [{"closest_query": None}]
    (tmp_path / "stats.json").write_text(json.dumps({"dataset": {"root": str(root), "split": "val"},
                                                     "worst_images": images}))
    ex = inspected_examples(tmp_path)
    assert ex["worst"] == {"a.png": root / "val2017" / "a.png"} and "synthetic" in ex
    err = capsys.readouterr().err
    assert "a.png: image 1: 2 missed" in err and "queries [3]" in err and "gone.png is not at" in err
    with pytest.raises(SystemExit, match="no stats.json"):
        inspected_examples(tmp_path / "nothing")
