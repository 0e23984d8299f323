"""Checkpoint diagnostics: named checks that locate known faults of a Deformable DETR.

Each check reads either the weights (no image needed) or ``AttentionStats`` aggregated over
several images (``ddetr.attention_stats``), never one image alone, and reports findings
located at (module, layer, head, level) that say what the symptom means and what to do.

Thresholds are calibrated, not guessed: ``scripts/calibrate_diagnostics.py`` measures every
signal on healthy checkpoints and on the same weights with each fault of ``ddetr.faults``
injected, over the ten example images (6 synthetic scenes, 4 photographs). Healthy: the
shipped model (held-out AP 0.766) and three fine-tunes of it on freshly generated scenes
(150 steps at lr 1e-4 seed 7, 150 steps at lr 5e-5 seed 8, and a training snapshot after 146
steps at lr 3e-4 with the offsets' learning rate x10, seed 9); all four get verdict "ok", the
12 injected faults are each named as a problem at their place, and an untrained model gets
"problem". The comment above each threshold gives the measured healthy range and fault
values; each threshold sits in the gap, "warning" on the healthy side, "problem" beyond.
The numbers are of the small architecture; other models (R50 at 800 px) were not measured.
"""
from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import torch

from .attention import MSDeformAttn
from .attention_stats import AttentionStats

# --- thresholds, each with the measurement it came from (scripts/calibrate_diagnostics.py) ---
# offsets_at_init: (||W||_F + ||b - b0||) / ||b0|| of sampling_offsets, smallest layer.
# Healthy 0.0118-0.0212; offsets reset (and untrained): exactly 0.
OFFSETS_PROBLEM, OFFSETS_WARNING = 1e-3, 4e-3
# uniform_heads: per-head mean normalized entropy (1 = uniform), largest head. Healthy
# 0.888-0.898; zeroed attention_weights (and untrained): 1.000.
UNIFORM_PROBLEM, UNIFORM_WARNING = 0.98, 0.95
# dead_heads: a head's value_proj rows / output_proj columns norm over the median head's,
# weakest head. Healthy 0.960-0.961 (xavier init: 0.979); zeroed value rows: 0.
DEAD_PROBLEM, DEAD_WARNING = 0.05, 0.3
# starved_levels: mean share of a layer's attention mass on one level, smallest. Healthy
# encoder 0.090-0.096, decoder 0.0010-0.0030 (decoder layer 0 barely reads level 3, yet the
# model scores AP 0.766; one image alone: >= 2.9e-4); logits pushed by -20: 1.2e-9 (encoder),
# 9.1e-8 (decoder).
STARVED_PROBLEM, STARVED_WARNING = 1e-5, 1e-4
# points_outside: share of attention mass on points in padding or outside the map, per part,
# largest layer. Encoder tokens near the border of the coarse levels always sample outside:
# healthy 0.459-0.499, untrained 0.331, offsets x20 in encoder layer 0: 0.948. Decoder queries
# sample around their objects: healthy 0.012-0.017, untrained 0.162, offsets x20: 0.768.
OUTSIDE = {"encoder": (0.8, 0.65), "decoder": (0.3, 0.1)}  # (problem, warning)
# level_embed_collapsed: smallest distance between two level embeddings / their mean norm.
# Healthy 1.302-1.303 (random normal init: 1.30); rows set to their mean: 0.
LEVEL_EMBED_PROBLEM, LEVEL_EMBED_WARNING = 0.05, 0.3
# references_saturated: share of a decoder layer's queries with a reference coordinate within
# 1e-3 of 0 or 1. Healthy 0.000; box head centre bias +30: 1.000.
SATURATED_PROBLEM, SATURATED_WARNING = 0.5, 0.1
# class_head_silent: best detection score over the images. Healthy 0.822-0.890; untrained
# 0.028 (the prior 0.01); class bias -20: 1.4e-8.
SILENT_PROBLEM, SILENT_WARNING = 0.1, 0.3

