"""Capture for ``transformers`` detectors: the op's inputs at every deformable attention call.

    det, report = ddetr.load("rt-detr-folder")          # or a FamilyDetector / a raw model
    with ddetr.capture(det) as session:
        det.predict(image)
    c = session.captures[0]                              # the same Capture as for our model
    c.sampling("decoder", 2)["locations"]               # (Lq, M, L, P, 2), bit-equal in float32

A forward pre-hook (``with_kwargs=True``) on each ``MultiScaleDeformableAttention`` module
binds the call to the module's own signature, so the tensors are read by name
(``sampling_locations``, ``attention_weights``, ``value_spatial_shapes``) however the caller
passed them. Storage is our model's: the factors of the locations, the reference points (a
pre-hook on the attention module) and the raw ``sampling_offsets`` projection (a forward hook
on it), kept when the official formula (``frames.sampling_locations``) rebuilds the op's
locations from them bit for bit, which it does for every family in the registry; otherwise the
locations themselves in float32. Attention weights and offsets are stored in ``dtype``
(float32: exactly what the op received). Hooks exist only while the context is open and record
only the opening thread's calls.
"""
from __future__ import annotations

import inspect
import threading
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ..capture_io import Capture
from ..frames import Geometry, sampling_locations
from ..hook_session import DTYPES, HookSession
from ..postprocess import postprocess
from .detector import FamilyBatch, FamilyDetector, Prompt
from .registry import family_of, final_prediction, kernel_modules
from .variants import is_v2, points_per_level, to_levels, uniform_points, v2_locations



def _layers(spec, available: list[int], part: str) -> list[int]:
    if spec is True:
        return list(available)
    if not spec:
        return []
    want = sorted({int(i) for i in spec})
    bad = [i for i in want if i not in available]
    if bad:
        raise ValueError(f"{part} layers {bad} have no deformable attention; this model has {part} layers {available}")
    return want


def valid_ratios(pixel_mask: torch.Tensor | None, spatial_shapes: torch.Tensor) -> torch.Tensor:
    """(B, L, 2) valid (w, h) fraction of each level map, computed as the models do: the mask
    (B, H, W) (1 = image) resized by nearest interpolation to each level, valid rows / columns
    counted along the first column / row. All ones without a mask."""
    L = spatial_shapes.shape[0]
    if pixel_mask is None:
        return torch.ones(1, L, 2)
    out = []
    for H, W in spatial_shapes.tolist():
        m = F.interpolate(pixel_mask[None].float(), size=(H, W)).to(torch.bool)[0]  # (B, H_l, W_l)
        vh = m[:, :, 0].sum(1).float() / H
        vw = m[:, 0, :].sum(1).float() / W
        out.append(torch.stack([vw, vh], -1))
    return torch.stack(out, 1)


