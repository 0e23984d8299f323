"""What ``ddetr.load`` tells about a checkpoint: ``LoadReport``.

Besides what was loaded and how, a researcher wants to know which file exactly (size,
SHA-256), how it was stored (dtype), how big the model is, and how it was trained when the
file says so (epoch, step, learning rates, whether optimizer state is present). The variant is
named from the architecture, so the same weights carry the same name in every format.
"""
from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import PRESET_NAMES, DDETRConfig, preset, variant_name

# Fields that decide the tensors (and the computation): two configs equal on these are one
# architecture, whatever their class names, image sizes or dropout.
_ARCH_FIELDS = ("backbone", "backbone_width", "backbone_blocks", "backbone_block", "dilation", "d_model",
                "n_heads", "n_levels", "n_points", "enc_layers", "dec_layers", "dim_feedforward",
                "num_queries", "with_box_refine", "two_stage")
# Training arguments worth showing (official main.py, ddetr.train and mmdetection names).
_TRAIN_ARGS = re.compile(r"^(lr|lr_[a-z_]+|batch_size|weight_decay|epochs|clip_max_norm|warmup_steps|max_steps|seed)$")


def variant_of(cfg: DDETRConfig) -> str:
    """The preset whose architecture ``cfg`` has (e.g. "small"), else the official variant name
    its flags imply. The one name used for the same weights in every format."""
    for name in PRESET_NAMES:
        p = preset(name)
        if all(getattr(p, f) == getattr(cfg, f) for f in _ARCH_FIELDS):
            return name
    return variant_name(cfg)


def class_summary(cfg: DDETRConfig) -> str:
    """"8 classes (9 logits; id 0 unused)": placeholder names ("N/A", the official layout's
    ids that have no category) are counted, never shown as labels."""
    unused = [i for i, n in enumerate(cfg.class_names) if n == "N/A"]
    named = cfg.num_classes - len(unused)
    if not unused:
        return f"{named} classes"
    ids = ", ".join(map(str, unused[:8])) + (" ..." if len(unused) > 8 else "")
    return f"{named} classes ({cfg.num_classes} logits; id{'s' if len(unused) > 1 else ''} {ids} unused)"


@dataclass
class TrainingInfo:
    """Training state a checkpoint carries; None fields were not in the file."""

    source: str  # "official args" | "ddetr.train" | "mmdetection meta"
    epoch: int | None = None
    step: int | None = None
    optimizer_state: bool = False
    scheduler_state: bool = False
    args: dict = field(default_factory=dict)  # learning rates, batch size, ...

    def __str__(self) -> str:
        parts = [f"epoch {self.epoch}" if self.epoch is not None else None,
                 f"step {self.step}" if self.step is not None else None,
                 "optimizer state present" if self.optimizer_state else "no optimizer state",
                 "scheduler state present" if self.scheduler_state else None]
        text = ", ".join(p for p in parts if p)
        if self.args:
            text += "; " + ", ".join(f"{k} {v}" for k, v in sorted(self.args.items()))
        return f"{text} ({self.source})"


def _pick(args: dict) -> dict:
    return {k: v for k, v in args.items() if _TRAIN_ARGS.match(str(k)) and isinstance(v, (int, float, str))}


def training_info(raw) -> TrainingInfo | None:
    """From a loaded checkpoint object (before unwrapping its state dict)."""
    if not isinstance(raw, dict):
        return None
    opt = isinstance(raw.get("optimizer"), dict)
    if isinstance(raw.get("meta"), dict):  # mmdetection / mmengine
        m = raw["meta"]
        args = {}
        text = m.get("cfg") or m.get("config")
        if isinstance(text, str):
            for k in ("lr", "weight_decay", "max_epochs"):
                found = re.search(rf"\b{k}\s*=\s*([0-9.eE+-]+)", text)
                if found:
                    args[k] = float(found.group(1)) if k != "max_epochs" else int(float(found.group(1)))
        if m.get("epoch") is None and m.get("iter") is None and not args and not opt:
            return None
        return TrainingInfo("mmdetection meta", m.get("epoch"), m.get("iter"), opt,
                            "param_schedulers" in raw, args)
    if "train_args" in raw or "step" in raw:  # ddetr.train's resumable state
        return TrainingInfo("ddetr.train", raw.get("epoch"), raw.get("step"), opt, "scheduler" in raw,
                            _pick(raw.get("train_args") or {}))
    args = raw.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if "epoch" in raw or opt or isinstance(args, dict):
        return TrainingInfo("official args", raw.get("epoch"), None, opt, "lr_scheduler" in raw,
                            _pick(args if isinstance(args, dict) else {}))
    return None


