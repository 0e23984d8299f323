"""transformers detectors of the deformable-attention families behind our front door.

Tiny random models built from the transformers config classes (no download): the capture
holds exactly what each ``MultiScaleDeformableAttention`` call received, its frames put the
model's own references where the model's boxes say, ``predict`` keeps query indices that
match the raw logits, a ``save_pretrained`` folder loads through ``ddetr.load``, and
``ddetr.accelerate`` leaves outputs equal.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import ddetr
from ddetr.hf_family import FAMILIES, FamilyDetector
from ddetr.hf_family.accelerate import AcceleratedMultiScaleDeformableAttention, restore
from ddetr.hf_family.configs import image_processor, tiny_config, tiny_tokenizer
from ddetr.hf_family.registry import final_prediction

transformers = pytest.importorskip("transformers")
torch.set_num_threads(min(2, torch.get_num_threads()))

MODELS = {
    "deformable_detr": ("DeformableDetrForObjectDetection", 96),
    "rt_detr": ("RTDetrForObjectDetection", 96),
    "rt_detr_v2": ("RTDetrV2ForObjectDetection", 96),
    "d_fine": ("DFineForObjectDetection", 96),
    "deimv2": ("Deimv2ForObjectDetection", 96),
    "pp_doclayout_v2": ("PPDocLayoutV2ForObjectDetection", 96),
    "pp_doclayout_v3": ("PPDocLayoutV3ForObjectDetection", 96),
    "pp_doclayout_v4": ("PPDocLayoutV4ForObjectDetection", 96),
    "grounding-dino": ("GroundingDinoForObjectDetection", 128),
    "lw_detr": ("LwDetrForObjectDetection", 64),
    "mm-grounding-dino": ("MMGroundingDinoForObjectDetection", 128),
    "rf_detr": ("RfDetrForObjectDetection", 64),
    "omdet-turbo": ("OmDetTurboForObjectDetection", 128),
}
PROMPT = "cat. remote control."
V2 = ("rt_detr_v2", "d_fine", "deimv2")  # the v2 attention (ddetr.hf_family.variants)


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    out = {}
    for mt, (cls, size) in MODELS.items():
        torch.manual_seed(0)
        hf = getattr(transformers, cls)(tiny_config(mt)).eval()
        tok = tiny_tokenizer(tmp_path_factory.mktemp("vocab")) if FAMILIES[mt].text else None
        out[mt] = FamilyDetector(hf, FAMILIES[mt], image_processor(mt, size), tok)
    return out


def images():
    g = np.random.default_rng(0)
    return [g.integers(0, 256, (70, 110, 3), dtype=np.uint8), g.integers(0, 256, (50, 64, 3), dtype=np.uint8)]


def text_for(mt):
    return PROMPT if FAMILIES[mt].text else None


def record_kernel_inputs(model):
    """A test hook on every kernel module: (name, sampling_locations, attention_weights, shapes)."""
    seen, handles = [], []
    for name, m in model.named_modules():
        if type(m).__name__ in ("MultiScaleDeformableAttention", "AcceleratedMultiScaleDeformableAttention"):
            sig = inspect.signature(m.forward)

            def hook(module, args, kwargs, name=name, sig=sig):
                a = sig.bind(*args, **kwargs).arguments
                seen.append(("." + name, a["sampling_locations"].clone(), a["attention_weights"].clone()))

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


def record_v2_inputs(model, monkeypatch):
    """The v2 attention (RT-DETRv2, D-FINE, DEIMv2) samples in a function: the test wraps it
    to see its arguments by name. D-FINE and DEIMv2 hold it per module (``ms_deformable_attn_core``);
    RT-DETRv2 calls the module-level function, once per decoder layer in order."""
    from transformers.models.rt_detr_v2 import modeling_rt_detr_v2 as v2

    seen = []

    def recorder(fn, names):
        sig = inspect.signature(fn)

        def wrapper(*args, **kwargs):
            a = sig.bind(*args, **kwargs).arguments
            B, Lq, M, LP, _ = a["sampling_locations"].shape
            L = len(a["num_points_list"])
            seen.append((next(names), a["sampling_locations"].reshape(B, Lq, M, L, LP // L, 2).clone(),
                         a["attention_weights"].reshape(B, Lq, M, L, LP // L).clone()))
            return fn(*args, **kwargs)

        return wrapper

    attns = [(n, m) for n, m in model.named_modules() if hasattr(m, "ms_deformable_attn_core")]
    for name, m in attns:
        monkeypatch.setattr(m, "ms_deformable_attn_core", recorder(m.ms_deformable_attn_core, iter([f".{name}"] * 99)))
    if not attns:
        layers = iter(f".model.decoder.layers.{i}.encoder_attn" for i in range(10**6))
        monkeypatch.setattr(v2, "multi_scale_deformable_attention_v2", recorder(v2.multi_scale_deformable_attention_v2, layers))
    return seen, []


@pytest.mark.parametrize("mt", list(MODELS))
def test_capture_holds_what_the_module_received(detectors, mt, monkeypatch):
    det = detectors[mt]
    seen, handles = record_v2_inputs(det.hf, monkeypatch) if mt in V2 else record_kernel_inputs(det.hf)
    try:
        with ddetr.capture(det, dtype=torch.float32) as session:
            det.predict(images(), text=text_for(mt))
    finally:
        for h in handles:
            h.remove()
    assert len(session.captures) == 2 and seen
    for name, loc, w in seen:
        part = "encoder" if ".encoder." in name else "decoder"  # names start with "." (see the hook)
        layer = int(name.split(".layers.")[1].split(".")[0])
        for b, c in enumerate(session.captures):
            s = c.sampling(part, layer)
            assert s["locations"].dtype == np.float32
            assert np.array_equal(s["locations"], loc[b].numpy()), (name, b)  # bit-equal
            assert np.array_equal(s["weights"], w[b].numpy()), (name, b)
            if mt not in V2:  # stored as factors: these families use the official formula
                assert s["references"] is not None
    c = session.captures[0]
    cfg = det.cfg  # the facts views read, as for our model's DDETRConfig
    assert (cfg.n_heads, cfg.n_levels, cfg.n_points) == (c.meta["n_heads"], c.meta["n_levels"], c.meta["n_points"])
    assert (cfg.enc_layers, cfg.dec_layers) == (c.meta["enc_layers"], c.meta["dec_layers"])
    assert list(cfg.class_names) == c.class_names
    assert c.decoder_layers == sorted({int(n.split(".layers.")[1].split(".")[0]) for n, *_ in seen if ".decoder." in n})
    if det.has_encoder:
        assert c.encoder_layers and c.encoder_points(c.encoder_layers[0], 30.0, 20.0)["image_px"].shape[-1] == 2
    else:
        assert not c.encoder_layers and any("no deformable encoder" in s for s in c.left_out)
        with pytest.raises(KeyError):
            c.encoder_points(0, 30.0, 20.0)
    q = int(c.detections.query_index[0])
    pts = c.decoder_points(c.decoder_layers[-1], q)
    assert pts["image_px"].shape == pts["weights"].shape + (2,)
    assert c.trajectory(q)["boxes"].shape == (c.meta["dec_layers"], 4)


@pytest.mark.parametrize("mt", list(MODELS))
def test_capture_file_round_trip(detectors, mt, tmp_path):
    det = detectors[mt]
    with ddetr.capture(det) as session:
        det.predict(images()[:1], text=text_for(mt))
    c = session.last
    c.save(tmp_path / "c.npz")
    assert ddetr.Capture.load(tmp_path / "c.npz") == c


@pytest.mark.parametrize("mt", list(MODELS))
def test_frames_put_the_models_references_where_its_boxes_say(detectors, mt):
    """Known answer from the model itself: the first decoder layer's reference enters the op
    scaled by the valid ratios (padding-aware families) or as is; mapped to image pixels by
    the capture's geometry it must land on ``init_reference_points`` x original size."""
    det = detectors[mt]
    refs, handles = [], []
    attn = next(m for n, m in det.hf.named_modules() if f".{n}".find(".decoder.layers.0.") >= 0
                and hasattr(m, "sampling_offsets"))
    handles.append(attn.register_forward_pre_hook(
        lambda mod, args, kwargs: refs.append(kwargs["reference_points"].clone()), with_kwargs=True))
    outs = []
    handles.append(det.hf.register_forward_hook(lambda mod, a, k, o: outs.append(o), with_kwargs=True))
    try:
        with ddetr.capture(det) as session:
            det.predict(images(), text=text_for(mt))
    finally:
        for h in handles:
            h.remove()
    init = outs[0].init_reference_points  # (B, Q, 2 | 4) in [0, 1] of the image the boxes live in
    if mt in ("rt_detr", *V2) or mt.startswith("pp_doclayout"):  # RT-DETR and its descendants return a logit
        init = init.sigmoid()
    if init.shape[1] != refs[0].shape[1]:
        # OmDet-Turbo returns its encoder's anchors here. It uses no pixel mask and scales
        # nothing: the reference it passes is already in the boxes' frame, so the geometry
        # must be the identity up to the original size (no padding, unit valid ratios).
        assert mt == "omdet-turbo"
        init = refs[0][:, :, 0]
        assert all(np.all(c.geometry.valid_ratios == 1) and c.geometry.input_size == c.geometry.padded_size
                   for c in session.captures)
    for b, c in enumerate(session.captures):
        g = c.geometry
        h0, w0 = images()[b].shape[:2]
        assert g.orig_size == (h0, w0)
        op = refs[0][b, ..., :2].numpy()  # (Q, L | 1, 2) op frame (RT-DETR passes one level, broadcast)
        op = np.broadcast_to(op, (op.shape[0], g.n_levels, 2))
        want = np.broadcast_to(init[b, :, None, :2].numpy() * np.array([w0, h0]), op.shape)
        np.testing.assert_allclose(g.to_image(op, level_axis=-2), want, rtol=1e-4, atol=1e-3)
        # the valid part's far corner on every level is the original image's corner
        corner = g.to_image(g.valid_ratios[None], level_axis=-2)[0]
        np.testing.assert_allclose(corner, np.tile([w0, h0], (g.n_levels, 1)), rtol=1e-9)