CALIBRATED_ON = "small"  # the architecture the numbers above were measured on
SEVERITIES = ("ok", "warning", "problem")
CHECKS = ("offsets_at_init", "uniform_heads", "dead_heads", "starved_levels", "points_outside",
          "level_embed_collapsed", "references_saturated", "class_head_silent")


@dataclass
class Finding:
    """One located result; the fields are the JSON contract of ``python -m ddetr.diagnose``."""

    check: str
    severity: str  # "ok" | "warning" | "problem"
    module: str  # "encoder" | "decoder" | "model"
    layer: int | None
    head: int | None
    level: int | None
    value: float  # the number the verdict is based on
    message: str  # what it means and what to do

    @property
    def where(self) -> str:
        if self.module == "model" and self.layer is None:
            return "model"
        parts = [self.module if self.layer is None else f"{self.module} layer {self.layer}"]
        parts += [f"head {self.head}"] if self.head is not None else []
        parts += [f"level {self.level}"] if self.level is not None else []
        return ", ".join(parts)


@dataclass
class Diagnostics:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why

    def of(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def worst(self) -> str:
        return max((f.severity for f in self.findings), key=SEVERITIES.index, default="ok")

    verdict = worst

    def to_json(self, checkpoint: str) -> dict:
        return {"checkpoint": checkpoint, "verdict": self.verdict,
                "findings": [dict(asdict(f), value=float(f.value)) for f in self.findings]}

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

    def to_html(self, title: str, report: str | None = None) -> str:
        """A self-contained page (no scripts, no external resources); ``report``: the loading
        report's text, shown under the findings."""
        colour = {"ok": "#2e7d32", "warning": "#b26a00", "problem": "#c62828"}
        rows = "".join(
            f"<tr><td style='color:{colour[f.severity]}'><b>{f.severity.upper()}</b></td><td><code>{f.check}</code></td>"
            f"<td>{html.escape(f.where)}</td><td>{f.value:.4g}</td><td>{html.escape(f.message)}</td></tr>"
            for sev in ("problem", "warning", "ok") for f in self.of(sev))
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;border-bottom:1px solid #ddd;"
                "vertical-align:top}table{border-collapse:collapse}</style></head><body>"
                f"<h1>Diagnostics: {html.escape(title)}</h1><p>Verdict: <b style='color:{colour[self.worst]}'>"
                f"{self.worst.upper()}</b></p><table><tr><th>severity</th><th>check</th><th>where</th><th>value</th>"
                f"<th>meaning</th></tr>{rows}</table><ul>{notes}</ul>"
                + (f"<h2>Checkpoint</h2><pre>{html.escape(report)}</pre>" if report else "") + "</body></html>")

    def __str__(self) -> str:
        return self.to_markdown().replace("**", "").replace("`", "")


def _grade(value: float, problem: float, warning: float, high_is_bad: bool) -> str:
    if high_is_bad:
        return "problem" if value >= problem else "warning" if value >= warning else "ok"
    return "problem" if value <= problem else "warning" if value <= warning else "ok"


# ----------------------------------------------------------------------------- the weights
def attention_modules(model: torch.nn.Module) -> list[tuple[str, int, MSDeformAttn]]:
    """(part, layer, module) of every deformable attention, encoder first. Other detectors
    (wrapped transformers families) are searched by module name: ``...encoder...layers.N...``."""
    t = getattr(model, "transformer", None)
    if t is not None and hasattr(t, "encoder") and hasattr(t, "decoder"):
        return ([("encoder", i, layer.self_attn) for i, layer in enumerate(t.encoder.layers)]
                + [("decoder", i, layer.cross_attn) for i, layer in enumerate(t.decoder.layers)])
    out = []
    for name, m in model.named_modules():
        found = re.search(r"(encoder|decoder)\.layers\.(\d+)\.", name + ".")
        if isinstance(m, MSDeformAttn) and found:
            out.append((found.group(1), int(found.group(2)), m))
    return sorted(out, key=lambda t: (t[0] != "encoder", t[1]))


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


