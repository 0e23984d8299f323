"""Checkpoint diagnostics: symptoms of a Deformable DETR that did not (fully) train.

Four checks, each pointing at a real training problem:

* **offsets at initialization**: ``sampling_offsets`` still holds ``MSDeformAttn.reset_parameters``'
  values (weight 0, bias = the fixed ring of M directions x P distances). Every query then
  samples the same pattern around its reference: the layer was never trained (frozen by
  mistake, a learning-rate multiplier of 0 -- the official code scales the offsets' LR by 0.1
  via ``--lr_linear_proj_mult`` -- or weights that did not load).
* **near-uniform heads**: the softmax over L * P is almost flat (entropy close to log(L * P)).
  ``attention_weights`` starts at 0 (uniform); a head that stays there has learned nothing
  about *which* of its points matter.
* **points in padding / outside the image**: sampled values there are zero (the value is
  masked at padding, grid_sample pads with zeros), so attention mass there is wasted; a large
  share usually means offsets that diverged, or a model trained at another image size.
* **starved levels**: a feature level that receives almost no attention mass. The multi-scale
  model then behaves as a model with fewer levels, often from a broken input projection.

Parameter checks need only the model; the others read what a ``Capture`` recorded (the
tensors the op consumed), so they describe the model's behaviour on a real image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from .attention import MSDeformAttn

# A trained layer moves its offsets by several level pixels; float noise is far below 1e-4.
AT_INIT_REL = 1e-3  # relative change of the offsets below this: still at initialization
BARELY_MOVED_REL = 2e-2  # below this: moved, but hardly (warning)
# Normalized entropy H / log(L * P): 1 is uniform. Trained heads sit around 0.5 - 0.85.
UNIFORM_ENTROPY = 0.98
# Share of attention mass on points outside the valid image (weighted by attention).
PADDING_WARN, PADDING_PROBLEM = 0.3, 0.5
# A level whose mean attention mass is below this fraction of the uniform share 1 / L.
STARVED_LEVEL_FRACTION = 0.1
# Queries examined in the decoder: those behind the best detections (what a user looks at).
DECODER_QUERIES = 20

SEVERITIES = ("ok", "warning", "problem")


@dataclass
class Finding:
    """One result: ``check`` names the test, ``where`` the layer/head/level, ``value`` the number
    the verdict was based on, ``message`` what it means and what to do."""

    check: str  # "offsets_at_init" | "weights_at_init" | "uniform_heads" | "points_outside" | "starved_levels"
    severity: str  # "ok" | "warning" | "problem"
    where: str
    value: float
    message: str


@dataclass
class Diagnostics:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why

    def of(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def worst(self) -> str:
        return max((f.severity for f in self.findings), key=SEVERITIES.index, default="ok")

    def to_markdown(self) -> str:
        """A short verdict, then problems and warnings, then what passed and the notes."""
        icon = {"ok": "OK", "warning": "WARNING", "problem": "PROBLEM"}
        n_p, n_w = len(self.of("problem")), len(self.of("warning"))
        lines = [f"**Verdict: {icon[self.worst]}** ({n_p} problem(s), {n_w} warning(s), "
                 f"{len(self.of('ok'))} check(s) passed)", ""]
        for sev in ("problem", "warning", "ok"):
            for f in self.of(sev):
                lines.append(f"- **{icon[sev]}** `{f.check}` {f.where}: {f.message}")
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown().replace("**", "").replace("`", "")


# ----------------------------------------------------------------------------- the model
def _attention_modules(model: torch.nn.Module) -> list[tuple[str, MSDeformAttn]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MSDeformAttn)]


def _pretty(name: str) -> str:
    """"transformer.encoder.layers.2.self_attn" -> "encoder layer 2"."""
    parts = name.split(".")
    if "encoder" in parts and "layers" in parts:
        return f"encoder layer {parts[parts.index('layers') + 1]}"
    if "decoder" in parts and "layers" in parts:
        return f"decoder layer {parts[parts.index('layers') + 1]}"
    return name


def _layers(names: list[str], total: int) -> str:
    """Module names -> "all 6 attention layers" or "encoder layer 0, decoder layer 2"."""
    if len(names) == total and total > 1:
        return f"all {total} attention layers"
    return ", ".join(_pretty(n) for n in names)


@lru_cache(maxsize=16)
def initial_offset_bias(n_heads: int, n_levels: int, n_points: int) -> torch.Tensor:
    """The bias ``MSDeformAttn.reset_parameters`` gives ``sampling_offsets`` (M * L * P * 2,);
    taken from a freshly built module so this never drifts from the model's own init."""
    m = MSDeformAttn(d_model=n_heads, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
    return m.sampling_offsets.bias.detach().clone()


def offset_change(module: MSDeformAttn) -> float:
    """How far ``sampling_offsets`` moved from its init, relative to the init's size:
    (||W||_F + ||b - b0||) / ||b0||. For an input of norm ~sqrt(d) in a random direction
    ||W x|| is ~||W||_F, so this is the typical relative change of the predicted offsets."""
    b0 = initial_offset_bias(module.n_heads, module.n_levels, module.n_points)
    w = module.sampling_offsets.weight.detach().float().cpu()
    b = module.sampling_offsets.bias.detach().float().cpu()
    return float((w.norm() + (b - b0).norm()) / b0.norm())


def check_parameters(model: torch.nn.Module) -> list[Finding]:
    """Offsets and attention-weight projections compared with their initialization."""
    out = []
    mods = _attention_modules(model)
    changes = [(name, offset_change(m)) for name, m in mods]
    at_init = [n for n, c in changes if c < AT_INIT_REL]
    barely = [n for n, c in changes if AT_INIT_REL <= c < BARELY_MOVED_REL]
    if at_init:
        c = max(c for n, c in changes if n in at_init)
        out.append(Finding("offsets_at_init", "problem", _layers(at_init, len(changes)), c,
                           f"sampling offsets are still at their initialization (relative change <= {c:.1e}): "
                           "every query samples the same fixed ring of points. The layer was not trained "
                           "(frozen, zero learning rate for `sampling_offsets`) or its weights did not load."))
    if barely:
        c = max(c for n, c in changes if n in barely)
        out.append(Finding("offsets_at_init", "warning", _layers(barely, len(changes)), c,
                           f"sampling offsets barely moved from initialization (relative change <= {c:.1e}); "
                           "train longer or check the learning rate of `sampling_offsets`."))
    if not at_init and not barely and changes:
        lo = min(c for _, c in changes)
        out.append(Finding("offsets_at_init", "ok", f"all {len(changes)} attention layers", lo,
                           f"sampling offsets moved away from initialization (smallest relative change {lo:.2g})."))
    zero_w = []
    for n, m in mods:
        w, b = m.attention_weights.weight.detach(), m.attention_weights.bias.detach()
        if float(w.abs().max()) == 0.0 and float(b.abs().max()) == 0.0:
            zero_w.append(n)
    if zero_w:
        out.append(Finding("weights_at_init", "problem", _layers(zero_w, len(mods)), float(len(zero_w)),
                           "attention-weight projection is exactly zero (its initialization): every point gets "
                           "weight 1 / (L * P). The layer was never trained or did not load."))
    return out


# ----------------------------------------------------------------------------- a capture
def normalized_entropy(weights: np.ndarray) -> np.ndarray:
    """weights (..., L, P), summing to 1 over (L, P) -> (...,) entropy / log(L * P) in [0, 1]."""
    w = np.asarray(weights, dtype=np.float64).reshape(*weights.shape[:-2], -1)
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-12)  # float16 storage: renormalize
    h = -(w * np.log(np.clip(w, 1e-12, None))).sum(-1)
    return h / math.log(w.shape[-1]) if w.shape[-1] > 1 else np.zeros_like(h)


