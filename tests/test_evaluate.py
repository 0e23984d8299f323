"""coco_eval and evaluate: perfect -> AP 1, empty -> 0, invalid results -> clear errors."""
import contextlib
import io
import json

import pytest
import torch
from pycocotools.coco import COCO

from ddetr.coco_eval import STAT_NAMES, detections_to_coco, evaluate_results, load_results


def _gt(tmp_path):
    data = {
        "images": [{"id": 1, "width": 200, "height": 100, "file_name": "a.png"},
                   {"id": 7, "width": 120, "height": 160, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 50, 40], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [100, 5, 90, 90], "area": 8100, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [3, 4, 20, 25], "area": 500, "iscrowd": 0},
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


class _Det:
    def __init__(self, boxes, scores, labels):
        self.boxes, self.scores, self.labels = torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels)


def _perfect():
    return [_Det([[10., 20., 60., 60.], [100., 5., 190., 95.]], [0.9, 0.8], [1, 3]),
            _Det([[3., 4., 23., 29.]], [0.7], [3])]


def test_perfect_predictions_score_ap_1(tmp_path):
    gt = _gt(tmp_path)
    results = detections_to_coco([1, 7], _perfect())
    assert results[0] == {"image_id": 1, "category_id": 1, "bbox": [10.0, 20.0, 50.0, 40.0], "score": 0.9}
    res = evaluate_results(gt, results)
    assert set(res.stats) == set(STAT_NAMES)
    assert res.stats["AP"] == pytest.approx(1.0) and res.stats["AP50"] == pytest.approx(1.0)
    assert res.stats["AR100"] == pytest.approx(1.0)
    assert res.summary.count("Average Precision") == 6 and res.summary.count("Average Recall") == 6


def test_label_mapping_and_a_wrong_class_lowers_ap(tmp_path):
    gt = _gt(tmp_path)
    dets = _perfect()
    dets[1].labels = torch.tensor([0])  # label 0 -> category 1: wrong class for the square
    results = detections_to_coco([1, 7], dets, label_to_category={0: 1, 1: 1, 3: 3})
    assert evaluate_results(gt, results).stats["AP"] < 0.9


def test_empty_predictions_score_zero(tmp_path):
    res = evaluate_results(_gt(tmp_path), [])
    assert res.stats["AP"] == 0.0 and res.stats["AR100"] == 0.0
    assert res.stats["APl"] == -1.0  # no large ground truth at all: COCO's "undefined"


@pytest.mark.parametrize("entry, message", [
    ({"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "image_id 99"),
    ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id 2"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, float("nan"), 1], "score": 0.5}, "finite"),
    ({"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, -3], "score": 0.5}, "negative width"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("inf")}, "score"),
    ({"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id, bbox, score"),
])
def test_invalid_results_are_clear_errors(tmp_path, entry, message):
    gt = _gt(tmp_path)
    with pytest.raises(ValueError, match=message):
        evaluate_results(gt, [entry])


def test_results_file_round_trip_and_bad_file(tmp_path):
    gt = _gt(tmp_path)
    good = tmp_path / "res.json"
    good.write_text(json.dumps(detections_to_coco([1, 7], _perfect())))
    assert evaluate_results(gt, good).stats["AP"] == pytest.approx(1.0)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_results(bad, gt)
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        load_results(bad, gt)


def test_evaluate_cli_on_a_saved_model(tmp_path):
    """python -m ddetr.evaluate: loads our format, writes stats and a valid results file; label 0
    (no synthetic category) is never submitted; the size override does not stick to the model."""
    from ddetr.checkpoint import save
    from ddetr.config import preset
    from ddetr.data.coco import CocoDetection
    from ddetr.data.synthetic import SceneParams, write_dataset
    from ddetr.evaluate import evaluate, main
    from ddetr.model import build_model

    root = write_dataset(tmp_path / "syn", {"val": 3}, seed=5, progress=False,
                         params=SceneParams(min_size=96, max_size=128, max_objects=3))
    data = CocoDetection(root, "val")
    torch.manual_seed(0)
    cfg = preset("small", num_classes=data.num_classes, class_names=tuple(data.class_names), d_model=32,
                 dim_feedforward=64, enc_layers=1, dec_layers=2, num_queries=20, backbone_width=8,
                 backbone_blocks=(1, 1, 1, 1), min_size=96, max_size=128)
    model = build_model(cfg)
    save(model, tmp_path / "m.safetensors")
    assert main(["--checkpoint", str(tmp_path / "m.safetensors"), "--coco-dir", str(root), "--device", "cpu",
                 "--out", str(tmp_path / "ev"), "--batch-size", "2", "--workers", "0"]) == 0
    stats = json.loads((tmp_path / "ev" / "stats_val.json").read_text())
    assert set(stats["stats"]) == set(STAT_NAMES) and stats["images"] == 3
    results = load_results(tmp_path / "ev" / "results_val.json", data.coco)  # validates
    assert results and {r["category_id"] for r in results} <= set(data.coco.getCatIds())
    before = model.cfg
    small = evaluate(model, data, min_size=64, max_size=96, progress=False)
    assert model.cfg is before and set(small) == set(STAT_NAMES)