@pytest.mark.parametrize("mt", list(MODELS))
def test_predict_query_index_matches_raw_logits(detectors, mt):
    det = detectors[mt]
    ims = images()
    dets = det.predict(ims, text=text_for(mt))
    batch = det.prepare(ims, text_for(mt))
    with torch.no_grad():
        raw_logits, raw_boxes = final_prediction(det.hf(**batch.inputs))
    for b, d in enumerate(dets):
        assert len(d) > 0
        h0, w0 = ims[b].shape[:2]
        for i in range(min(len(d), 10)):
            q, k = int(d.query_index[i]), int(d.labels[i])
            if batch.prompt.token_map is None:
                score = raw_logits[b, q, k].sigmoid()
                assert d.label_names[i] == batch.prompt.names[k]
            else:  # a phrase's score is its best token's
                tokens = batch.prompt.token_map[k].nonzero().flatten()
                score = raw_logits[b, q, tokens].sigmoid().max()
                assert d.label_names[i] == ["cat", "remote control"][k]
            assert float(d.scores[i]) == pytest.approx(float(score), abs=1e-6)
            cx, cy, bw, bh = raw_boxes[b, q].tolist()
            want = [(cx - bw / 2) * w0, (cy - bh / 2) * h0, (cx + bw / 2) * w0, (cy + bh / 2) * h0]
            np.testing.assert_allclose(d.boxes[i].numpy(), want, rtol=1e-5, atol=1e-4)
    thresholded = det.predict(ims, score_threshold=float(dets[0].scores[2]), text=text_for(mt))[0]
    assert len(thresholded) >= 3 and (thresholded.scores >= dets[0].scores[2]).all()


