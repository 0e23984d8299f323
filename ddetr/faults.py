"""Known faults of a Deformable DETR, injected into a copy of a model.

Each function takes a model and a location and returns ``(faulty copy, Fault)``; the
original is untouched. ``Fault`` says which diagnostic check must name it and where. Used by
the fault-injection tests and ``scripts/calibrate_diagnostics.py`` to show that every fault
is named at the right place while healthy models pass.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .diagnostics import attention_modules, initial_offset_bias


@dataclass(frozen=True)
class Fault:
    """Where the diagnostics must report it: check, module, layer, head, level (None: any)."""

    check: str
    module: str
    layer: int | None = None
    head: int | None = None
    level: int | None = None

    @property
    def name(self) -> str:
        loc = [f"{self.module}{'' if self.layer is None else f' {self.layer}'}"]
        loc += [f"head {self.head}"] if self.head is not None else []
        loc += [f"level {self.level}"] if self.level is not None else []
        return f"{self.check} @ {', '.join(loc)}"


def _attn(model, part: str, layer: int):
    for p, i, m in attention_modules(model):
        if (p, i) == (part, layer):
            return m
    raise ValueError(f"{part} layer {layer} does not exist")


def _copy(model):
    return copy.deepcopy(model).eval()


@torch.no_grad()
def offsets_at_init(model, part: str = "encoder", layer: int = 0):
    """One layer's ``sampling_offsets`` reset to ``MSDeformAttn.reset_parameters``' values."""
    m = _copy(model)
    a = _attn(m, part, layer)
    a.sampling_offsets.weight.zero_()
    a.sampling_offsets.bias.copy_(initial_offset_bias(a.n_heads, a.n_levels, a.n_points))
    return m, Fault("offsets_at_init", part, layer)


@torch.no_grad()
def uniform_heads(model, part: str = "decoder", layer: int = 1):
    """One layer's attention-weight projection zeroed: a uniform softmax over L * P."""
    m = _copy(model)
    a = _attn(m, part, layer)
    a.attention_weights.weight.zero_()
    a.attention_weights.bias.zero_()
    return m, Fault("uniform_heads", part, layer)


@torch.no_grad()
def dead_heads(model, part: str = "encoder", layer: int = 1, head: int = 3):
    """One head's ``value_proj`` rows zeroed: the head samples zeros and outputs nothing."""
    m = _copy(model)
    a = _attn(m, part, layer)
    D = a.d_model // a.n_heads
    a.value_proj.weight[head * D:(head + 1) * D] = 0
    a.value_proj.bias[head * D:(head + 1) * D] = 0
    return m, Fault("dead_heads", part, layer, head=head)


@torch.no_grad()
def starved_levels(model, part: str = "encoder", layer: int = 2, level: int = 1, push: float = -20.0):
    """One level's attention logits pushed by ``push`` in every head of one layer."""
    m = _copy(model)
    a = _attn(m, part, layer)
    b = a.attention_weights.bias.view(a.n_heads, a.n_levels, a.n_points)  # a view: edits the parameter
    b[:, level] += push
    return m, Fault("starved_levels", part, layer, level=level)


@torch.no_grad()
def points_outside(model, part: str = "decoder", layer: int = 2, scale: float = 20.0):
    """One layer's sampling offsets scaled by ``scale``: the points leave the feature maps."""
    m = _copy(model)
    a = _attn(m, part, layer)
    a.sampling_offsets.weight.mul_(scale)
    a.sampling_offsets.bias.mul_(scale)
    return m, Fault("points_outside", part, layer)


@torch.no_grad()
def level_embed_collapsed(model):
    """Every level embedding replaced by their mean: the encoder cannot tell scales apart."""
    m = _copy(model)
    e = m.transformer.level_embed
    e.copy_(e.mean(0, keepdim=True).expand_as(e))
    return m, Fault("level_embed_collapsed", "encoder")


@torch.no_grad()
def references_saturated(model, layer: int = 1, push: float = 30.0):
    """The box head that feeds decoder ``layer`` gets +``push`` on its centre bias, so the
    layer's references saturate at 1. Needs iterative box refinement for layer >= 1
    (without it every layer reuses layer 0's references: pass layer=0)."""
    m = _copy(model)
    if layer == 0:
        if m.cfg.two_stage:  # proposals: the extra box head scoring encoder tokens
            head = m.bbox_embed[m.cfg.dec_layers].layers[-1]
        else:
            head = m.transformer.reference_points
        head.bias[:2] += push
    else:
        if not m.cfg.with_box_refine:
            raise ValueError("references of layers >= 1 come from box refinement, which this model does not use")
        m.bbox_embed[layer - 1].layers[-1].bias[:2] += push
    return m, Fault("references_saturated", "decoder", layer)


@torch.no_grad()
def class_head_silent(model, push: float = -20.0):
    """The last decoder layer's class bias pushed by ``push``: no class ever scores."""
    m = _copy(model)
    last = m.cfg.dec_layers - 1
    m.class_embed[last].bias += push
    return m, Fault("class_head_silent", "decoder", last)


ALL = (offsets_at_init, uniform_heads, dead_heads, starved_levels, points_outside, level_embed_collapsed,
       references_saturated, class_head_silent)


def inject_all(model) -> list[tuple[torch.nn.Module, Fault]]:
    """Every fault at its default location (box refinement assumed for references_saturated;
    layer 0 otherwise)."""
    out = []
    for f in ALL:
        if f is references_saturated and not model.cfg.with_box_refine:
            out.append(f(model, layer=0))
        else:
            out.append(f(model))
    # The other part too: encoder and decoder rows differ (border tokens vs object queries).
    out += [offsets_at_init(model, "decoder", 2), points_outside(model, "encoder", 0),
            starved_levels(model, "decoder", 0, level=0), dead_heads(model, "decoder", 0, head=5)]
    return out


def named(diagnostics, fault: Fault) -> bool:
    """True when ``diagnostics`` reports ``fault`` as a problem at its location."""
    for f in diagnostics.findings:
        if f.check != fault.check or f.severity != "problem" or f.module != fault.module:
            continue
        if all(want is None or got == want for want, got in
               ((fault.layer, f.layer), (fault.head, f.head), (fault.level, f.level))):
            return True
    return False
