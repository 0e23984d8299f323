"""Checkpoint loading and saving: official .pth, transformers folders, our .safetensors; foreign
and hostile files are refused with a message naming the file and the problem."""
from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ddetr
from ddetr import checkpoint as ck
from ddetr import checkpoint_hf as hf
from ddetr import checkpoint_official as official

torch.set_num_threads(min(2, torch.get_num_threads()))

from randomize import randomize  # noqa: E402

VARIANTS = ["single_scale", "single_scale_dc5", "multi_scale", "multi_scale_box_refine", "multi_scale_two_stage"]


def tiny(name: str, **overrides) -> ddetr.DDETRConfig:
    """The preset's architecture flags on a model small enough for CPU tests."""
    small = dict(backbone="resnet_small", backbone_block="basic", backbone_width=16, backbone_blocks=(1, 1, 1, 1),
                 backbone_norm="frozen_bn", d_model=64, enc_layers=1, dec_layers=2, dim_feedforward=128,
                 num_queries=20, min_size=64, max_size=96)
    small.update(overrides)
    return ddetr.preset(name, **small)


def inputs(h=64, w=96):
    """Two images, the second padded (bottom/right) to the first's size; mask True at padding."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, h, w, generator=g)
    mask = torch.zeros(2, h, w, dtype=torch.bool)
    mask[1, h - 16:] = True
    mask[1, :, w - 16:] = True
    images[1, :, mask[1]] = 0
    return images, mask


@torch.no_grad()
def run(model, images, mask):
    return model.eval()(images, mask)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def official_namespace(cfg) -> argparse.Namespace:
    """What the official main.py pickles: its flags only (no ddetr_config)."""
    args = official.official_args(cfg)
    del args.ddetr_config
    args.lr, args.epochs, args.lr_backbone_names = 2e-4, 50, ["backbone.0"]
    return args


def write_official(model, path, args=None, legacy=False):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, 40)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                "epoch": 49, "args": args if args is not None else official_namespace(model.cfg)}, path,
               _use_new_zipfile_serialization=not legacy)


# ----------------------------------------------------------------------------- official format
@pytest.mark.parametrize("variant", VARIANTS)
def test_official_checkpoint_gives_identical_outputs(tmp_path, variant):
    model = randomize(ddetr.build_model(tiny(variant)))
    write_official(model, tmp_path / "checkpoint.pth")
    loaded, report = ck.load(tmp_path / "checkpoint.pth")
    assert report.format == "official" and report.variant == variant
    assert loaded.cfg.dilation == (variant == "single_scale_dc5")
    assert not report.missing_keys and not report.unexpected_keys
    assert any("optimizer" in n for n in report.notes)
    assert_same_state(model, loaded)
    images, mask = inputs()
    a, b = run(model, images, mask), run(loaded, images, mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)
    if not model.cfg.with_box_refine:
        assert any(s.startswith("class_embed.0-1") for s in report.shared_heads), report.shared_heads
    assert report.label_source.startswith("COCO") and loaded.class_names[1] == "person"
    assert variant in str(report)


def test_pre_zip_serialization_of_older_torch_loads(tmp_path):
    """Checkpoints written before torch 1.6 use the legacy (non-zip) pickle layout."""
    model = randomize(ddetr.build_model(tiny("multi_scale_two_stage")))
    write_official(model, tmp_path / "old.pth", legacy=True)
    assert (tmp_path / "old.pth").read_bytes()[:2] != b"PK"
    loaded, report = ck.load(tmp_path / "old.pth")
    assert report.variant == "multi_scale_two_stage" and loaded.cfg.num_queries == 20
    assert_same_state(model, loaded)


@pytest.mark.parametrize("fmt", ["ddetr", "official"])
def test_save_load_round_trip_is_bit_identical(tmp_path, fmt):
    names = tuple(f"shape {i}" for i in range(7))
    cfg = ddetr.preset("small", enc_layers=1, dec_layers=2, backbone_blocks=(1, 1, 1, 1), num_classes=7,
                       class_names=names, min_size=64, max_size=96)
    model = randomize(ddetr.build_model(cfg))
    path = ck.save(model, tmp_path / f"model.{fmt}", format=fmt)
    loaded, report = ck.load(path)
    assert report.format == fmt and report.label_source == "checkpoint config"
    assert loaded.cfg.to_dict() == cfg.to_dict() and loaded.class_names == names
    assert_same_state(model, loaded)
    images, mask = inputs()
    a, b = run(model, images, mask), run(loaded, images, mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.enc.logits, b.enc.logits)
    # a second round trip changes nothing either
    again, _ = ck.load(ck.save(loaded, tmp_path / f"again.{fmt}", format=fmt))
    assert_same_state(model, again)
    if fmt == "ddetr":
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["format"] == "ddetr" and meta["format_version"] == "1"
        assert json.loads(meta["config"])["class_names"] == list(names)


def test_official_save_matches_official_layout(tmp_path):
    model = ddetr.build_model(tiny("multi_scale_box_refine"))
    ck.save(model, tmp_path / "m.pth", format="official")
    obj = torch.load(tmp_path / "m.pth", weights_only=False)  # our own file: safe to unpickle fully
    assert set(obj) == {"model", "args"} and isinstance(obj["args"], argparse.Namespace)
    assert list(obj["model"]) == list(model.state_dict())  # every official key, shared heads included
    assert obj["args"].with_box_refine and obj["args"].num_feature_levels == 4 and obj["args"].nheads == 8


def test_training_state_with_our_config(tmp_path):
    """ddetr.train's resumable state: {'model', 'optimizer', ..., 'config': cfg.to_dict()}."""
    cfg = ddetr.preset("small", enc_layers=1, dec_layers=2, backbone_blocks=(1, 1, 1, 1), num_classes=3,
                       class_names=("N/A", "disk", "box"))
    model = randomize(ddetr.build_model(cfg))
    torch.save({"model": model.state_dict(), "epoch": 3, "config": cfg.to_dict()}, tmp_path / "state.pth")
    loaded, report = ck.load(tmp_path / "state.pth")
    assert loaded.cfg.to_dict() == cfg.to_dict() and report.label_source == "checkpoint config"
    assert_same_state(model, loaded)