def head_strength(module: MSDeformAttn) -> np.ndarray:
    """(M,) per head: the smaller of its value_proj rows' and output_proj columns' norms,
    each over the median head's. ~1 for trained and freshly initialized heads; 0 for a head
    whose values (or whose output) are zero."""
    M, D = module.n_heads, module.d_model // module.n_heads
    v = module.value_proj.weight.detach().float().cpu().view(M, D, -1).norm(dim=(1, 2))
    o = module.output_proj.weight.detach().float().cpu().view(-1, M, D).norm(dim=(0, 2))
    rel = [x / max(float(x.median()), 1e-12) for x in (v, o)]
    return torch.minimum(*rel).numpy()


def level_embed_spread(model: torch.nn.Module) -> float | None:
    """Smallest distance between two level embeddings over their mean norm (None: 1 level)."""
    e = getattr(getattr(model, "transformer", None), "level_embed", None)
    if not isinstance(e, torch.Tensor):
        return None
    e = e.detach().float().cpu()
    if e.shape[0] < 2:
        return None
    d = torch.cdist(e, e)[~torch.eye(e.shape[0], dtype=torch.bool)]
    return float(d.min() / max(float(e.norm(dim=1).mean()), 1e-12))


def check_parameters(model: torch.nn.Module) -> list[Finding]:
    """Weight checks: offsets_at_init, uniform_heads (zero projection), dead_heads,
    level_embed_collapsed."""
    out: list[Finding] = []
    mods = attention_modules(model)
    worst_offset, worst_head = float("inf"), float("inf")
    for part, i, m in mods:
        c = offset_change(m)
        worst_offset = min(worst_offset, c)
        sev = _grade(c, OFFSETS_PROBLEM, OFFSETS_WARNING, high_is_bad=False)
        if sev != "ok":
            out.append(Finding("offsets_at_init", sev, part, i, None, None, c,
                               f"sampling offsets {'are still at' if sev == 'problem' else 'barely moved from'} their "
                               f"initialization (relative change {c:.1e}; trained layers measure >= 0.0118): every query "
                               "samples the same fixed ring of points. The layer was not trained (frozen, zero learning "
                               "rate for `sampling_offsets`) or its weights did not load."))
        a = float(m.attention_weights.weight.detach().abs().max() + m.attention_weights.bias.detach().abs().max())
        if a == 0.0:
            out.append(Finding("uniform_heads", "problem", part, i, None, None, 1.0,
                               "the attention-weight projection is exactly zero (its initialization): every point gets "
                               "weight 1 / (L * P) in every head. The layer was never trained or did not load."))
        strength = head_strength(m)
        worst_head = min(worst_head, float(strength.min()))
        for h in range(len(strength)):
            sev = _grade(float(strength[h]), DEAD_PROBLEM, DEAD_WARNING, high_is_bad=False)
            if sev != "ok":
                out.append(Finding("dead_heads", sev, part, i, h, None, float(strength[h]),
                                   f"head {h}'s value projection (or its share of the output projection) has "
                                   f"{strength[h]:.0%} of the median head's norm: the head contributes "
                                   f"{'nothing' if sev == 'problem' else 'little'} to the layer's output, whatever it "
                                   "samples. Check for pruning or masking gone wrong, or weights that did not load."))
    if mods and not any(f.check == "offsets_at_init" for f in out):
        out.append(Finding("offsets_at_init", "ok", "model", None, None, None, worst_offset,
                           f"sampling offsets of all {len(mods)} attention layers moved from their initialization "
                           f"(smallest relative change {worst_offset:.3g})."))
    if mods and not any(f.check == "dead_heads" for f in out):
        out.append(Finding("dead_heads", "ok", "model", None, None, None, worst_head,
                           f"every head has value and output weights (weakest head {worst_head:.0%} of the median)."))
    spread = level_embed_spread(model)
    if spread is not None:
        sev = _grade(spread, LEVEL_EMBED_PROBLEM, LEVEL_EMBED_WARNING, high_is_bad=False)
        msg = (f"level embeddings are distinct (closest pair {spread:.2f} of their norm)." if sev == "ok" else
               f"level embeddings are (nearly) identical (closest pair {spread:.2g} of their norm): the encoder "
               "cannot tell which scale a token comes from. Check `transformer.level_embed` loaded and is trained.")
        out.append(Finding("level_embed_collapsed", sev, "encoder", None, None, None, spread, msg))
    return out


