"""Inference precision: float32 everywhere ("fp32"), or bfloat16 where it is safe ("bf16").

In "bf16" the dense, compute-bound layers run in bfloat16: the backbone and the input
projections' convolutions (channels-last), and the encoder's value and output projections
and FFNs -- together some 85% of an R50 forward's arithmetic. Everything that locates or
scores a box stays float32: the residual stream and its LayerNorms, the sampling offsets and
attention-weight projections with their softmax, reference points and sampling locations,
the op (which reads float32 value rows and accumulates in float32), the whole decoder (300
queries: cheap, and its hidden states become boxes), the class and box heads, box decoding
and post-processing. Why: a bfloat16 number has 8 significant bits, so a location on a
167-pixel-wide level would be off by up to 0.3 level pixel, and a box corner on a 1333-pixel
image by several pixels; dense features tolerate that rounding, geometry does not.

Measured on random-weight R50 variants at 800x1333 (``python bench/r50_cpu.py --accuracy``,
``agreement``): multi_scale: sampling locations within 0.037 level px, the boxes of the same
queries within 0.97 px, fp32's top-100 detections matched one-to-one to bf16's within 1.04 px
(median 0.42), 98% the same top-100. With the decoder in bfloat16 too, boxes moved by 2.2 px.
Iterative box refinement (multi_scale_box_refine) is far more sensitive: boxes 5.2 px (matched:
median 2.9 px, 96% the same top-100), decoder locations 1.2 level px. Where that comes from
(measured with each region in turn kept float32): not from one region nor from an amplifier
in the box path, but from the encoder memory carrying bfloat16's 8-bit precision. The memory
differs from fp32 by a median 0.65% of its spread, 0.4% already at the encoder's input, and
flat across the six layers (the encoder does not amplify); each region alone kept float32
still leaves 4.3-6 px, the whole encoder float32 2.4 px, and fp32 arithmetic with only the
encoder's weights rounded to bfloat16 5.6 px. Weights split exactly into two bfloat16 halves
(hi + lo, twice the products) still leave 4.3 px (encoder) and 2.9 px (backbone too): the
activations' rounding alone suffices. The refining decoder is what needs that precision: each
of its six layers adds its head's delta to the box logit, so the errors of six deltas add
up (1.4 px after layer 0, 5.2 after layer 5), and a single rounding of the memory to
bfloat16, everything else float32, already moves boxes by 0.38 px. Within 1 px would need
the backbone and the encoder in float32, i.e. no bfloat16 speed-up; so the rule stays as
above and box-refinement models in "bf16" are a few pixels off at 1333 px (0.4%). The
random two-stage R50 is degenerate (every top-100 detection is the same saturated box, so
its 0.001 px agreement says nothing); it picks 52% of the same proposals.

The mechanism is explicit and opt-in. The model marks its bfloat16-safe regions with
``dense(x)``; a region computes in bfloat16 only while a thread has entered
``use("bf16")`` (``DeformableDETR.predict(precision=...)`` does), so a layer nobody marked
stays float32, and ``float32()`` opts a whole sub-network out. Inside a region
``torch.autocast`` does the casting (weights are cast once per region, results come out in
bfloat16); outside, a bfloat16 result meets float32 tensors and type promotion lifts the sum
back to float32. The setting is per thread (a ``ContextVar``), so two requests served at once
in different precisions never mix.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("ddetr_precision", default="fp32")


class PrecisionError(ValueError):
    """An unknown precision name, or one this device cannot run; the message says what to use."""


def check(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else a ``PrecisionError`` naming them."""
    if precision not in _DTYPES:
        raise PrecisionError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def bf16_speed_note(device: torch.device | str = "cpu") -> str | None:
    """None when ``device`` computes bfloat16 natively (fast), else why it will not be faster.

    On CPUs, PyTorch's bfloat16 convolutions and matrix products are fast with AVX-512 BF16
    or AMX; elsewhere they are emulated (correct, but slower than float32).
    """
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return None if ok else "this GPU has no native bfloat16 arithmetic (needs compute capability 8.0+)"
    if device.type == "cpu":
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return None
        return "this CPU has neither AVX-512 BF16 nor AMX: PyTorch emulates bfloat16, slower than float32"
    return f"bfloat16 speed on {device.type} devices is unknown"


@contextlib.contextmanager
def use(precision: str) -> Iterator[str]:
    """Run the marked dense regions of models called in this thread (and context) in
    ``precision`` until the block exits."""
    token = _CURRENT.set(check(precision))
    try:
        yield precision
    finally:
        _CURRENT.reset(token)


def float32() -> contextlib.AbstractContextManager:
    """A sub-network that runs in float32 whatever the precision (the decoder)."""
    return use("fp32")


def current() -> str:
    """The precision entered with ``use`` in this thread, "fp32" if none."""
    return _CURRENT.get()


def dense(like: torch.Tensor) -> contextlib.AbstractContextManager:
    """A region of dense layers that may compute in bfloat16: autocast on ``like``'s device
    when the current precision is "bf16", else nothing (float32 stays bit-identical)."""
    if _CURRENT.get() == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(like.device.type, dtype=_DTYPES[_CURRENT.get()])