def test_bare_state_dict_is_read_off_the_tensors(tmp_path):
    model = randomize(ddetr.build_model(tiny("multi_scale", n_points=3, num_classes=5)))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    loaded, report = ck.load(tmp_path / "bare.pth")
    c = loaded.cfg
    assert (c.n_points, c.n_levels, c.d_model, c.enc_layers, c.dec_layers, c.num_queries, c.num_classes) == (3, 4, 64, 1, 2, 20, 5)
    assert c.backbone_blocks == (1, 1, 1, 1) and c.backbone_block == "basic" and c.backbone_width == 16
    assert any("assumed 8" in n for n in report.notes)
    assert loaded.class_names == tuple(f"class {i}" for i in range(5)) and "generic" in report.label_source
    images, mask = inputs()
    assert torch.equal(run(model, images, mask).boxes, run(loaded, images, mask).boxes)


def test_two_stage_query_count_is_an_explicit_assumption(tmp_path):
    model = ddetr.build_model(tiny("multi_scale_two_stage"))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    loaded, report = ck.load(tmp_path / "bare.pth")
    assert loaded.cfg.num_queries == 300 and any("assumed 300" in n for n in report.notes)
    write_official(model, tmp_path / "with_args.pth")
    assert ck.load(tmp_path / "with_args.pth")[0].cfg.num_queries == 20


def test_module_prefix_and_state_dict_wrapper(tmp_path):
    model = randomize(ddetr.build_model(tiny("multi_scale")))
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "ddp.pth")
    loaded, report = ck.load(tmp_path / "ddp.pth")
    assert any("module." in n for n in report.notes)
    assert_same_state(model, loaded)
    torch.save({"model": model.state_dict()}, tmp_path / "wrapped.pth")
    assert_same_state(model, ck.load(tmp_path / "wrapped.pth")[0])