# ----------------------------------------------------------------------------- behaviour
def check_stats(stats: AttentionStats) -> list[Finding]:
    """Behaviour checks over the images folded into ``stats``: uniform_heads, starved_levels,
    points_outside, references_saturated, class_head_silent."""
    out: list[Finding] = []
    n = stats.images
    over = f"over {n} image(s)"
    max_ent, min_mass, max_out = 0.0, 1.0, 0.0
    for part, i in stats.keys():
        s = stats.layer(part, i)
        rows = "image tokens" if part == "encoder" else "queries of the best detections"
        ent = s["entropy"]
        if s["mass"].size > 1:
            max_ent = max(max_ent, float(ent.max()))
            flat = np.flatnonzero(ent >= UNIFORM_WARNING)
            # A whole layer is one finding (one cause: its projection), a few heads one each.
            for h in ([None] if len(flat) == len(ent) else flat):
                e = float(ent.min() if h is None else ent[h])
                sev = _grade(e, UNIFORM_PROBLEM, UNIFORM_WARNING, high_is_bad=True)
                who = "every head" if h is None else f"head {h}"
                out.append(Finding("uniform_heads", sev, part, i, None if h is None else int(h), None, e,
                                   f"{who} attends almost uniformly (normalized entropy {e:.3f}, 1 = uniform; "
                                   f"trained heads measure <= 0.90) {over}, {rows}: no point is picked out. The "
                                   "attention-weight projection is untrained, zeroed or did not load."))
        lm = s["level_mass"]
        if lm.size > 1:
            min_mass = min(min_mass, float(lm.min()))
            for lv in np.flatnonzero(lm <= STARVED_WARNING):
                sev = _grade(float(lm[lv]), STARVED_PROBLEM, STARVED_WARNING, high_is_bad=False)
                out.append(Finding("starved_levels", sev, part, i, None, int(lv), float(lm[lv]),
                                   f"level {lv} receives {lm[lv]:.1e} of the attention mass {over} (trained layers give "
                                   "every level >= 1e-3): the layer ignores that scale. Its attention logits for the "
                                   "level are pushed down (check `attention_weights` bias), or the level's input "
                                   "projection is broken."))
        wasted = float(s["wasted"].mean())
        max_out = max(max_out, wasted)
        sev = _grade(wasted, *OUTSIDE[part], high_is_bad=True)
        if sev != "ok":
            worst = int(np.argmax(s["wasted"]))
            out.append(Finding("points_outside", sev, part, i, None, None, wasted,
                               f"{wasted:.0%} of the attention mass falls in padding ({s['padding'].mean():.0%}) or "
                               f"outside the feature maps ({s['outside'].mean():.0%}) {over}, where sampled values are "
                               f"zero (worst head {worst}: {s['wasted'][worst]:.0%}; trained {part} layers waste "
                               f"<= {'50% (border tokens of the coarse levels)' if part == 'encoder' else '2%'}). The "
                               "offsets are too large: diverged training, a wrong offset scale, or a model run at "
                               "another image size."))
    if stats.keys():
        if not any(f.check == "uniform_heads" for f in out):
            out.append(Finding("uniform_heads", "ok", "model", None, None, None, max_ent,
                               f"every head picks out points (largest normalized entropy {max_ent:.2f}) {over}."))
        if not any(f.check == "starved_levels" for f in out):
            out.append(Finding("starved_levels", "ok", "model", None, None, None, min_mass,
                               f"every level receives attention in every layer (smallest share {min_mass:.1e}) {over}."))
        if not any(f.check == "points_outside" for f in out):
            out.append(Finding("points_outside", "ok", "model", None, None, None, max_out,
                               f"at most {max_out:.0%} of a layer's attention mass falls outside the image {over}."))
    sat = stats.saturation()
    for i, v in sat.items():
        sev = _grade(v, SATURATED_PROBLEM, SATURATED_WARNING, high_is_bad=True)
        if sev != "ok":
            out.append(Finding("references_saturated", sev, "decoder", i, None, None, v,
                               f"{v:.0%} of the queries entering decoder layer {i} have a reference coordinate at 0 or 1 "
                               f"{over}: the sigmoid is saturated, so the layer samples at the image border and box "
                               "refinement cannot move them back. Check the box head feeding this layer (its bias) or "
                               "the reference-point / proposal head."))
    if sat and not any(f.check == "references_saturated" for f in out):
        v = max(sat.values())
        out.append(Finding("references_saturated", "ok", "model", None, None, None, v,
                           f"reference points stay inside the image (at most {v:.0%} saturated) {over}."))
    if n:
        top = stats.top_score_max
        sev = _grade(top, SILENT_PROBLEM, SILENT_WARNING, high_is_bad=False)
        msg = (f"the class head fires (best score {top:.2f}) {over}." if sev == "ok" else
               f"the class head never fires: the best detection score {over} is {top:.2g} (trained models reach "
               "0.82-0.89 on the example images, an untrained one 0.03). The class head is untrained, its bias is pushed "
               "down, or the images are far from what the model was trained on.")
        last = max((i for p, i in stats.keys() if p == "decoder"), default=None)  # the layer that scores
        out.append(Finding("class_head_silent", sev, "decoder" if sev != "ok" else "model",
                           last if sev != "ok" else None, None, None, top, msg))
    return out