class FamilyCaptureSession(HookSession):
    """``ddetr.capture`` for a ``FamilyDetector`` (or a raw ``transformers`` model of a
    supported family); ``captures`` collects one ``Capture`` per image.

    Arguments as ``ddetr.capture``. ``max_bytes`` bounds the batch's encoder sampling (layers
    past it are listed in ``left_out``); the decoder is always kept (a few MB). Decoder
    self-attention is not recorded for these models. Called on a raw model (not through
    ``FamilyDetector.predict``), the "original" image is the model input rescaled to [0, 1].
    """

    def __init__(self, model, *, encoder=True, decoder=True, queries=None, self_attention=True,
                 dtype=torch.float16, max_bytes=100e6):
        self.check_arguments(dtype, queries, max_bytes)
        self.detector = model if isinstance(model, FamilyDetector) else None
        self.hf = model.hf if self.detector else model
        self.family = family_of(getattr(getattr(self.hf, "config", None), "model_type", None))
        if self.family is None:
            raise TypeError(f"capture needs a ddetr DeformableDETR or a transformers detector of a supported "
                            f"family, got {type(model).__name__}")
        self.modules = kernel_modules(self.hf)
        self.encoder = _layers(encoder, [i for i, _, _ in self.modules["encoder"]], "encoder")
        self.decoder = _layers(decoder, [i for i, _, _ in self.modules["decoder"]], "decoder")
        self.queries = queries if queries is None or isinstance(queries, str) else sorted({int(q) for q in queries})
        self.dtype, self.max_bytes = dtype, max_bytes
        if self_attention:
            self.note_self_attention = "decoder self-attention: not recorded for transformers models"
        else:
            self.note_self_attention = None
        self.captures: list[Capture] = []
        self._thread, self._handles, self._pass, self._calls = None, [], None, 0
        self._refused: list[str] = []  # layers whose sampling cannot be stored, with the reason

    # --- context ---
    def __enter__(self) -> "FamilyCaptureSession":
        if self._handles:
            raise RuntimeError("this capture is already open; create a new one with ddetr.capture(model)")
        self._thread = threading.get_ident()
        reg = self._handles.append
        if self.detector is not None:
            reg(self.detector.register_forward_pre_hook(self._on_detector, with_kwargs=True))
        reg(self.hf.register_forward_pre_hook(self._on_start, with_kwargs=True))
        reg(self.hf.register_forward_hook(self._on_end, with_kwargs=True))
        parents = dict(self.hf.named_modules())
        for part, wanted in (("encoder", self.encoder), ("decoder", self.decoder)):
            for i, name, module in self.modules[part]:
                if i not in wanted:
                    continue
                sig = inspect.signature(module.forward)
                if is_v2(module):  # a v2 attention: its function's inputs, from the module's (variants)
                    if not uniform_points(module):
                        self._refused.append(f"{part} layer {i}: per-level point counts {points_per_level(module)} "
                                             "do not fit the (M, L, P) layout of a capture")
                        # still read the level shapes, for the geometry of what is stored
                        reg(module.register_forward_pre_hook(partial(self._on_attention, part, i, sig),
                                                             with_kwargs=True))
                        continue
                    reg(module.register_forward_pre_hook(partial(self._on_attention, part, i, sig), with_kwargs=True))
                    reg(module.sampling_offsets.register_forward_hook(partial(self._on_offsets, part, i)))
                    reg(module.register_forward_hook(partial(self._on_v2, part, i), with_kwargs=True))
                    continue
                reg(module.register_forward_pre_hook(partial(self._on_kernel, part, i, sig), with_kwargs=True))
                parent = parents.get(name.rsplit(".", 1)[0]) if "." in name else None
                if parent is not None and isinstance(getattr(parent, "sampling_offsets", None), torch.nn.Module):
                    # The factors of the locations: the attention's reference points (an input)
                    # and its raw sampling_offsets projection (an output), kept when they
                    # rebuild the op's locations bit for bit (see _factors).
                    psig = inspect.signature(parent.forward)
                    reg(parent.register_forward_pre_hook(partial(self._on_attention, part, i, psig), with_kwargs=True))
                    reg(parent.sampling_offsets.register_forward_hook(partial(self._on_offsets, part, i)))
        return self

    # --- hooks ---
    def _on_detector(self, module, args, kwargs):
        if self._mine():
            self._batch = kwargs.get("batch")

    def _on_start(self, module, args, kwargs):
        if not self._mine():
            return
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
        batch = getattr(self, "_batch", None)
        self._batch = None
        self._pass = {"pixel_values": bound.get("pixel_values"), "pixel_mask": bound.get("pixel_mask"),
                      "batch": batch, "enc": {}, "dec": {}, "shapes": None, "bytes": 0, "left_out": [],
                      "factors": {}}

    def _on_attention(self, part, i, sig, module, args, kwargs):
        if self._mine() and self._pass is not None:
            a = sig.bind(*args, **kwargs).arguments
            self._pass["factors"][(part, i)] = {"references": a.get("reference_points"),
                                                "shapes": a.get("spatial_shapes")}
            if self._pass["shapes"] is None:
                self._pass["shapes"] = a.get("spatial_shapes")

    def _on_v2(self, part, i, module, args, kwargs, output):
        if not self._mine() or self._pass is None:
            return
        f = self._pass["factors"].pop((part, i), {})
        if f.get("offsets") is None or f.get("references") is None:
            return
        L = len(points_per_level(module))
        loc = to_levels(v2_locations(module, f["references"], f["offsets"], f["shapes"]), L)  # (B, Lq, M, L, P, 2)
        w = to_levels(output[1], L)  # the module returns the weights the function received
        self._record(part, i, loc, w, f["shapes"], factors=None)

    def _on_offsets(self, part, i, module, args, output):
        if self._mine() and self._pass is not None and (part, i) in self._pass["factors"]:
            self._pass["factors"][(part, i)]["offsets"] = output

    def _factors(self, part, i, loc, shapes) -> dict[str, torch.Tensor] | None:
        """{"offsets" (B, Lq, M, L, P, 2), "references" (B, Lq, L, 2 | 4)} when the official formula
        (``frames.sampling_locations``) rebuilds ``loc`` from them bit for bit, else None (a
        variant formula: the capture then keeps the locations themselves)."""
        f = self._pass["factors"].pop((part, i), {})
        ref, off = f.get("references"), f.get("offsets")
        if ref is None or off is None or ref.dim() != 4 or off.numel() != loc.numel():
            return None
        B, Lq, M, L, P, _ = loc.shape
        off = off.detach().view(B, Lq, M, L, P, 2)
        ref = ref.detach().expand(B, Lq, L, ref.shape[-1])  # RT-DETR passes one level, broadcast
        if loc.dtype != torch.float32 or not torch.equal(sampling_locations(ref, off, shapes, P), loc):
            return None
        return {"offsets": off, "references": ref}

    def _on_kernel(self, part, i, sig, module, args, kwargs):
        if not self._mine() or self._pass is None:
            return
        p = self._pass
        a = sig.bind(*args, **kwargs).arguments
        loc, w = a["sampling_locations"], a["attention_weights"]  # (B, Lq, M, L, P, 2), (B, Lq, M, L, P)
        self._record(part, i, loc, w, a["value_spatial_shapes"], factors=True)

    def _record(self, part, i, loc, w, shapes, factors: bool):
        """Store one call: locations (B, Lq, M, L, P, 2), weights (B, Lq, M, L, P), shapes (L, 2);
        ``factors``: try the reference / offset factors first (official formula only)."""
        p = self._pass
        p["shapes"] = shapes
        store = p["enc" if part == "encoder" else "dec"]
        if i in store:  # a second call of the same layer (e.g. a second forward inside the model)
            return
        itemsize = torch.finfo(self.dtype).bits // 8
        size = loc[0].numel() * itemsize + w[0].numel() * itemsize
        if self.max_bytes is not None and p["bytes"] + size > self.max_bytes and part == "encoder":
            p["left_out"].append(f"encoder layer {i} ({size / 1e6:.1f} MB): over max_bytes="
                                 f"{self.max_bytes / 1e6:g} MB; capture(..., max_bytes=None) keeps it")
            return
        p["bytes"] += size
        rec = {"weights": w.detach().to(self.dtype)}
        factors = self._factors(part, i, loc.detach(), p["shapes"]) if factors else None
        if factors is None:  # float32: the op's input itself
            rec["locations"] = loc.detach().to(torch.float32)
        else:  # as for our own model: offsets in ``dtype`` (exact in float32), references float32
            rec["offsets"] = factors["offsets"].to(self.dtype)
            rec["references"] = factors["references"].to(torch.float32)
        store[i] = rec

    def _on_end(self, module, args, kwargs, output):
        if not self._mine():
            return
        p, self._pass = self._pass, None
        if p is None or p["shapes"] is None:
            return
        with torch.no_grad():
            self.captures.extend(self._build(p, output, kwargs))
        self._calls += 1

    # --- per image ---
    def _images(self, p):
        """(sizes, orig_sizes, originals, prompt) from the detector's batch, or from the tensors
        when the model was called directly (then the original is the input rescaled to [0, 1])."""
        pv, pm = p["pixel_values"], p["pixel_mask"]
        B, _, H, W = pv.shape
        sizes = []
        for b in range(B):
            if pm is not None and self.family.uses_pixel_mask:
                sizes.append((int(pm[b, :, 0].sum()), int(pm[b, 0, :].sum())))
            else:
                sizes.append((H, W))
        batch: FamilyBatch | None = p["batch"]
        if batch is not None:
            return sizes, batch.orig_sizes, batch.originals, batch.prompt
        originals = []
        for b in range(B):
            x = pv[b, :, : sizes[b][0], : sizes[b][1]].float()
            originals.append((x - x.min()) / (x.max() - x.min()).clamp_min(1e-12))
        if self.detector is not None:
            names = self.detector.class_names
        else:  # a raw model: its config's label names (none for text-prompted families: "class k")
            id2label = getattr(self.hf.config, "id2label", None) or {}
            names = [] if self.family.text else [id2label.get(i, f"class {i}") for i in range(len(id2label))]
        return sizes, sizes, originals, Prompt(names)

    def _build(self, p, out, kwargs) -> list[Capture]:
        """One Capture per image of the pass ``p`` recorded, ``out`` being the model's output."""
        hf, fam = self.hf, self.family
        sizes, orig_sizes, originals, prompt = self._images(p)
        final_logits, final_boxes = final_prediction(out)
        if not prompt.names:
            prompt = Prompt([f"class {k}" for k in range(final_logits.shape[-1])], prompt.token_map)
        if self.detector is not None:
            cls_logits = partial(self.detector.class_logits, prompt=prompt)  # (B, Q, T) -> (B, Q, K)
        else:
            cls_logits = lambda t: t  # noqa: E731
        mask = kwargs.get("attention_mask")
        if mask is None and "input_ids" in kwargs:
            mask = torch.ones_like(kwargs["input_ids"])
        lo = fam.layer_outputs(hf, out, len(self.modules["decoder"]), {"attention_mask": mask})
        layers = [(None if lg is None else cls_logits(lg), bx, rf) for lg, bx, rf in zip(lo.logits, lo.boxes, lo.references)]
        logits = cls_logits(final_logits).float()
        dets = postprocess(logits, final_boxes.float(), orig_sizes, prompt.names, fam.top_k)
        shapes = p["shapes"].detach().cpu()
        pm = p["pixel_mask"].detach().cpu() if fam.uses_pixel_mask and p["pixel_mask"] is not None else None
        vr = valid_ratios(pm, shapes)  # (B | 1, L, 2)
        padded = tuple(p["pixel_values"].shape[-2:])
        strides = [max(1, round(padded[1] / int(w))) for _h, w in shapes.tolist()]
        stored = list(p["dec"].values()) + list(p["enc"].values())
        if stored:
            M, L, P = stored[0]["weights"].shape[-3:]  # (B, N, M, L, P)
        else:  # every layer refused (see left_out): no point layout to report
            M, L, P = int(getattr(hf.config, "decoder_attention_heads", 0)), int(shapes.shape[0]), 0
        Q, K = logits.shape[1:]
        left_out = self._left_out(p, lo)
        cfg = hf.config
        captures = []
        for b in range(len(sizes)):
            qsel = self._query_selection(Q, dets[b])
            arrays = self._image_arrays(p, b, qsel, layers, dets[b], shapes, None if pm is None else pm[b], Q, K)
            geometry = Geometry(shapes.numpy(), vr[min(b, vr.shape[0] - 1)].numpy(), sizes[b], padded,
                                orig_sizes[b], strides)
            notes = list(left_out)
            if len(qsel) < Q and p["dec"]:
                notes.append(f"decoder sampling of {Q - len(qsel)} of {Q} queries (queries={self.queries!r})")
            meta = {
                "variant": fam.model_type, "family": fam.model_type, "class_names": list(prompt.names),
                "num_classes": int(K), "n_heads": int(M), "n_levels": int(L), "n_points": int(P),
                "num_queries": int(Q), "enc_layers": len(self.modules["encoder"]), "dec_layers": len(layers),
                "d_model": int(getattr(cfg, "d_model", 0) or 0), "two_stage": bool(getattr(cfg, "two_stage", False)),
                "with_box_refine": bool(getattr(cfg, "with_box_refine", True)), "top_k": fam.top_k,
                "geometry": geometry.to_dict(), "dtype": DTYPES[self.dtype],
                "encoder_layers": sorted(p["enc"]), "decoder_layers": sorted(p["dec"]), "self_attention_layers": [],
                "queries": "all" if self.queries is None else self.queries if isinstance(self.queries, str) else "list",
                "max_bytes": self.max_bytes, "left_out": notes, "call": self._calls, "image_index": b,
            }
            image = (originals[b].detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
            captures.append(Capture(meta, arrays, image.permute(1, 2, 0).numpy()))
        return captures

    def _query_selection(self, Q: int, dets) -> np.ndarray:
        """The decoder queries whose sampling one image keeps (sorted indices)."""
        if self.queries is None:
            return np.arange(Q)
        if self.queries == "detections":
            return np.unique(dets.query_index.numpy())
        bad = [q for q in self.queries if not 0 <= q < Q]
        if bad:
            raise ValueError(f"capture(queries=...) asks for queries {bad}; the model has queries 0..{Q - 1}")
        return np.asarray(self.queries, dtype=np.int64)

    @staticmethod
    def _image_arrays(p, b: int, qsel: np.ndarray, layers, dets, shapes, mask, Q: int, K: int) -> dict[str, np.ndarray]:
        """Image ``b``'s arrays in the Capture layout (see ``Capture``); NaN where the model's
        output does not tell (per-layer predictions of some families)."""
        nan = lambda *shape: torch.full(shape, float("nan"))  # noqa: E731
        Lv = int(shapes.prod(1).sum())
        arrays = {"padding_mask": np.zeros(Lv, dtype=bool) if mask is None else _token_padding(mask, shapes)}
        for i, rec in p["enc"].items():
            for k, v in rec.items():
                arrays[f"enc/{i}/{k}"] = v[b].cpu().numpy().copy()
        qs = torch.as_tensor(qsel)
        for i, rec in p["dec"].items():
            for k, v in rec.items():
                arrays[f"dec/{i}/{k}"] = v[b].index_select(0, qs.to(v.device)).cpu().numpy()
        if p["dec"]:
            arrays["dec/query_index"] = qsel.astype(np.int64)
        for i, (lg, bx, rf) in enumerate(layers):
            arrays[f"layer/{i}/logits"] = (nan(Q, K) if lg is None else lg[b]).float().cpu().numpy()
            arrays[f"layer/{i}/boxes"] = (nan(Q, 4) if bx is None else bx[b]).float().cpu().numpy()
            arrays[f"layer/{i}/reference"] = (nan(Q, 2) if rf is None else rf[b]).float().cpu().numpy()
        arrays.update({"det/boxes": dets.boxes.numpy(), "det/scores": dets.scores.numpy(),
                       "det/labels": dets.labels.numpy(), "det/query_index": dets.query_index.numpy()})
        return arrays

    def _left_out(self, p, lo) -> list[str]:
        fam, cfg = self.family, self.hf.config
        out = list(p["left_out"]) + list(self._refused)
        if not self.modules["encoder"]:
            out.append(f"encoder sampling: {fam.title} has no deformable encoder")
        if any(x is None for x in lo.logits + lo.boxes + lo.references):
            out.append(f"per-layer boxes, scores or references of intermediate decoder layers: "
                       f"{fam.title}'s output holds only the last layer's (NaN in the capture)")
        if getattr(cfg, "two_stage", False):
            out.append("two-stage proposals: not recorded for transformers models")
        if self.note_self_attention:
            out.append(self.note_self_attention)
        return out


def _token_padding(mask: torch.Tensor, shapes: torch.Tensor) -> np.ndarray:
    """(Lv,) True at padding tokens: the image mask (H, W) (1 = image) resized to each level."""
    out = []
    for H, W in shapes.tolist():
        m = F.interpolate(mask[None, None].float(), size=(H, W))[0, 0].to(torch.bool)
        out.append(~m.flatten())
    return torch.cat(out).cpu().numpy()