def test_dc5_is_never_guessed_silently(tmp_path):
    model = ddetr.build_model(tiny("single_scale_dc5"))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    loaded, report = ck.load(tmp_path / "bare.pth")
    assert not loaded.cfg.dilation and any("single_scale_dc5" in n for n in report.notes)
    loaded, report = ck.load(tmp_path / "bare.pth", variant="single_scale_dc5")
    assert loaded.cfg.dilation and report.variant == "single_scale_dc5"
    assert loaded.backbone[0].strides == [16]
    images, mask = inputs()
    assert torch.equal(run(model, images, mask).logits, run(loaded, images, mask).logits)
    with pytest.raises(ck.CheckpointError, match="multi_scale"):
        ck.load(tmp_path / "bare.pth", variant="multi_scale")
    write_official(model, tmp_path / "args.pth")  # args.dilation=True settles it
    assert ck.load(tmp_path / "args.pth")[0].cfg.dilation
    with pytest.raises(ck.CheckpointError, match="variant='single_scale'"):
        ck.load(tmp_path / "args.pth", variant="single_scale")
    with pytest.raises(ck.CheckpointError, match="not one of"):
        ck.load(tmp_path / "args.pth", variant="huge")


def test_shared_heads_are_checked(tmp_path):
    model = ddetr.build_model(tiny("multi_scale"))
    sd = model.state_dict()
    only_first = {k: v for k, v in sd.items() if not k.startswith(("class_embed.1.", "bbox_embed.1."))}
    torch.save(only_first, tmp_path / "deduped.pth")  # one copy of the shared head suffices
    assert_same_state(model, ck.load(tmp_path / "deduped.pth")[0])
    sd = {k: v.clone() for k, v in sd.items()}
    sd["class_embed.1.bias"] += 1.0
    torch.save(sd, tmp_path / "differ.pth")
    with pytest.raises(ck.CheckpointError, match="class_embed.0.bias != class_embed.1.bias"):
        ck.load(tmp_path / "differ.pth")
    with pytest.warns(UserWarning, match="differ"):
        _, report = ck.load(tmp_path / "differ.pth", strict=False)
    assert any("differ" in n for n in report.notes)


def test_strict_lists_what_does_not_fit_and_non_strict_reports_it(tmp_path):
    model = ddetr.build_model(tiny("multi_scale_box_refine"))
    sd = dict(model.state_dict())
    gone = ["transformer.encoder.layers.0.norm1.weight", "transformer.encoder.layers.0.norm1.bias", "query_embed.weight"]
    for k in gone[:2]:
        del sd[k]
    sd["transformer.decoder.layers.0.linear2.weight"] = torch.zeros(64, 129)
    sd["extra.thing"] = torch.zeros(2)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ck.CheckpointError) as e:
        ck.load(tmp_path / "bad.pth")
    msg = str(e.value)
    assert str(tmp_path / "bad.pth") in msg and "missing 2" in msg and gone[0] in msg
    assert "unexpected 1: extra.thing" in msg and "shape mismatch 1" in msg and "(64, 129)" in msg
    assert "strict=False" in msg
    with pytest.warns(UserWarning, match="randomly initialized"):
        loaded, report = ck.load(tmp_path / "bad.pth", strict=False)
    assert set(report.missing_keys) == {*gone[:2], "transformer.decoder.layers.0.linear2.weight"}
    assert report.unexpected_keys == ["extra.thing"] and "RANDOMLY INITIALIZED" in str(report)


def test_num_classes_and_class_names_arguments(tmp_path):
    model = ddetr.build_model(tiny("multi_scale", num_classes=3))
    path = ck.save(model, tmp_path / "m.safetensors")
    with pytest.raises(ck.CheckpointError, match="3 logits, not num_classes=5"):
        ck.load(path, num_classes=5)
    with pytest.raises(ck.CheckpointError, match="2 class_names for 3"):
        ck.load(path, class_names=["a", "b"])
    loaded, report = ck.load(path, num_classes=3, class_names=["cat", "dog", "cow"])
    assert loaded.class_names == ("cat", "dog", "cow") and report.label_source == "class_names argument"


# ----------------------------------------------------------------------------- hostile / foreign files
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Payload(marker)}, tmp_path / "evil.pth")
    (tmp_path / "evil2.pkl").write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=2))
    (tmp_path / "evil4.pkl").write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=4))
    with pytest.raises(ck.CheckpointError, match=r"refusing to unpickle.*arbitrary code \(global \w+\.system\)"):
        ck.load(tmp_path / "evil.pth")
    with pytest.raises(ck.CheckpointError, match=r"arbitrary code \(global \w+\.system\)"):
        ck.load(tmp_path / "evil2.pkl")
    with pytest.raises(ck.CheckpointError, match="safe unpickler"):
        ck.load(tmp_path / "evil4.pkl")
    assert not marker.exists()