def check_capture(capture) -> tuple[list[Finding], list[str]]:
    """Behaviour checks of a single capture (prefer ``check_stats`` over several images)."""
    stats = AttentionStats()
    stats.add(capture)
    notes = ["judged on one image; `python -m ddetr.diagnose` aggregates over several"]
    notes += [f"not checked: {s}" for s in capture.left_out if "layer" in s]
    if not stats.keys():
        notes.append("the capture holds no sampling data: heads, padding and levels were not checked")
    return check_stats(stats), notes


def diagnose(model: torch.nn.Module | None = None, stats: AttentionStats | None = None) -> Diagnostics:
    """All checks that the inputs allow: weights from ``model``, behaviour from ``stats``
    (an ``AttentionStats`` or a single ``Capture``)."""
    d = Diagnostics()
    if model is not None:
        d.findings += check_parameters(model)
        from .checkpoint_report import variant_of

        if variant_of(model.cfg) != CALIBRATED_ON:
            d.notes.append(f"thresholds were calibrated on the {CALIBRATED_ON} architecture; on a "
                           f"{variant_of(model.cfg)} model treat warnings as hints (problems are faults that "
                           "leave no doubt: zeros, logits at -20, saturation)")
    else:
        d.notes.append("no model given: weight checks skipped")
    if stats is None:
        d.notes.append("no images run yet: heads, levels, padding, references and scores not checked")
        return d
    elif isinstance(stats, AttentionStats):
        d.findings += check_stats(stats)
    else:
        f, n = check_capture(stats)
        d.findings += f
        d.notes += n
    # A zero projection is reported by the weights; its uniform behaviour is the same finding.
    zero = {(f.module, f.layer) for f in d.findings if f.check == "uniform_heads" and f.head is None}
    seen, kept = set(), []
    for f in d.findings:
        key = (f.check, f.module, f.layer, f.head, f.level)
        if key in seen or (f.check == "uniform_heads" and f.head is not None and (f.module, f.layer) in zero):
            continue
        seen.add(key)
        kept.append(f)
    d.findings = kept
    return d


def measure(model: torch.nn.Module, images, *, progress=None) -> AttentionStats:
    """Run ``model`` on each image under a full float32 capture and fold it into stats.
    ``images``: an iterable of anything ``model.predict`` accepts (one at a time, so memory
    stays that of one capture)."""
    from .capture import capture

    stats = AttentionStats()
    for img in images:
        with capture(model, max_bytes=None, dtype=torch.float32) as s:
            model.predict(img)
        stats.add(s.captures[0])
        if progress is not None:
            progress()
    return stats


