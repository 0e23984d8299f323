"""Data: synthetic generator (determinism, coverage, tight boxes), transforms, COCO loader."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from ddetr.box_ops import box_cxcywh_to_xyxy
from ddetr.data import (SYNTHETIC_CLASSES, CocoDetection, SceneParams, collate, collate_padded,
                        make_transforms, render_scene, scales_for, write_dataset)
from ddetr.data import transforms as T
from ddetr.data.synthetic import _render, main as synthetic_main, write_examples


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "w1"
    write_dataset(root, {"train": 6, "val": 4}, seed=5, workers=1, progress=False)
    return root


def test_generation_is_deterministic_and_independent_of_workers(synthetic_root, tmp_path):
    write_dataset(tmp_path / "w2", {"train": 6, "val": 4}, seed=5, workers=2, progress=False)
    a, b = _files(synthetic_root), _files(tmp_path / "w2")
    assert len(a) == 6 + 4 + 2 and a == b
    write_dataset(tmp_path / "other", {"val": 4}, seed=6, workers=1, progress=False)
    other = _files(tmp_path / "other")
    assert other[next(iter(other))] != a[next(k for k in a if k.parts[0] == "val2017")]


def test_cli_writes_the_coco_layout(tmp_path):
    synthetic_main(["--out", str(tmp_path / "d"), "--val", "2", "--seed", "1", "--workers", "1",
                    "--format", "png", "--min-size", "200", "--max-size", "220"])
    data = json.loads((tmp_path / "d/annotations/instances_val2017.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["000000000001.png", "000000000002.png"]
    assert all(200 <= im[k] <= 220 for im in data["images"] for k in ("width", "height"))
    with pytest.raises(SystemExit):
        synthetic_main(["--out", str(tmp_path / "e")])  # nothing to write


def test_annotations_load_with_pycocotools(synthetic_root):
    for split in ("train", "val"):
        coco = COCO(str(synthetic_root / f"annotations/instances_{split}2017.json"))
        assert sorted(coco.cats) == list(range(1, len(SYNTHETIC_CLASSES) + 1))
        assert [coco.cats[i + 1]["name"] for i in range(len(SYNTHETIC_CLASSES))] == list(SYNTHETIC_CLASSES)
        assert len(SYNTHETIC_CLASSES) >= 6
        for img_id, info in coco.imgs.items():
            with Image.open(synthetic_root / f"{split}2017" / info["file_name"]) as im:
                assert im.size == (info["width"], info["height"])
            anns = coco.imgToAnns[img_id]
            assert 1 <= len(anns) <= 10
            for a in anns:
                x, y, w, h = a["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= info["width"] and y + h <= info["height"]
                assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
        ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(set(ids)) == len(ids)
    ds = CocoDetection(synthetic_root, "val")
    assert ds.num_classes == len(SYNTHETIC_CLASSES) + 1
    assert ds.class_names == ["N/A", *SYNTHETIC_CLASSES]


def test_render_scene_is_a_function_of_the_seed():
    (im1, objs1), (im2, objs2) = render_scene(123), render_scene(123)
    assert im1.tobytes() == im2.tobytes() and objs1 == objs2
    assert render_scene(124)[0].tobytes() != im1.tobytes()


def test_scenes_cover_classes_sizes_and_occlusion():
    params = SceneParams()
    classes, short, long_frac, counts, overlaps, shapes = set(), [], [], [], 0, set()
    for seed in range(250):
        image, objs = _render(seed, params)
        H, W, _ = image.shape
        assert params.min_size <= H <= params.max_size and params.min_size <= W <= params.max_size
        shapes.add(W == H)
        counts.append(len(objs))
        boxes = np.array([o.box for o in objs])
        for o in objs:
            classes.add(o.category_id)
            w, h = o.box[2] - o.box[0], o.box[3] - o.box[1]
            short.append(min(w, h))
            long_frac.append(max(w / W, h / H))
            assert o.visible_fraction >= 1 - params.max_hidden - 1e-9  # never mostly hidden
        lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
        hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), -1)
        overlaps += int((np.triu(inter, 1) > 0).any())
    assert classes == set(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert min(short) <= 10  # the stride-8 level has work to do ...
    assert max(long_frac) >= 0.5  # ... and so has the stride-64 one
    assert np.mean(np.array(long_frac) > 0.4) > 0.03 and np.mean(np.array(short) < 16) > 0.05
    assert min(counts) >= 1 and max(counts) >= 8 and np.mean(counts) > 3
    assert overlaps > 25  # partial occlusion is common, not exceptional
    assert False in shapes  # width and height are drawn independently


def test_boxes_are_tight_and_every_drawn_object_is_annotated():
    """On a flat background the changed pixels are exactly the union of the annotated boxes."""
    params = SceneParams(clutter=False)
    for seed in range(40):
        image, objs = _render(seed, params)
        diff = np.abs(image.astype(int) - image[0, 0].astype(int)).max(-1) > 3  # (H, W)
        covered = np.zeros_like(diff)
        for o in objs:
            x0, y0, x1, y1 = o.box
            covered[max(int(y0) - 1, 0):int(np.ceil(y1)) + 1, max(int(x0) - 1, 0):int(np.ceil(x1)) + 1] = True
            # Each box edge touches ink: the row/column just inside it has changed pixels.
            inner = diff[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
            assert inner[:, :2].any() and inner[:, -2:].any(), (seed, o)
            assert inner[:2].any() and inner[-2:].any(), (seed, o)
        assert not (diff & ~covered).any(), f"seed {seed}: ink outside every box"
    # With one object the box of changed pixels is the annotated box, to a pixel.
    for seed in range(30):
        image, (o,) = _render(seed, SceneParams(clutter=False, max_objects=1))
        diff = np.abs(image.astype(int) - image[0, 0].astype(int)).max(-1) > 0
        ys, xs = np.nonzero(diff)
        # The box edge lies inside the outermost touched pixel (coverage is 1/16 px exact).
        assert 0 <= o.box[0] - xs.min() < 1 and 0 <= xs.max() + 1 - o.box[2] < 1
        assert 0 <= o.box[1] - ys.min() < 1 and 0 <= ys.max() + 1 - o.box[3] < 1


def test_examples_are_showcase_scenes(tmp_path):
    paths = write_examples(tmp_path, 2, seed=777)
    assert [p.name for p in paths] == ["synthetic_00.png", "synthetic_01.png"]
    coco = COCO(str(tmp_path / "annotations.json"))
    assert all(len(coco.imgToAnns[i]) >= 4 for i in coco.imgs)


# ----------------------------------------------------------------------------- transforms


def _sample(w=200, h=120):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    target = {"boxes": torch.tensor([[10., 20., 30., 40.], [150., 5., 199., 119.], [60., 60., 120., 100.]]),
              "labels": torch.tensor([1, 2, 3]), "area": torch.tensor([400., 5586., 2400.]),
              "iscrowd": torch.tensor([0, 0, 1]), "image_id": torch.tensor([7]),
              "orig_size": torch.tensor([h, w]), "size": torch.tensor([h, w])}
    return image, target


def test_hflip_mirrors_boxes_and_twice_is_identity():
    image, target = _sample()
    im1, t1 = T.hflip(image, target)
    assert torch.equal(t1["boxes"][0], torch.tensor([170., 20., 190., 40.]))
    im2, t2 = T.hflip(im1, t1)
    assert im2.tobytes() == image.tobytes() and torch.equal(t2["boxes"], target["boxes"])


def test_crop_clips_boxes_and_drops_vanished_ones_with_their_fields():
    image, target = _sample()
    im, t = T.crop_region(image, target, (10, 0, 60, 100))  # top, left, h, w
    assert im.size == (100, 60) and t["size"].tolist() == [60, 100]
    assert t["labels"].tolist() == [1, 3]  # box 2 lies right of x = 100: gone
    assert t["boxes"].tolist() == [[10., 10., 30., 30.], [60., 50., 100., 60.]]
    assert t["area"].tolist() == [400., 400.] and t["iscrowd"].tolist() == [0, 1]


def test_resize_scales_boxes_and_caps_the_longer_side():
    image, target = _sample(200, 100)
    im, t = T.resize(image, target, 50, max_size=1000)
    assert im.size == (100, 50) and t["size"].tolist() == [50, 100]
    assert torch.allclose(t["boxes"], target["boxes"] / 2) and torch.allclose(t["area"], target["area"] / 4)
    im, t = T.resize(image, target, 100, max_size=150)  # shorter 100 would make longer 200
    assert im.size == (150, 75)


def test_normalize_gives_cxcywh_in_unit_range_that_maps_back():
    image, target = _sample()
    x, t = T.ToTensorNormalize()(image, target)
    assert x.shape == (3, 120, 200) and abs(float(x.mean())) < 0.5
    assert (t["boxes"] >= 0).all() and (t["boxes"] <= 1).all()
    back = box_cxcywh_to_xyxy(t["boxes"]) * torch.tensor([200, 120, 200, 120])
    assert torch.allclose(back, target["boxes"], atol=1e-4)


def test_scales_for_800_is_the_official_recipe():
    assert scales_for(800) == {"scales": T.COCO_SCALES, "max_size": 1333, "crop_resize": (400, 500, 600),
                               "crop": (384, 600), "eval_size": 800}
    small = scales_for(320, 512)
    assert max(small["scales"]) == 320 and small["max_size"] == 512 and small["eval_size"] == 320


def test_train_and_val_pipelines_keep_targets_consistent():
    import random

    random.seed(0)
    kw = scales_for(320, 512)
    image, target = _sample(300, 260)
    train, val = make_transforms("train", **kw), make_transforms("val", **kw)
    for _ in range(60):
        x, t = train(image, target)
        h, w = x.shape[-2:]
        assert t["size"].tolist() == [h, w] and min(h, w) <= 320 and max(h, w) <= 512
        n = len(t["boxes"])
        assert len(t["labels"]) == len(t["area"]) == len(t["iscrowd"]) == n
        assert (t["boxes"] >= 0).all() and (t["boxes"] <= 1).all() and (t["boxes"][:, 2:] > 0).all()
    x, t = val(image, target)
    assert min(x.shape[-2:]) == 320 and len(t["boxes"]) == 3
    with pytest.raises(ValueError, match="unknown split"):
        make_transforms("tain")


# ----------------------------------------------------------------------------- loader


def _tiny_coco(root, anns=None, cats=None):
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = []
    for i in (1, 2):
        Image.new("RGB", (64, 48), (i * 50, 0, 0)).save(root / "val2017" / f"{i:012d}.jpg")
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48})
    anns = anns if anns is not None else [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 10, 20, 20], "area": 300, "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 0},
    ]
    cats = cats or [{"id": 1, "name": "a"}, {"id": 3, "name": "c"}]
    data = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))
    return root


def test_loader_targets_labels_and_crowd(tmp_path):
    ds = CocoDetection(_tiny_coco(tmp_path), "val")
    assert len(ds) == 2 and ds.num_classes == 4 and ds.class_names == ["N/A", "a", "N/A", "c"]
    image, t = ds[0]
    assert image.size == (64, 48) and t["orig_size"].tolist() == [48, 64]
    assert t["boxes"].tolist() == [[1., 2., 11., 22.], [30., 10., 50., 30.]]
    assert t["labels"].tolist() == [1, 3] and t["iscrowd"].tolist() == [0, 1]
    assert CocoDetection(tmp_path, "val", drop_crowd=True)[0][1]["labels"].tolist() == [1]
    assert ds.coco.getAnnIds(imgIds=[1]) == [1, 2]

    ds = CocoDetection(tmp_path, "val", make_transforms("val", **scales_for(96, 200)))
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and images[0].shape == (3, 96, 128)
    batch, mask, targets = collate_padded([ds[0], ds[1]])
    assert batch.shape == (2, 3, 96, 128) and mask.shape == (2, 96, 128) and not mask.any()


def test_missing_image_is_named(tmp_path):
    root = _tiny_coco(tmp_path)
    (root / "val2017/000000000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000000002\.jpg.*") as e:
        CocoDetection(root, "val")
    assert str(root) in str(e.value)
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        CocoDetection(root, "train")


def test_non_coco_json_names_missing_keys(tmp_path):
    root = _tiny_coco(tmp_path)
    path = root / "annotations/instances_val2017.json"
    path.write_text(json.dumps({"images": [], "labels": []}))
    with pytest.raises(ValueError, match=r"missing top-level keys \['annotations', 'categories'\]"):
        CocoDetection(root, "val")
    path.write_text(json.dumps({"images": [], "categories": [],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\] lacks keys \['bbox'\]"):
        CocoDetection(root, "val")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(root, "val")


def test_degenerate_boxes_are_skipped_with_one_counting_warning(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, -3], "area": 0, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [70, 5, 10, 10], "area": 100, "iscrowd": 0},
    ]
    root = _tiny_coco(tmp_path, anns=anns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(root, "val")
        targets = [ds[i][1] for i in range(len(ds))]
    assert len(caught) == 1 and "skipping 3 of 4 boxes" in str(caught[0].message)
    assert [len(t["boxes"]) for t in targets] == [1, 0]
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].dtype == torch.int64