def _foreign(tmp_path, kind):
    good = tmp_path / "good.pth"
    ck.save(ddetr.build_model(tiny("multi_scale")), good, format="official")
    p = tmp_path / kind
    if kind == "random.pth":
        p.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated.pth":
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "truncated.safetensors":
        data = ck.save(ddetr.build_model(tiny("multi_scale")), tmp_path / "g.safetensors").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "empty.pth":
        p.write_bytes(b"")
    elif kind == "folder":
        p.mkdir()
        (p / "notes.txt").write_text("no weights here")
    elif kind == "hf_folder_without_weights":
        p.mkdir()
        (p / "config.json").write_text(json.dumps({"model_type": "deformable_detr"}))
    elif kind == "resnet18.pth":
        torchvision = pytest.importorskip("torchvision")
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), p)
    elif kind == "detr_like.pth":  # a DETR-style file: no per-level input projections
        torch.save({"transformer.encoder.layers.0.self_attn.in_proj_weight": torch.zeros(3, 3)}, p)
    elif kind == "list.pth":
        torch.save([torch.zeros(2)], p)
    return p, good


@pytest.mark.parametrize("kind, phrase", [
    ("random.pth", "safe unpickler"),
    ("truncated.pth", "truncated"),
    ("truncated.safetensors", "truncated"),
    ("empty.pth", "empty"),
    ("folder", "no config.json"),
    ("hf_folder_without_weights", "no weights"),
    ("resnet18.pth", "not a Deformable DETR checkpoint.*ResNet image classifier"),
    ("detr_like.pth", "input_proj"),
    ("list.pth", "holds a list"),
])
def test_foreign_files_give_clear_errors(tmp_path, kind, phrase):
    path, good = _foreign(tmp_path, kind)
    with pytest.raises(ck.CheckpointError, match=phrase) as e:
        ck.load(path)
    assert isinstance(e.value, ValueError) and str(path) in str(e.value)
    assert ck.load(good)[1].format == "official"  # the process is still usable


def test_missing_path_and_unreachable_hub_id(tmp_path, monkeypatch):
    with pytest.raises(ck.CheckpointError, match="no such file"):
        ck.load(tmp_path / "nope.pth")
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ck.CheckpointError, match=r"'SenseTime/deformable-detr'.*download it"):
        ck.load("SenseTime/deformable-detr")


# ----------------------------------------------------------------------------- transformers folders
try:
    import transformers
except ImportError:  # a test-only dependency (requirements-dev.txt)
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers is not installed")


def hf_model(cfg, seed=0):
    """A transformers model as transformers builds it (its default weight tying), randomized."""
    hf_cfg = hf.hf_config_dict(cfg)
    hf_cfg.pop("tie_word_embeddings")  # transformers' default (true)
    model = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**hf_cfg))
    return randomize(model, seed).eval()


@needs_transformers
@pytest.mark.parametrize("variant", ["single_scale", "multi_scale", "multi_scale_box_refine", "multi_scale_two_stage"])
@pytest.mark.parametrize("layout", ["save_pretrained", "v5_names", "pytorch_model.bin"])
def test_transformers_folder_gives_transformers_outputs(tmp_path, variant, layout):
    names = ("N/A", "circle", "square", "triangle")
    theirs = hf_model(tiny(variant, num_classes=4, class_names=names))
    folder = tmp_path / "hf"
    theirs.save_pretrained(folder)  # transformers 5 writes v4 names to disk
    if layout != "save_pretrained":
        weights = load_file(folder / "model.safetensors")
        os.remove(folder / "model.safetensors")
        if layout == "v5_names":  # what a transformers 5 model holds in memory
            weights = {k: v.clone() for k, v in theirs.state_dict().items()}
            save_file(weights, folder / "model.safetensors")
        else:
            torch.save(weights, folder / "pytorch_model.bin")
    ours, report = ck.load(folder)
    assert report.format == "transformers" and report.variant == variant
    assert any(("v5" if layout == "v5_names" else "v4") + " key names" in n for n in report.notes)
    assert ours.class_names == names and report.label_source == "config.json id2label"
    if variant == "multi_scale_box_refine" and layout != "v5_names":
        assert any("filled from class_embed.0" in n for n in report.notes)
    images, mask = inputs()
    a = run(ours, images, mask)
    with torch.no_grad():
        b = theirs(pixel_values=images, pixel_mask=(~mask).long())
    assert (a.logits - b.logits).abs().max() < 1e-4
    assert (a.boxes - b.pred_boxes).abs().max() < 1e-4