def test_prompt_forms_give_the_same_classes(detectors):
    det = detectors["grounding-dino"]
    forms = ["cat. remote control.", "Cat, remote control", ["cat", " remote control "]]
    names = [det.prepare(images()[:1], text=f).prompt.names for f in forms]
    assert names == [["cat", "remote control"]] * 3


def test_text_errors_name_the_fix(detectors):
    with pytest.raises(ValueError, match="text prompt"):
        detectors["grounding-dino"].predict(images()[:1])
    with pytest.raises(ValueError, match="fixed vocabulary"):
        detectors["rt_detr"].predict(images()[:1], text="cat.")


@pytest.mark.parametrize("mt", list(MODELS))
def test_accelerate_leaves_outputs_equal(detectors, mt):
    det = detectors[mt]
    batch = det.prepare(images(), text_for(mt))
    with torch.no_grad():
        before = det.hf(**batch.inputs)
        kernels = sum(type(m).__name__ == "MultiScaleDeformableAttention" for m in det.hf.modules())
        try:  # (the v2 attention samples in a function, not the module: nothing to swap)
            assert ddetr.accelerate(det) == kernels and (kernels > 0) == (mt not in V2)
            assert ddetr.accelerate(det) == 0  # already swapped
            assert sum(isinstance(m, AcceleratedMultiScaleDeformableAttention) for m in det.hf.modules()) == kernels
            after = det.hf(**batch.inputs)
            with ddetr.capture(det) as session:  # captures still see the op's inputs by name
                det(batch=batch)
        finally:
            assert restore(det) == kernels
    # (Grounding DINO's logits are -inf at text padding: equal there too)
    for x, y in zip(final_prediction(after), final_prediction(before)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    assert len(session.captures) == 2


def save_folder(det: FamilyDetector, folder):
    det.hf.save_pretrained(folder)
    det.processor.save_pretrained(folder)
    if det.tokenizer is not None:
        det.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mt", ["rt_detr", "grounding-dino"])
def test_load_save_pretrained_folder(detectors, mt, tmp_path):
    det = detectors[mt]
    folder = save_folder(det, tmp_path / mt)
    loaded, report = ddetr.load(folder)
    assert isinstance(loaded, FamilyDetector) and loaded.family.model_type == mt
    assert report.format == "transformers" and FAMILIES[mt].title in str(report)
    a = det.predict(images(), text=text_for(mt))
    b = loaded.predict(images(), text=text_for(mt))
    for x, y in zip(a, b):
        assert torch.equal(x.query_index, y.query_index) and x.label_names == y.label_names
        torch.testing.assert_close(x.scores, y.scores)
        torch.testing.assert_close(x.boxes, y.boxes)


def test_deformable_detr_folder_our_backbone_cannot_hold_is_wrapped(tmp_path):
    """A Swin backbone: our converter refuses it, so the folder runs as a FamilyDetector;
    a ResNet folder still converts into our own model."""
    cfg = tiny_config("deformable_detr")
    cfg.backbone_config = transformers.SwinConfig(image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                                  num_heads=[1, 1, 2, 2], window_size=4, out_indices=[2, 3, 4])
    torch.manual_seed(0)
    swin = transformers.DeformableDetrForObjectDetection(cfg).eval()
    folder = tmp_path / "swin"
    swin.save_pretrained(folder)
    image_processor("deformable_detr", 96).save_pretrained(folder)
    loaded, report = ddetr.load(folder)
    assert isinstance(loaded, FamilyDetector)
    assert any("not converted" in n for n in report.notes)
    assert len(loaded.predict(images()[0])[0]) > 0


def test_deformable_detr_folder_that_converts_loads_into_our_model(detectors, tmp_path):
    folder = save_folder(detectors["deformable_detr"], tmp_path / "resnet")
    model, report = ddetr.load(folder)
    assert isinstance(model, ddetr.DeformableDETR) and report.format == "transformers"


def test_unsupported_variant_says_why(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mask2former"}')
    with pytest.raises(ValueError, match="mask2former is not supported: .*masks"):
        ddetr.load(tmp_path)


def test_per_level_point_counts_are_refused_with_the_reason():
    """D-FINE may sample a different number of points per level: no (M, L, P) layout."""
    cfg = tiny_config("d_fine")
    cfg.decoder_n_points = [2, 4, 2]
    torch.manual_seed(0)
    det = FamilyDetector(transformers.DFineForObjectDetection(cfg).eval(), FAMILIES["d_fine"], image_processor("d_fine", 96))
    with ddetr.capture(det) as session:
        dets = det.predict(images()[:1])[0]
    c = session.last
    assert c.decoder_layers == [] and any("per-level point counts [2, 4, 2]" in s for s in c.left_out)
    assert np.array_equal(c.detections.query_index, dets.query_index)


@pytest.mark.slow  # a fresh interpreter imports torch and transformers (~10-20 s here)
def test_hub_id_loads_from_the_local_cache_offline(detectors, tmp_path):
    """``ddetr.load("org/name")`` is ``from_pretrained`` with the hub id: with HF_HUB_OFFLINE=1
    it reads the hub cache (laid out here by hand, as huggingface_hub writes it)."""
    import os
    import subprocess
    import sys

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--tiny-org--tiny-rtdetr"
    save_folder(detectors["rt_detr"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("import ddetr, numpy as np\n"
            "m, r = ddetr.load('tiny-org/tiny-rtdetr')\n"
            "d = m.predict(np.zeros((40, 60, 3), np.uint8))[0]\n"
            "print(type(m).__name__, r.source, len(d))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["FamilyDetector", "tiny-org/tiny-rtdetr"]


def test_capture_of_a_raw_transformers_model(detectors):
    """Without the wrapper: the model's own call is recorded; the input stands for the image."""
    det = detectors["deformable_detr"]
    batch = det.prepare(images())
    with ddetr.capture(det.hf, dtype=torch.float32) as session:
        with torch.no_grad():
            det.hf(**batch.inputs)
    assert len(session.captures) == 2
    c = session.captures[1]
    h, w = c.geometry.input_size
    assert c.image.shape == (h, w, 3) and c.geometry.orig_size == (h, w)
    assert c.class_names == det.class_names and c.encoder_layers == [0, 1]


def test_capture_records_only_the_opening_thread(detectors):
    import threading

    det = detectors["rt_detr"]
    with ddetr.capture(det) as session:
        t = threading.Thread(target=det.predict, args=(images()[:1],))
        t.start()
        t.join()
        assert session.captures == []
        det.predict(images()[:1])
    assert len(session.captures) == 1
    det.predict(images()[:1])  # closed: hooks are gone
    assert len(session.captures) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mt", ["deformable_detr", "grounding-dino"])
def test_accelerate_on_cuda_uses_the_cuda_kernel(detectors, mt):
    import copy

    import ops

    assert ops.implementation("cuda") == "cuda-kernel"
    det = copy.deepcopy(detectors[mt]).to("cuda")
    batch = det.prepare(images(), text_for(mt))
    with torch.no_grad():
        before = final_prediction(det.hf(**batch.inputs))
        assert ddetr.accelerate(det) > 0
        after = final_prediction(det.hf(**batch.inputs))
    for x, y in zip(after, before):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)
