"""Capture: record every sampling point of every deformable attention while a context is open.

    with ddetr.capture(model) as cap:
        dets = model.predict([img1, img2])
    c = cap.captures[0]                      # one Capture per image, in predict order
    pts = c.decoder_points(layer=5, query=int(dets[0].query_index[0]))
    pts["image_px"], pts["weights"]          # (M, L, P, 2) original-image pixels, (M, L, P)
    c.save("cat.capture.npz"); c = Capture.load("cat.capture.npz")

Hooks sit on each ``SamplingCore`` (the op's exact inputs), on the decoder self-attention
(whose weights are recomputed from its inputs, so the model's own computation is untouched),
on the encoder (padding mask) and on the model (the batch in, the ``ModelOutput`` out). Each
hook reads its module's inputs by parameter name, checked when the capture opens. What the
model computed anyway (detections in original pixels, per-layer boxes, two-stage proposals,
level geometry) comes from its output, so capture recomputes nothing. Hooks exist only
while the context is open, and record only calls made by the thread that opened it, so two
captures in two threads never mix (design principle 8).

Storage. Per layer the capture keeps what the op consumed in factored form: the raw
``sampling_offsets`` output and the reference points, from which ``Capture.sampling``
rebuilds the locations with the function the model itself calls (``frames.sampling_locations``),
plus the attention weights. In float32 the rebuilt locations equal the op's input bit for
bit (tested); in float16 (the default) offsets keep ~0.01 level-pixel precision, much better
than float16 absolute locations would (~0.1 px). For the R50 models at 800x1333 one encoder layer is ~17.8 MB in float16 (~35 MB in
float32); the default ``max_bytes=100e6`` keeps the decoder, the self-attention and as many
encoder layers as fit, deepest first (4 of 6 at 800x1333), and lists the rest in
``Capture.left_out``; ``max_bytes=None, dtype=torch.float32`` keeps everything (~230 MB).
Recording takes ~0.4% of an R50 predict's CPU time and ~4% of the small model's, and nothing
once the context closed (``bench/capture.py``).
"""
from __future__ import annotations

import inspect
import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .capture_io import Capture, CaptureFileError
from .frames import Geometry
from .hook_session import DTYPES, HookSession
from .padding import valid_sizes

__all__ = ["capture", "CaptureSession", "Capture", "CaptureFileError", "Plan", "plan_capture"]


def capture(model, *, encoder: bool | Sequence[int] = True, decoder: bool | Sequence[int] = True,
            queries: None | str | Sequence[int] = None, self_attention: bool = True,
            dtype: torch.dtype = torch.float16, max_bytes: float | None = 100e6) -> "CaptureSession":
    """Open a capture on ``model`` (a ``DeformableDETR``); use as a context manager.

    encoder / decoder: True (all layers), False, or a list of layer indices.
    queries: None (all), "detections" (the queries behind the top-k detections) or indices;
        selects the decoder sampling and self-attention rows (every query's boxes and scores
        per layer are always kept: they are small).
    dtype: storage of offsets, weights and self-attention (float16 or float32); references,
        boxes and logits stay float32.
    max_bytes: per-image budget; what does not fit is left out and listed (None: no limit).
    ``model`` may also be a transformers detector of a supported family (``ddetr.hf_family``).
    """
    from .hf_family import FamilyCaptureSession, is_family_model
    if is_family_model(model):
        return FamilyCaptureSession(model, encoder=encoder, decoder=decoder, queries=queries,
                                    self_attention=self_attention, dtype=dtype, max_bytes=max_bytes)
    return CaptureSession(model, encoder=encoder, decoder=decoder, queries=queries,
                          self_attention=self_attention, dtype=dtype, max_bytes=max_bytes)


# ----------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """Which layers one forward pass stores, and what was left out and why."""

    encoder: list[int] = field(default_factory=list)
    decoder: list[int] = field(default_factory=list)
    self_attention: list[int] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    estimated_bytes: int = 0