def outside_mass(locations: np.ndarray, weights: np.ndarray, valid_ratios: np.ndarray) -> tuple[float, float]:
    """Share of attention mass on points in padding and on points outside the padded map.

    locations (N, M, L, P, 2) op frame (x first, [0, 1] of each level's padded map);
    weights (N, M, L, P); valid_ratios (L, 2) as (w, h). A point is in the image when
    0 <= u <= valid_ratio on both axes; in padding when inside [0, 1] but not in the image;
    outside otherwise. Returns (padding share, outside share), each in [0, 1].
    """
    u = np.asarray(locations, dtype=np.float64)
    vr = np.asarray(valid_ratios, dtype=np.float64)[None, None, :, None, :]  # (1, 1, L, 1, 2)
    w = np.asarray(weights, dtype=np.float64)
    in_map = ((u >= 0) & (u <= 1)).all(-1)
    in_image = ((u >= 0) & (u <= vr)).all(-1)
    total = max(w.sum(), 1e-12)
    return float(w[in_map & ~in_image].sum() / total), float(w[~in_map].sum() / total)


def level_mass(weights: np.ndarray) -> np.ndarray:
    """weights (N, M, L, P) -> (L,) mean share of attention mass each level receives."""
    w = np.asarray(weights, dtype=np.float64)
    per = w.sum(-1)  # (N, M, L)
    per = per / np.maximum(per.sum(-1, keepdims=True), 1e-12)
    return per.mean((0, 1))