@dataclass
class Agreement:
    """How far a model's "bf16" results are from its "fp32" results on one image."""

    encoder_level_px: float  # max |difference| of encoder sampling locations, level pixels
    decoder_level_px: float | None  # the same for the decoder (None: different two-stage queries)
    boxes_px: float | None  # max |difference| of the boxes of fp32's top-k queries, original pixels
    same_proposals: float  # two-stage: fraction of queries from the same encoder token (else 1)
    matched_px: float  # max |difference| of fp32's top-k detections and their matched bf16 ones, pixels
    matched_median_px: float  # the median over those detections of their largest coordinate difference
    matched_same_label: float  # fraction of fp32's detections whose matched bf16 detection has its label
    same_detections: float  # fraction of fp32's top-k (query, label) pairs also in bf16's top-k
    distinct_boxes: int  # distinct boxes (0.1 px grid) among fp32's top-k: 1 means a degenerate model

    @property
    def locations_level_px(self) -> float:
        """The larger of the encoder and (where compared) decoder differences."""
        return max(self.encoder_level_px, self.decoder_level_px or 0.0)


def match_detections(boxes_a: np.ndarray, labels_a: np.ndarray, boxes_b: np.ndarray, labels_b: np.ndarray):
    """One-to-one matching of detections A (N, 4) to B (M, 4), xyxy pixels, N <= M: Hungarian
    on the L1 box distance, with a label change costing more than any distance, so a match
    crosses labels only where it must. Returns (err (N,) the largest coordinate difference of
    each A box to its match, same_label (N,) bool)."""
    from scipy.optimize import linear_sum_assignment

    cost = np.abs(boxes_a[:, None] - boxes_b[None]).sum(-1)
    cost = cost + (labels_a[:, None] != labels_b[None]) * (cost.max() + 1.0) * 4
    rows, cols = linear_sum_assignment(cost)
    order = np.argsort(rows)
    rows, cols = rows[order], cols[order]
    return np.abs(boxes_a[rows] - boxes_b[cols]).max(-1), labels_a[rows] == labels_b[cols]


def agreement(model, image, low: str = "bf16") -> Agreement:
    """Run ``model.predict(image)`` in "fp32" and in ``low`` under a capture and compare every
    captured sampling location (in level pixels) and the final boxes, in original-image pixels,
    two ways: the boxes of the queries behind fp32's top-k detections in both runs (same
    queries), and fp32's top-k detections matched one-to-one to ``low``'s top-k detections
    (``match_detections``): what a user sees, whichever queries produced it.

    Two-stage models pick their queries by a top-k over encoder scores; when the two
    precisions pick differently (near-ties, common with random weights), the decoders hold
    different queries and mix them in self-attention, so the decoder's sampling and the
    same-query boxes are not compared (``decoder_level_px`` and ``boxes_px`` are None) and the
    matched detections are the comparison. Scores near the k-th one swap ranks between the
    precisions, so fp32's top k are matched among ``low``'s top 2k (``same_detections`` says
    how many are in both top k).
    """
    from .capture import capture  # capture imports the model's modules; keep this module light

    caps = {}
    for prec in ("fp32", low):
        with capture(model, dtype=torch.float32, max_bytes=None) as session:
            model.predict(image, precision=prec, top_k=2 * model.cfg.top_k)
        caps[prec] = session.last
    a, b = caps["fp32"], caps[low]
    same = 1.0
    if "proposals/index" in a.arrays:
        same = float((a.arrays["proposals/index"] == b.arrays["proposals/index"]).mean())

    def worst(part, layers):
        err = 0.0
        for i in layers:
            la = a.geometry.to_level(a.sampling(part, i)["locations"])
            lb = b.geometry.to_level(b.sampling(part, i)["locations"])
            err = max(err, float(np.abs(la - lb).max()))
        return err

    k = model.cfg.top_k
    boxes_a, labels_a = a.arrays["det/boxes"][:k], a.arrays["det/labels"][:k]
    err, same_label = match_detections(boxes_a, labels_a, b.arrays["det/boxes"], b.arrays["det/labels"])
    pairs = [set(zip(c.arrays["det/query_index"][:k].tolist(), c.arrays["det/labels"][:k].tolist())) for c in (a, b)]
    matched = dict(matched_px=float(err.max()), matched_median_px=float(np.median(err)),
                   matched_same_label=float(same_label.mean()), same_detections=len(pairs[0] & pairs[1]) / k,
                   distinct_boxes=len(np.unique(np.round(boxes_a * 10), axis=0)))
    if same < 1.0:
        return Agreement(worst("encoder", a.encoder_layers), None, None, same, **matched)
    q = a.arrays["det/query_index"][:k]
    last = model.cfg.dec_layers - 1
    h0, w0 = a.geometry.orig_size
    diff = np.abs(a.arrays[f"layer/{last}/boxes"][q] - b.arrays[f"layer/{last}/boxes"][q])
    return Agreement(worst("encoder", a.encoder_layers), worst("decoder", a.decoder_layers),
                     float((diff * np.array([w0, h0, w0, h0])).max()), same, **matched)