def plan_capture(*, n_tokens: int, n_queries: int, n_selected: int, n_heads: int, n_levels: int,
                 n_points: int, n_classes: int, n_dec_layers: int, image_pixels: int,
                 encoder: list[int], decoder: list[int], self_attention: bool, itemsize: int,
                 max_bytes: float | None, two_stage: bool) -> Plan:
    """Greedy budget: fixed parts, then decoder sampling, self-attention, encoder deepest first.

    Sizes are per image; ``n_selected`` is the number of decoder queries kept.
    """
    MLP = n_heads * n_levels * n_points
    fixed = image_pixels * 3 + n_tokens  # image, padding mask
    fixed += n_dec_layers * n_queries * (n_classes + 4 + 4) * 4  # per-layer logits, boxes, references
    fixed += 200 * 8 * 4  # detections
    if two_stage:
        fixed += n_tokens * (4 * 4 + 4 + 1) + n_queries * 8
    items = [("decoder", i, n_selected * (MLP * 3 * itemsize + n_levels * 4 * 4)) for i in decoder]
    if self_attention:
        items += [("self_attention", i, n_heads * n_selected * n_queries * itemsize) for i in decoder]
    items += [("encoder", i, n_tokens * (MLP * 3 * itemsize + n_levels * 2 * 4)) for i in sorted(encoder, reverse=True)]
    plan = Plan(estimated_bytes=fixed)
    for kind, i, size in items:
        if max_bytes is None or plan.estimated_bytes + size <= max_bytes:
            getattr(plan, kind).append(i)
            plan.estimated_bytes += size
        else:
            plan.left_out.append(
                f"{kind.replace('_', '-')} layer {i} ({size / 1e6:.1f} MB): over max_bytes="
                f"{max_bytes / 1e6:g} MB; capture(..., max_bytes=None) keeps it")
    for kind in ("encoder", "decoder", "self_attention"):
        getattr(plan, kind).sort()
    if two_stage:
        plan.left_out.append("two-stage proposal logits of classes other than 0 (selection uses class 0)")
    return plan