def file_facts(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of one file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return path.stat().st_size, h.hexdigest()


def stored_dtypes(sd: dict[str, torch.Tensor]) -> str:
    """"float32" or "float16 (+ float32 for 3 tensors)": how the floating weights were stored."""
    counts: dict[str, int] = {}
    for v in sd.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            name = str(v.dtype).replace("torch.", "")
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return "no floating-point tensors"
    main = max(counts, key=counts.get)
    rest = [f"{k} for {n} tensor{'s' if n > 1 else ''}" for k, n in counts.items() if k != main]
    return main + (f" (+ {', '.join(rest)})" if rest else "")


def count_weights(model: torch.nn.Module) -> int:
    """Distinct weight values: parameters and frozen-norm affine buffers alike, running
    statistics excluded, so the same weights count the same however the norm is built."""
    seen, n = set(), 0
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen or not t.is_floating_point() or name.endswith(("running_mean", "running_var")):
            continue
        seen.add(id(t))
        n += t.numel()
    return n


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


@dataclass
class LoadReport:
    format: str  # "official" | "transformers" | "mmdetection" | "ddetr"
    source: str
    variant: str
    config: DDETRConfig
    num_classes: int
    label_source: str  # where the class names came from
    missing_keys: list[str] = field(default_factory=list)  # left at random init (strict=False only)
    unexpected_keys: list[str] = field(default_factory=list)  # in the file, not used (strict=False only)
    shared_heads: list[str] = field(default_factory=list)  # module groups that are one module
    notes: list[str] = field(default_factory=list)  # ambiguities, assumptions, ignored entries
    strict: bool = True
    file_size: int | None = None  # bytes of the weights file
    sha256: str | None = None  # of the weights file
    dtype: str | None = None  # how the floating weights were stored
    parameters: int | None = None  # distinct weight values (``count_weights``)
    training: TrainingInfo | None = None

    def __str__(self) -> str:
        c = self.config
        lines = [
            f"{self.format} checkpoint {self.source}",
            f"  variant {self.variant}: {c.n_levels} level(s), {c.n_heads} heads, {c.n_points} points, "
            f"{c.enc_layers}+{c.dec_layers} layers, d_model {c.d_model}, {c.num_queries} queries, "
            f"backbone {c.backbone}{' (DC5)' if c.dilation else ''}",
            f"  {class_summary(c)}; class names: {self.label_source}",
        ]
        facts = []
        if self.file_size is not None:
            facts.append(_size(self.file_size))
        if self.sha256:
            facts.append(f"SHA-256 {self.sha256[:16]}...")
        if self.dtype:
            facts.append(f"stored as {self.dtype}")
        if self.parameters is not None:
            facts.append(f"{self.parameters / 1e6:.2f} M parameters")
        if facts:
            lines.append("  file: " + ", ".join(facts))
        lines.append(f"  training: {self.training}" if self.training else "  training: no training state in the file")
        if self.shared_heads:
            lines.append("  shared heads: " + "; ".join(self.shared_heads))
        if self.missing_keys:
            lines.append(f"  RANDOMLY INITIALIZED ({len(self.missing_keys)} tensors): " + _first(self.missing_keys))
        if self.unexpected_keys:
            lines.append(f"  ignored ({len(self.unexpected_keys)} tensors): " + _first(self.unexpected_keys))
        if not self.missing_keys and not self.unexpected_keys:
            lines.append("  every tensor loaded" + (" (strict)" if self.strict else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _first(keys, n: int = 10) -> str:
    keys = list(keys)
    return ", ".join(map(str, keys[:n])) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")
