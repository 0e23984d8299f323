"""A ``transformers`` detector behind our front door: ``predict(images, score_threshold=...,
text=...)`` -> ``Detections`` in original pixels that keep the index of each detection's query.

The wrapper owns the model and its image processor (resize, normalize, pad) and, for the
open-vocabulary families, the tokenizer. Post-processing is ours (``ddetr.postprocess``:
sigmoid, top-k over queries x classes, query index kept), applied to per-class logits; for
Grounding DINO a class is one phrase of the prompt and its logit the maximum over the phrase's
tokens (transformers thresholds tokens and decodes them instead, which loses the query).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..postprocess import Detections, postprocess
from ..preprocess import to_rgb_tensor
from .registry import Family, final_prediction, kernel_modules


@dataclass
class Prompt:
    """The classes of one forward: names (K,) and, for token-scored models, which prompt
    tokens belong to each name: token_map (K, T) bool over the model's text positions."""

    names: list[str]
    token_map: torch.Tensor | None = None


@dataclass
class FamilyConfig:
    """The facts of ``DDETRConfig`` that views and checks read, for a transformers model: heads,
    levels and points of its deformable attention, how many encoder / decoder layers hold one
    (0 encoder layers: no deformable encoder), the family, the class names (for text-prompted
    families: those of the last prompt)."""

    variant: str
    n_heads: int
    n_levels: int
    n_points: int
    enc_layers: int
    dec_layers: int
    class_names: tuple[str, ...]
    num_queries: int
    d_model: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _attention_facts(hf: nn.Module, parts) -> tuple[int, int, int]:
    """(heads, levels, points per level) of the first deformable attention."""
    modules = dict(hf.named_modules())
    for part in ("decoder", "encoder"):
        for _i, name, m in parts[part]:
            owner = m if hasattr(m, "sampling_offsets") else modules.get(name.rsplit(".", 1)[0], m)
            points = getattr(owner, "n_points", 0)
            points = max(points) if isinstance(points, (list, tuple)) else points
            return int(getattr(owner, "n_heads", 0)), int(getattr(owner, "n_levels", 0)), int(points)
    return 0, 0, 0


@dataclass
class FamilyBatch:
    """What ``prepare`` made of the images: the model inputs and what a capture needs to map
    back to the originals."""

    inputs: dict[str, torch.Tensor]  # pixel_values (B, 3, H, W), pixel_mask (B, H, W) 1 = image, text ids
    orig_sizes: list[tuple[int, int]]  # (h0, w0)
    originals: list[torch.Tensor]  # (3, h0, w0) float RGB in [0, 1]
    prompt: Prompt = field(default_factory=lambda: Prompt([]))


def phrases_of(text) -> list[str]:
    """"cat. remote control.", "cat, remote control" or ["cat", "remote control"] ->
    ["cat", "remote control"] (Grounding DINO's prompts end phrases with ".", OmDet-Turbo's
    processor splits on ",")."""
    if isinstance(text, str):
        parts = text.split(".") if "." in text else text.split(",")
    else:
        parts = [str(t) for t in text]
    out = [p.strip().lower() for p in parts if p.strip()]
    if not out:
        raise ValueError(f"text={text!r} names no class; give e.g. 'cat. dog.' or ['cat', 'dog']")
    return out


def phrase_token_map(tokenizer, phrases: list[str], n_positions: int) -> tuple[str, torch.Tensor]:
    """Grounding DINO's prompt "p1. p2." and the (K, n_positions) map of each phrase's tokens,
    found from the tokenizer's character offsets."""
    text, spans = "", []
    for p in phrases:
        spans.append((len(text), len(text) + len(p)))
        text += p + ". "
    text = text.strip()
    enc = tokenizer(text, return_offsets_mapping=True)
    token_map = torch.zeros(len(phrases), n_positions, dtype=torch.bool)
    for t, (a, b) in enumerate(enc["offset_mapping"][:n_positions]):
        if b <= a:  # special tokens
            continue
        for k, (s, e) in enumerate(spans):
            if a < e and b > s:
                token_map[k, t] = True
    empty = [phrases[k] for k in range(len(phrases)) if not token_map[k].any()]
    if empty:
        raise ValueError(f"prompt phrases {empty} fall beyond the model's {n_positions} text positions; "
                         "use fewer or shorter phrases")
    return text, token_map