# ----------------------------------------------------------------------------- recording
def self_attention_weights(mha: torch.nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                           key_padding_mask: torch.Tensor | None = None,
                           attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head attention weights (B, M, Q, S) that ``mha`` computes for query (B, Q, E) and
    key (B, S, E) (batch-first), recomputed from its projections so the module itself can
    keep its fused, weight-free path. Dropout (training only) is not applied."""
    if not mha.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    E, M = mha.embed_dim, mha.num_heads
    d = E // M
    if mha.in_proj_weight is not None:
        wq, wk = mha.in_proj_weight[:E], mha.in_proj_weight[E:2 * E]
    else:
        wq, wk = mha.q_proj_weight, mha.k_proj_weight
    bq = bk = None
    if mha.in_proj_bias is not None:
        bq, bk = mha.in_proj_bias[:E], mha.in_proj_bias[E:2 * E]
    B, Q, S = query.shape[0], query.shape[1], key.shape[1]
    q = F.linear(query, wq, bq).view(B, Q, M, d).transpose(1, 2)  # (B, M, Q, d)
    k = F.linear(key, wk, bk).view(B, S, M, d).transpose(1, 2)  # (B, M, S, d)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, M, Q, S)
    if attn_mask is not None:
        logits = logits.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
    return logits.softmax(-1)


class _Inputs:
    """A module call's arguments by the parameter names of its ``forward``, however the caller
    passed them (by position or keyword). The names a hook reads are checked when the capture
    opens: a renamed parameter is an error naming it, never a wrong tensor recorded in silence."""

    def __init__(self, module: torch.nn.Module, reads: tuple[str, ...]):
        self.signature = inspect.signature(module.forward)
        missing = [n for n in reads if n not in self.signature.parameters]
        if missing:
            raise TypeError(f"capture reads {missing} from {type(module).__name__}.forward{self.signature}, which "
                            "has no such parameters: ddetr/capture.py needs updating to the new signature")

    def __call__(self, args: tuple, kwargs: dict | None) -> dict[str, Any]:
        bound = self.signature.bind(*args, **(kwargs or {}))
        bound.apply_defaults()
        return bound.arguments


class _Pass:
    """What one forward pass recorded (batch tensors, still on the model's device)."""

    def __init__(self, images, mask, batch):
        self.images, self.mask, self.batch = images, mask, batch
        self.plan: Plan | None = None
        self.padding_mask = None
        self.enc: dict[int, dict[str, torch.Tensor]] = {}
        self.dec: dict[int, dict[str, torch.Tensor]] = {}
        self.self_attn: dict[int, torch.Tensor] = {}


def _layers(spec, n: int, what: str) -> list[int]:
    if spec is True:
        return list(range(n))
    if spec is False or spec is None:
        return []
    out = sorted({int(i) for i in spec})
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"{what} layers {bad} do not exist; the model has {what} layers 0..{n - 1}")
    return out


def _timed(hook):
    """Runs a hook only on the thread that opened the session, adding its wall time to
    ``session.seconds`` and its CPU time (this thread's) to ``session.cpu_seconds``. Hooks
    take ``*rest``: PyTorch snapshots a module's hooks before calling them, so a session
    closed by another thread mid-forward may still be called once, possibly without the
    kwargs flag it was registered with."""

    def wrapper(self, *args, **kwargs):
        if not self._mine():
            return None
        t, c = time.perf_counter(), time.thread_time()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t
            self.cpu_seconds += time.thread_time() - c

    return wrapper


class CaptureSession(HookSession):
    """The context manager returned by ``capture``; ``captures`` collects one ``Capture`` per
    image of every forward pass made in the opening thread while it was open."""

    def __init__(self, model, *, encoder, decoder, queries, self_attention, dtype, max_bytes):
        self.check_arguments(dtype, queries, max_bytes)
        if not hasattr(model, "transformer") or not hasattr(model, "cfg"):
            raise TypeError(f"capture needs a ddetr DeformableDETR, got {type(model).__name__}")
        self.model, self.dtype, self.max_bytes = model, dtype, max_bytes
        self.queries = queries if queries is None or isinstance(queries, str) else [int(q) for q in queries]
        t = model.transformer
        self.encoder = _layers(encoder, len(t.encoder.layers), "encoder")
        self.decoder = _layers(decoder, len(t.decoder.layers), "decoder")
        self.self_attention = bool(self_attention) and bool(self.decoder)
        self.captures: list[Capture] = []
        self._thread: int | None = None
        self._handles: list = []
        self._pass: _Pass | None = None
        self._calls = 0
        # Time spent inside the hooks (recording), for benchmarks: wall, and CPU time of the
        # recording thread (steady on a shared machine; all of it with one torch thread).
        self.seconds = self.cpu_seconds = 0.0

    # --- context ---
    def __enter__(self) -> "CaptureSession":
        if self._handles:
            raise RuntimeError("this capture is already open; create a new one with ddetr.capture(model)")
        m, t = self.model, self.model.transformer
        self._inputs = {  # what each hook reads, by name
            "model": _Inputs(m, ("images", "mask", "batch")),
            "encoder": _Inputs(t.encoder, ("src", "padding_mask")),
            "core": _Inputs(t.decoder.layers[0].cross_attn.core,
                            ("sampling_locations", "attention_weights", "reference_points", "offsets")),
            "self_attn": _Inputs(t.decoder.layers[0].self_attn, ("query", "key", "key_padding_mask", "attn_mask")),
        }
        self._thread = threading.get_ident()
        reg = self._handles.append

        def after(module, hook):
            reg(module.register_forward_hook(hook, with_kwargs=True))

        reg(m.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        after(m, self._on_model_end)
        reg(t.encoder.register_forward_pre_hook(self._on_encoder_start, with_kwargs=True))
        for i in self.encoder:
            after(t.encoder.layers[i].self_attn.core, partial(self._on_core, "enc", i))
        for i in self.decoder:
            after(t.decoder.layers[i].cross_attn.core, partial(self._on_core, "dec", i))
            if self.self_attention:
                after(t.decoder.layers[i].self_attn, partial(self._on_self_attn, i))
        return self

    # --- hooks (each wrapped by _timed: opening thread only) ---
    @_timed
    def _on_model_start(self, module, args, kwargs=None):
        x = self._inputs["model"](args, kwargs)
        self._pass = _Pass(x["images"], x["mask"], x["batch"])

    @_timed
    def _on_encoder_start(self, module, args, kwargs=None):
        if self._pass is None:
            return
        p, x = self._pass, self._inputs["encoder"](args, kwargs)
        p.padding_mask = x["padding_mask"]  # (B, Lv)
        cfg = self.model.cfg
        Lv = int(x["src"].shape[1])
        Q = self.model.transformer.query_count(Lv)
        if self.queries is None:
            n_sel = Q
        elif self.queries == "detections":
            n_sel = min(Q, cfg.top_k)
        else:
            n_sel = len(self.queries)
            bad = [q for q in self.queries if not 0 <= q < Q]
            if bad:
                raise ValueError(f"capture(queries=...) asks for queries {bad}; the model has queries 0..{Q - 1}")
        if p.batch is not None:
            pixels = max(h * w for h, w in p.batch.orig_sizes)
        else:
            pixels = int(p.images.shape[-1] * p.images.shape[-2])
        p.plan = plan_capture(
            n_tokens=Lv, n_queries=Q, n_selected=n_sel, n_heads=cfg.n_heads, n_levels=cfg.n_levels,
            n_points=cfg.n_points, n_classes=cfg.num_classes, n_dec_layers=cfg.dec_layers,
            image_pixels=pixels, encoder=self.encoder, decoder=self.decoder,
            self_attention=self.self_attention, itemsize=torch.finfo(self.dtype).bits // 8,
            max_bytes=self.max_bytes, two_stage=cfg.two_stage)

    @_timed
    def _on_core(self, part, i, module, args, *rest):
        if self._pass is None or self._pass.plan is None:
            return
        p = self._pass
        if i not in (p.plan.encoder if part == "enc" else p.plan.decoder):
            return
        x = self._inputs["core"](args, rest[0] if len(rest) == 2 else None)
        ref, off = x["reference_points"], x["offsets"]  # (B, Lq, L, 2|4), (B, Lq, M, L, P, 2)
        # No copy where the dtype already matches: these are fresh outputs of the layer's
        # projections that nothing modifies in place afterwards (the faithfulness test would
        # catch it: it recomputes the op from what the capture holds).
        rec = {"weights": x["attention_weights"].detach().to(self.dtype)}  # (B, Lq, M, L, P)
        if ref is None or off is None:  # a caller that did not pass the factors: keep the product
            rec["locations"] = x["sampling_locations"].detach().to(torch.float32)  # (B, Lq, M, L, P, 2)
        else:
            rec["offsets"] = off.detach().to(self.dtype)
            rec["references"] = ref.detach().to(torch.float32)
        (p.enc if part == "enc" else p.dec)[i] = rec

    @_timed
    def _on_self_attn(self, i, module, args, *rest):
        if self._pass is None or self._pass.plan is None:
            return
        p = self._pass
        if i not in p.plan.self_attention:
            return
        x = self._inputs["self_attn"](args, rest[0] if len(rest) == 2 else None)
        with torch.no_grad():
            w = self_attention_weights(module, x["query"], x["key"], x["key_padding_mask"], x["attn_mask"])
        p.self_attn[i] = w.to(self.dtype)

    @_timed
    def _on_model_end(self, module, args, *rest):
        p, self._pass, output = self._pass, None, rest[-1]
        if p is None or p.plan is None:
            return
        with torch.no_grad():
            self.captures.extend(_build_captures(self, p, output, self._calls))
        self._calls += 1


# ----------------------------------------------------------------------------- per image
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _own(t: torch.Tensor, batch: int) -> np.ndarray:
    """One image's slice as its own array: a view would keep the whole batch alive."""
    return _np(t.clone() if batch > 1 and t.device.type == "cpu" else t)


def _image_info(p: _Pass, cfg) -> tuple[list, list, list]:
    """(sizes, orig_sizes, originals) from the Batch, or from the tensors when the model was
    called directly (then the 'original' is the un-normalized input, scale 1)."""
    if p.batch is not None:
        return list(p.batch.sizes), list(p.batch.orig_sizes), list(p.batch.originals)
    mean = torch.tensor(cfg.pixel_mean, device=p.images.device).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std, device=p.images.device).view(3, 1, 1)
    sizes = [(h, w) for w, h in valid_sizes(p.mask).tolist()]
    originals = [(p.images[b, :, :h, :w] * std + mean).clamp(0, 1) for b, (h, w) in enumerate(sizes)]
    return sizes, sizes, originals


def _build_captures(session: CaptureSession, p: _Pass, out, call: int) -> list["Capture"]:
    """One ``Capture`` per image from what the hooks recorded and what the model returned
    (``ModelOutput``: detections, per-layer boxes, proposals, geometry); nothing is recomputed."""
    cfg, plan = session.model.cfg, p.plan
    B = p.images.shape[0]
    sizes, orig_sizes, originals = _image_info(p, cfg)
    dets = out.detections  # None only from a training-mode forward called without its batch
    layers = out.layers
    Q = out.logits.shape[1]
    captures = []
    for b in range(B):
        if session.queries is None:
            qsel = np.arange(Q)
        elif session.queries == "detections":
            qsel = np.unique(_np(dets[b].query_index)) if dets is not None else np.arange(0)
        else:
            qsel = np.unique(np.asarray(session.queries, dtype=np.int64))  # checked at encoder start
        qsel_t = None if len(qsel) == Q and (qsel == np.arange(Q)).all() else torch.as_tensor(qsel)

        def rows(t, dim=0):  # the selected queries of one image's tensor
            return _own(t, B) if qsel_t is None else _np(t.index_select(dim, qsel_t.to(t.device)))

        arrays: dict[str, np.ndarray] = {"padding_mask": _np(p.padding_mask[b])}
        for i, rec in p.enc.items():
            for k, v in rec.items():
                arrays[f"enc/{i}/{k}"] = _own(v[b], B)
        for i, rec in p.dec.items():
            for k, v in rec.items():
                arrays[f"dec/{i}/{k}"] = rows(v[b])
        for i, w in p.self_attn.items():
            arrays[f"dec/{i}/self_attention"] = rows(w[b], 1)  # (M, Qs, Q)
        if p.dec or p.self_attn:
            arrays["dec/query_index"] = qsel.astype(np.int64)
        for i, lo in enumerate(layers):
            arrays[f"layer/{i}/boxes"] = _np(lo.boxes[b].float())
            arrays[f"layer/{i}/logits"] = _np(lo.logits[b].float())
            arrays[f"layer/{i}/reference"] = _np(out.references[i][b].float())
        if dets is not None:
            d = dets[b]
            arrays.update({"det/boxes": _np(d.boxes), "det/scores": _np(d.scores), "det/labels": _np(d.labels),
                           "det/query_index": _np(d.query_index)})
        if out.enc is not None:
            arrays["proposals/boxes"] = _np(out.enc.boxes[b].float())
            arrays["proposals/scores"] = _np(out.enc.logits[b, :, 0].float().sigmoid())
            arrays["proposals/valid"] = _np(out.proposal_valid[b])
            arrays["proposals/index"] = _np(out.proposal_index[b])
        geometry = Geometry(_np(out.spatial_shapes), _np(out.valid_ratios[b].float()), sizes[b],
                            tuple(p.images.shape[-2:]), orig_sizes[b], out.strides)
        left_out = list(plan.left_out)
        if dets is None:
            left_out.append("detections: a training-mode forward without batch= makes none (call model.eval())")
        for part, asked in (("encoder", session.encoder), ("decoder", session.decoder)):
            if not asked:
                left_out.append(f"{part} sampling: not requested ({part}=False)")
        if len(qsel) < Q and (p.dec or p.self_attn):
            left_out.append(f"decoder sampling of {Q - len(qsel)} of {Q} queries (queries={session.queries!r})")
        queries = session.queries
        meta = {
            "variant": cfg.variant, "class_names": list(cfg.class_names), "num_classes": cfg.num_classes,
            "n_heads": cfg.n_heads, "n_levels": cfg.n_levels, "n_points": cfg.n_points,
            "num_queries": int(Q), "enc_layers": cfg.enc_layers, "dec_layers": cfg.dec_layers, "d_model": cfg.d_model,
            "two_stage": cfg.two_stage, "with_box_refine": cfg.with_box_refine, "top_k": cfg.top_k,
            "geometry": geometry.to_dict(), "dtype": DTYPES[session.dtype],
            "encoder_layers": sorted(p.enc), "decoder_layers": sorted(p.dec),
            "self_attention_layers": sorted(p.self_attn),
            "queries": "all" if queries is None else queries if isinstance(queries, str) else "list",
            "max_bytes": session.max_bytes, "left_out": left_out, "call": call, "image_index": b,
        }
        image = (originals[b].detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
        captures.append(Capture(meta, arrays, image.permute(1, 2, 0).numpy()))
    return captures