def _rows(capture, part: str, layer: int) -> tuple[dict, str]:
    """Sampling of the rows worth judging: valid encoder tokens / queries of the best detections."""
    if part == "encoder":
        valid = ~capture.arrays["padding_mask"].astype(bool)
        s = capture.sampling("encoder", layer)
        return {k: (v[valid] if v is not None else None) for k, v in s.items()}, f"{int(valid.sum())} image tokens"
    qi = capture.arrays["dec/query_index"]
    det_q = capture.arrays["det/query_index"]
    wanted = list(dict.fromkeys(int(q) for q in det_q[:DECODER_QUERIES]))
    pos = [int(np.flatnonzero(qi == q)[0]) for q in wanted if (qi == q).any()]
    if not pos:
        pos = list(range(len(qi)))
        desc = f"all {len(pos)} stored queries"
    else:
        desc = f"the queries of the {len(pos)} best detections"
    return capture.sampling("decoder", layer, np.asarray(pos)), desc


def check_capture(capture) -> tuple[list[Finding], list[str]]:
    """Heads, padding and levels, layer by layer, from what the capture stored."""
    findings, notes = [], []
    g = capture.geometry
    L = g.n_levels
    parts = [("encoder", i) for i in capture.encoder_layers] + [("decoder", i) for i in capture.decoder_layers]
    if not parts:
        notes.append("the capture holds no sampling data: heads, padding and levels were not checked")
    uniform_ok, pad_ok, level_ok, all_flat = [], [], [], []
    for part, layer in parts:
        s, desc = _rows(capture, part, layer)
        where = f"{part} layer {layer}"
        w = s["weights"]
        if w.shape[0] == 0:
            continue
        M = w.shape[1]
        if w.shape[-1] * w.shape[-2] > 1:
            ent = normalized_entropy(w).mean(0)  # (M,)
            flat = [m for m in range(M) if ent[m] > UNIFORM_ENTROPY]
            if len(flat) == M:
                all_flat.append((where, float(ent.mean())))
            elif flat:
                findings.append(Finding("uniform_heads", "warning", where, float(ent[flat].mean()),
                                        f"head(s) {', '.join(map(str, flat))} of {M} attend almost uniformly "
                                        f"(entropy {ent[flat].mean():.3f} of the maximum log(L*P), over {desc}): "
                                        "they do not pick out points."))
            else:
                uniform_ok.append(float(ent.max()))
        pad, out = outside_mass(s["locations"], w, g.valid_ratios)
        wasted = pad + out
        if wasted > PADDING_WARN:
            sev = "problem" if wasted > PADDING_PROBLEM else "warning"
            findings.append(Finding("points_outside", sev, where, wasted,
                                    f"{wasted:.0%} of the attention mass falls in padding ({pad:.0%}) or outside the "
                                    f"feature map ({out:.0%}) over {desc}, where sampled values are zero. Offsets "
                                    "may have diverged, or the model was trained at another image size."))
        else:
            pad_ok.append(wasted)
        if L > 1:
            mass = level_mass(w)
            starved = [lv for lv in range(L) if mass[lv] < STARVED_LEVEL_FRACTION / L]
            if starved:
                findings.append(Finding("starved_levels", "warning", where, float(mass[starved].min()),
                                        f"level(s) {', '.join(map(str, starved))} receive almost no attention "
                                        f"({', '.join(f'{mass[lv]:.1%}' for lv in starved)} of the mass; uniform would be "
                                        f"{1 / L:.0%}): the model ignores that scale. Check its input projection."))
            else:
                level_ok.append(float(mass.min()))
    if all_flat:
        e = min(v for _, v in all_flat)
        where = (f"all {len(parts)} captured layers" if len(all_flat) == len(parts) > 1
                 else ", ".join(w for w, _ in all_flat))
        findings.insert(0, Finding("uniform_heads", "problem", where, e,
                                   f"every head attends almost uniformly (normalized entropy >= {e:.3f}; 1 is "
                                   "uniform): no head picks out points. Typical of an untrained or collapsed model."))
    if uniform_ok:
        findings.append(Finding("uniform_heads", "ok", f"{len(uniform_ok)} layer(s)", max(uniform_ok),
                                f"no head is near-uniform (largest normalized entropy {max(uniform_ok):.2f})."))
    if pad_ok:
        findings.append(Finding("points_outside", "ok", f"{len(pad_ok)} layer(s)", max(pad_ok),
                                f"at most {max(pad_ok):.0%} of the attention mass falls outside the image."))
    if level_ok:
        findings.append(Finding("starved_levels", "ok", f"{len(level_ok)} layer(s)", min(level_ok),
                                f"every level receives attention (smallest share {min(level_ok):.1%})."))
    notes += [f"not checked: {s}" for s in capture.left_out if "layer" in s]
    return findings, notes


def diagnose(model: torch.nn.Module | None = None, capture=None) -> Diagnostics:
    """All checks that the inputs allow: parameters from ``model``, behaviour from ``capture``."""
    d = Diagnostics()
    if model is not None:
        d.findings += check_parameters(model)
    else:
        d.notes.append("no model given: parameter checks skipped")
    if capture is not None:
        f, n = check_capture(capture)
        d.findings += f
        d.notes += n
    else:
        d.notes.append("no capture yet: run the model on an image to check heads, padding and levels")
    return d