@needs_transformers
def test_hub_style_transformers_4_folder(tmp_path):
    """As the SenseTime/* hub repos hold it: a transformers 4 config.json (timm backbone named by
    "backbone", no backbone_config) and pytorch_model.bin with v4 names; id2label with a gap."""
    r50 = dict(backbone="resnet50", backbone_block="bottleneck", backbone_width=64, backbone_blocks=(3, 4, 6, 3))
    theirs = hf_model(tiny("multi_scale_box_refine", num_classes=4, **r50))
    folder = tmp_path / "hub"
    theirs.save_pretrained(folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    os.remove(folder / "model.safetensors")
    c = json.loads((folder / "config.json").read_text())
    del c["backbone_config"]
    c.update(backbone="resnet50", use_timm_backbone=True, use_pretrained_backbone=True, backbone_config=None,
             transformers_version="4.29.0", id2label={"0": "N/A", "2": "square", "3": "triangle"})
    (folder / "config.json").write_text(json.dumps(c))
    ours, report = ck.load(folder / "config.json")
    assert report.variant == "multi_scale_box_refine" and ours.cfg.backbone == "resnet50"
    assert ours.class_names == ("N/A", "N/A", "square", "triangle")
    assert any("v4 key names, timm backbone" in n for n in report.notes)
    images, mask = inputs()
    a = run(ours, images, mask)
    with torch.no_grad():
        b = theirs(pixel_values=images, pixel_mask=(~mask).long())
    assert (a.logits - b.logits).abs().max() < 1e-4 and (a.boxes - b.pred_boxes).abs().max() < 1e-4


@needs_transformers
def test_save_hf_folder_loads_in_transformers(tmp_path):
    model = randomize(ddetr.build_model(tiny("multi_scale_box_refine", num_classes=3, class_names=("a", "b", "c"))))
    folder = ck.save(model, tmp_path / "hf", format="hf")
    theirs = transformers.DeformableDetrForObjectDetection.from_pretrained(folder).eval()
    assert theirs.config.id2label[2] == "c"
    images, mask = inputs()
    a = run(model, images, mask)
    with torch.no_grad():
        b = theirs(pixel_values=images, pixel_mask=(~mask).long())
    assert (a.logits - b.logits).abs().max() < 1e-4 and (a.boxes - b.pred_boxes).abs().max() < 1e-4
    loaded, report = ck.load(folder)
    assert_same_state(model, loaded)
    assert (loaded.cfg.min_size, loaded.cfg.max_size) == (64, 96)


@needs_transformers
def test_untied_transformers_heads_are_refused(tmp_path):
    """transformers 5 with tie_word_embeddings=false gives the decoder its own refinement heads,
    which the official architecture (and ours) shares with the output heads."""
    hf_cfg = hf.hf_config_dict(tiny("multi_scale_box_refine"))
    theirs = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**hf_cfg))
    randomize(theirs).save_pretrained(tmp_path / "hf")
    with pytest.raises(ck.CheckpointError, match="official weight sharing"):
        ck.load(tmp_path / "hf")


# ----------------------------------------------------------------------------- full-size key layout
def test_full_r50_key_counts_match_the_official_checkpoints():
    expected = {"single_scale": 549, "multi_scale": 561, "multi_scale_box_refine": 597, "multi_scale_two_stage": 630}
    for variant, n in expected.items():
        cfg = ddetr.preset(variant)
        sd = ddetr.build_model(cfg).state_dict()
        assert len(sd) == n, variant
        notes = []
        fields = official.infer_fields(sd, 8, notes)
        for k, v in fields.items():
            if k != "num_queries" or not cfg.two_stage:
                assert getattr(cfg, k) == v, (variant, k)
        assert set(hf.hf_to_ours(hf.ours_to_hf(sd, names="v4"))[0]) == set(sd)