class FamilyDetector(nn.Module):
    """A ``transformers`` detector of a supported family with our ``predict``.

    ``hf``: the ``*ForObjectDetection`` model; ``processor``: its image processor;
    ``tokenizer``: for text-prompted families; ``class_names``: the label names of a fixed
    vocabulary (from ``config.id2label``); ``default_text``: the prompt used when ``predict``
    gets none (text families).
    """

    def __init__(self, hf: nn.Module, family: Family, processor, tokenizer=None, class_names=None,
                 default_text=None, source: str = ""):
        super().__init__()
        self.hf, self.family, self.processor, self.tokenizer = hf, family, processor, tokenizer
        self.source = source
        if class_names is None:
            id2label = getattr(hf.config, "id2label", None) or {}
            class_names = [id2label.get(i, id2label.get(str(i), f"class {i}")) for i in range(len(id2label))]
        self._class_names = list(class_names)
        self.default_text = default_text
        if family.text is not None and tokenizer is None:
            raise ValueError(f"a {family.title} model needs its tokenizer (text prompts); load the folder "
                             "with its tokenizer files or pass tokenizer=")
        parts = kernel_modules(hf)
        self.has_encoder = bool(parts["encoder"])
        M, L, P = _attention_facts(hf, parts)
        c = hf.config
        self.cfg = FamilyConfig(family.model_type, M, L, P, len(parts["encoder"]), len(parts["decoder"]),
                                tuple(self._class_names), int(getattr(c, "num_queries", 0) or 0),
                                int(getattr(c, "d_model", 0) or 0))
        self.train(hf.training)  # a new nn.Module is in training mode; keep the model's own mode

    # --- facts the explorer and captures read ---
    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def variant(self) -> str:
        return self.family.model_type

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def needs_text(self) -> bool:
        return self.family.text is not None

    # --- pipeline ---
    def prompt(self, text) -> tuple[Prompt, dict[str, torch.Tensor]]:
        """The classes and the text inputs for one prompt (text families only)."""
        if text is None:
            text = self.default_text
        if text is None:
            raise ValueError(f"{self.family.title} detects what a text prompt names: pass text='cat. dog.' "
                             "(or a list of class names)")
        names = phrases_of(text)
        if self.family.text == "phrases":
            n_pos = int(self.hf.config.max_text_len)
            joined, token_map = phrase_token_map(self.tokenizer, names, n_pos)
            enc = self.tokenizer([joined], return_tensors="pt", padding="longest")
            return Prompt(names, token_map), dict(enc)
        # "classes": one tokenized entry per class plus a task sentence, as OmDetTurboProcessor
        # builds them (CLIP's 77 positions at most)
        n = min(77, int(getattr(self.hf.config.text_config, "max_position_embeddings", 77)))
        kw = dict(return_tensors="pt", padding="max_length", truncation=True, max_length=n)
        cls = self.tokenizer(names, **kw)
        task = self.tokenizer([f"Detect {', '.join(names)}."], **kw)
        return Prompt(names), {"classes_input_ids": cls["input_ids"], "classes_attention_mask": cls["attention_mask"],
                               "tasks_input_ids": task["input_ids"], "tasks_attention_mask": task["attention_mask"],
                               "classes_structure": torch.tensor([len(names)])}

    def prepare(self, images, text=None) -> FamilyBatch:
        """Convert images (one or a list; PIL, numpy, tensors) and the prompt into model inputs."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("predict needs at least one image")
        originals = [to_rgb_tensor(im) for im in images]  # (3, h0, w0) in [0, 1]
        arrays = [(o.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for o in originals]
        enc = self.processor(images=arrays, return_tensors="pt")
        inputs = {"pixel_values": enc["pixel_values"]}
        if "pixel_mask" in enc:
            inputs["pixel_mask"] = enc["pixel_mask"]
        prompt = Prompt(self.class_names)
        if self.needs_text:
            prompt, text_inputs = self.prompt(text)
            self.cfg.class_names = tuple(prompt.names)
            B = len(images)
            for k, v in text_inputs.items():
                if k == "classes_structure":
                    inputs[k] = v.repeat(B)
                elif k.startswith("classes_"):
                    inputs[k] = v.repeat(B, 1)
                else:
                    inputs[k] = v.expand(B, -1).contiguous()
        elif text is not None:
            raise ValueError(f"{self.family.title} has a fixed vocabulary ({len(self.class_names)} classes); "
                             "it takes no text prompt")
        dev = self.device
        inputs = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(next(self.hf.parameters()).dtype)
        return FamilyBatch(inputs, [tuple(o.shape[-2:]) for o in originals], originals, prompt)

    def forward(self, *, batch: FamilyBatch):
        """The model's raw output for a prepared batch (captures hook this call)."""
        return self.hf(**batch.inputs)

    def class_logits(self, logits: torch.Tensor, prompt: Prompt) -> torch.Tensor:
        """(B, Q, T) raw logits -> (B, Q, K) one logit per class name (phrase: its best token)."""
        if prompt.token_map is None:
            return logits
        tm = prompt.token_map.to(logits.device)  # (K, T)
        T = min(tm.shape[1], logits.shape[-1])
        masked = logits[..., None, :T].masked_fill(~tm[None, None, :, :T], float("-inf"))  # (B, Q, K, T)
        return masked.amax(-1)

    @torch.inference_mode()
    def predict(self, images, score_threshold: float = 0.0, top_k: int | None = None, text=None) -> list[Detections]:
        """One ``Detections`` per image: boxes xyxy in original pixels, scores, labels, label
        names and the query behind each; top-k over queries x classes, then thresholded.
        ``text``: the prompt of open-vocabulary families ("cat. dog." or ["cat", "dog"])."""
        was_training = self.training
        self.eval()
        try:
            batch = self.prepare(images, text)
            out = self(batch=batch)
        finally:
            self.train(was_training)
        return self.detections(out, batch, top_k or self.family.top_k, score_threshold)

    def detections(self, out, batch: FamilyBatch, top_k: int, score_threshold: float = 0.0) -> list[Detections]:
        logits, boxes = final_prediction(out)
        return postprocess(self.class_logits(logits, batch.prompt).float(), boxes.float(), batch.orig_sizes,
                           batch.prompt.names, top_k, score_threshold)

    def __repr__(self) -> str:
        return f"FamilyDetector({self.family.title}, {type(self.hf).__name__}, source={self.source!r})"
