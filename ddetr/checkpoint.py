"""Load any supported Deformable DETR checkpoint in one call; save ours.

Formats (detected from the content, not the file name):

* official fundamentalvision/Deformable-DETR ``.pth``: ``{'model', 'optimizer', 'lr_scheduler',
  'epoch', 'args'}`` with an ``argparse.Namespace``, or a bare / ``{'model'}`` /
  ``{'state_dict'}`` state dict, ``module.`` prefixes stripped;
* Hugging Face ``transformers`` DeformableDetrForObjectDetection: a folder (or hub id) with
  ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``, v4 or v5 key names;
* ours: one ``.safetensors`` file whose metadata holds the config.

Pickles are read with ``weights_only=True`` allowing exactly one extra global,
``argparse.Namespace`` (the official ``args``); anything needing other code is refused. Nothing
is left at random initialization unless ``strict=False`` is asked for, and then the report
lists it.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import checkpoint_hf as hf
from . import checkpoint_official as official
from .config import PRESET_NAMES, DDETRConfig, variant_name
from .model import DeformableDETR

FORMAT_VERSION = "1"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, the problem and the fix."""


@dataclass
class LoadReport:
    format: str  # "official" | "transformers" | "ddetr"
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

    def __str__(self) -> str:
        c = self.config
        lines = [
            f"{self.format} checkpoint {self.source}",
            f"  variant {self.variant}: {c.n_levels} level(s), {c.n_heads} heads, {c.n_points} points, "
            f"{c.enc_layers}+{c.dec_layers} layers, d_model {c.d_model}, {c.num_queries} queries, "
            f"backbone {c.backbone}{' (DC5)' if c.dilation else ''}",
            f"  {self.num_classes} classes; class names: {self.label_source}",
        ]
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


# ------------------------------------------------------------------ reading files
def _sniff_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt") from None


def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # plain pickles
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"(?:Unsupported global|unsupported GLOBAL)[:\s]+(?:GLOBAL\s+)?([\w.]+)", msg, re.IGNORECASE)
        if m:
            raise CheckpointError(
                f"{path}: refusing to unpickle: the file needs arbitrary code (global {m.group(1)}) to load; "
                "only checkpoints with tensors, plain containers and argparse.Namespace are accepted. "
                "If you trust it, re-save just its state dict (torch.save(obj['model'], ...)) in a separate process."
            ) from None
        lines = [ln.strip() for ln in msg.splitlines()[1:]]
        detail = next((ln for ln in lines if ln and not ln.startswith(("Please file", "Check the doc"))), msg.splitlines()[0])
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint the safe unpickler can read ({detail}); "
            "it may be corrupt, or a pickle of something other than tensors and plain containers"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError ... for damaged files
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint or safetensors file ({type(e).__name__}: {first}); "
            "it may be truncated, corrupt, or not a checkpoint at all"
        ) from None


def _unwrap(obj, path: Path, notes: list[str]) -> tuple[dict, argparse.Namespace | None, dict | None]:
    """(state dict, official args, our config dict) from whatever torch.load returned; the
    config dict is what ``ddetr.train`` stores in its resumable training state."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    args = config = None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            rest = sorted(str(k) for k in obj if k not in (wrapper, "args", "config"))
            if rest:  # the official file also holds optimizer / lr_scheduler / epoch
                notes.append(f"read {wrapper!r} of the file; not used: {', '.join(rest)}")
            args, config = obj.get("args"), obj.get("config")
            obj = obj[wrapper]
            break
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    elif args is not None and not isinstance(args, argparse.Namespace):
        notes.append(f"ignored args of type {type(args).__name__}")
        args = None
    return obj, args, config if isinstance(config, dict) else None


def _clean(sd: dict, notes: list[str]) -> dict[str, torch.Tensor]:
    junk = [k for k, v in sd.items() if not isinstance(v, torch.Tensor) or str(k).endswith(("total_ops", "total_params"))]
    if junk:
        notes.append(f"ignored {len(junk)} non-tensor / profiler entries: {_first(junk, 5)}")
    sd = {str(k): v for k, v in sd.items() if k not in junk}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
        notes.append("stripped the 'module.' prefix (DistributedDataParallel)")
    return sd


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(out).__name__}")
    return out


def _hf_weights(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder}: has config.json but no weights; expected {' or '.join(_WEIGHT_FILES)} "
        "(sharded checkpoints: merge them first)"
    )


# ------------------------------------------------------------------ state dict -> model
def _alias_groups(model: torch.nn.Module) -> list[list[str]]:
    """Keys of the state dict that are one tensor (shared heads)."""
    by_id: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(v), []).append(k)
    return [ks for ks in by_id.values() if len(ks) > 1]


def _describe_shared(groups: list[list[str]]) -> list[str]:
    pairs: dict[str, list[int]] = {}
    out: list[str] = []
    for g in groups:
        parts = [k.split(".") for k in g]
        n = 0  # common suffix length: the tensor's name inside the module
        while all(len(p) > n + 1 for p in parts) and len({tuple(p[len(p) - n - 1:]) for p in parts}) == 1:
            n += 1
        mods = [".".join(p[:len(p) - n]) for p in parts]
        stems = {re.sub(r"\.\d+$", "", m) for m in mods}
        idx = sorted({int(m.rsplit(".", 1)[1]) for m in mods if re.search(r"\.\d+$", m)})
        if len(stems) == 1 and len(idx) == len(mods):
            text = f"{stems.pop()}.{idx[0]}-{idx[-1]} are one module"
        elif len(idx) == 1:
            pairs.setdefault(" = ".join(re.sub(r"\.\d+$", ".i", m) for m in mods), []).append(idx[0])
            continue
        else:
            text = " = ".join(mods)
        if text not in out:
            out.append(text)
    for text, ids in pairs.items():
        ids = sorted(set(ids))
        out.append(f"{text} (i = {ids[0]}-{ids[-1]})")
    return out


def _assign(model: DeformableDETR, sd: dict[str, torch.Tensor], strict: bool, where: str, notes: list[str]):
    """Load ``sd`` into ``model``; returns (missing, unexpected) — both empty when strict."""
    expected = model.state_dict()
    sd, in_file = dict(sd), len(sd)
    counters = [k for k in sd if k.endswith("num_batches_tracked") and k not in expected]
    for k in counters:  # frozen batch norm keeps no counter (torchvision / HF files may carry one)
        del sd[k]
    if counters:
        notes.append(f"ignored {len(counters)} num_batches_tracked counters (frozen batch norm has none)")
    differing = []
    for group in _alias_groups(model):
        present = [k for k in group if k in sd]
        if not present:
            continue
        ref = sd[present[0]]
        differing += [(present[0], k) for k in present[1:] if sd[k].shape != ref.shape or not torch.equal(sd[k], ref)]
        for k in group:
            sd[k] = ref
    if differing:
        # Official models share these modules (one head for all layers without refinement; the
        # decoder's refinement heads are the output heads). transformers 5 with
        # tie_word_embeddings=false unties them: such a model computes something else.
        msg = (f"{len(differing)} tensors that are one module in this architecture differ in the file "
               f"(e.g. {differing[0][0]} != {differing[0][1]}); the file does not follow the official weight sharing")
        if strict:
            raise CheckpointError(f"{where}: {msg}. Pass strict=False to load anyway with the first tensor of each group.")
        warnings.warn(f"{where}: {msg}; used the first tensor of each group")
        notes.append(msg + "; used the first tensor of each group, so outputs differ from the source's")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if (missing or unexpected or mismatched) and strict:
        lines = [f"{where}: does not fit a Deformable DETR {variant_name(model.cfg)} model "
                 f"({len(expected)} tensors expected, {in_file} in the file):"]
        if missing:
            lines.append(f"  missing {len(missing)}: {_first(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)}: {_first(unexpected)}")
        if mismatched:
            shapes = [f"{k} file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]
            lines.append(f"  shape mismatch {len(mismatched)}: {_first(shapes)}")
        lines.append("Pass strict=False to load what fits; the rest then stays randomly initialized and is listed in the report.")
        raise CheckpointError("\n".join(lines))
    dtypes = {str(v.dtype) for v in sd.values() if v.is_floating_point() and v.dtype != torch.float32}
    if dtypes:
        notes.append(f"weights stored as {', '.join(sorted(dtypes))} were cast to float32")
    for k in mismatched:
        del sd[k]
    model.load_state_dict(sd, strict=strict)
    missing = missing + mismatched
    if missing:
        warnings.warn(f"{where}: {len(missing)} tensors stay randomly initialized (strict=False): {_first(missing, 5)}")
    return missing, unexpected


# ------------------------------------------------------------------ the front door
def load(source, *, device="cpu", variant: str | None = None, num_classes: int | None = None,
         class_names=None, strict: bool = True) -> tuple[DeformableDETR, LoadReport]:
    """Build the model a checkpoint describes and load it; returns (model in eval mode, report).

    ``source``: a file, a transformers folder (or its config.json), or a hub id such as
    "SenseTime/deformable-detr". ``variant`` settles what the tensors cannot tell (DC5 vs
    single-scale) and is checked against the file. ``num_classes`` is checked against the
    class head; ``class_names`` (one per logit) replace the names the file implies.
    """
    src = str(source)
    if variant is not None and variant not in PRESET_NAMES:
        raise CheckpointError(f"variant={variant!r} is not one of {', '.join(PRESET_NAMES)}")
    path = Path(src).expanduser()
    notes: list[str] = []
    try:
        if not path.exists():
            if not _HUB_ID.match(src) or src.endswith((".pth", ".pt", ".bin", ".safetensors")):
                raise CheckpointError(f"{src}: no such file or folder")
            path = hf.from_hub(src)
        if path.is_file() and path.name == "config.json":
            path = path.parent
        fmt, cfg, sd, label_source = _read_any(path, variant, notes)
    except CheckpointError:
        raise
    except ValueError as e:  # format knowledge raised without the file name
        raise CheckpointError(f"{path}: {e}") from None
    if num_classes is not None and num_classes != cfg.num_classes:
        raise CheckpointError(
            f"{path}: the class head has {cfg.num_classes} logits, not num_classes={num_classes}; "
            "load without num_classes and replace the heads to fine-tune for another class count"
        )
    if class_names is not None:
        class_names = tuple(map(str, class_names))
        if len(class_names) != cfg.num_classes:
            raise CheckpointError(f"{path}: got {len(class_names)} class_names for {cfg.num_classes} class logits")
        cfg.class_names, label_source = class_names, "class_names argument"
    if variant is not None and variant not in (cfg.variant, variant_name(cfg)):
        raise CheckpointError(f"{path}: variant={variant!r} was asked for, but the file holds a {variant_name(cfg)} model")
    model = DeformableDETR(cfg)
    missing, unexpected = _assign(model, sd, strict, str(path), notes)
    report = LoadReport(fmt, src, cfg.variant, cfg, cfg.num_classes, label_source, missing, unexpected,
                        _describe_shared(_alias_groups(model)), notes, strict)
    return model.to(device).eval(), report


def _read_any(path: Path, variant: str | None, notes: list[str]):
    """(format, config, state dict in our keys, label source) for any supported source."""
    hf_cfg, hf_pre = None, {}
    if path.is_dir():
        if (path / "config.json").is_file():
            hf_cfg = _read_json(path / "config.json")
            if (path / "preprocessor_config.json").is_file():
                hf_pre = _read_json(path / "preprocessor_config.json")
            path = _hf_weights(path)
        else:
            found = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors", ".bin"))
            if len(found) != 1:
                raise CheckpointError(
                    f"{path}: folder holds {len(found)} checkpoint files and no config.json; pass a file, "
                    "or a transformers folder with config.json + model.safetensors / pytorch_model.bin"
                )
            path = found[0]
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes)")
    args, config, meta = None, None, {}
    if _sniff_safetensors(path):
        sd, meta = _read_safetensors(path)
    else:
        sd, args, config = _unwrap(_torch_load(path), path, notes)
    if meta.get("format") == "ddetr":
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: ddetr format version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION!r}")
        try:
            cfg = DDETRConfig.from_dict(json.loads(meta["config"]))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: ddetr metadata holds no readable config ({type(e).__name__}: {e})") from None
        return "ddetr", cfg, sd, "checkpoint config"
    sd = _clean(sd, notes)
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors")
    if hf_cfg is None and path.parent.joinpath("config.json").is_file() and hf.is_hf_state_dict(sd):
        hf_cfg = _read_json(path.parent / "config.json")
    if hf.is_hf_state_dict(sd):
        return hf.build_config(sd, hf_cfg, hf_pre, variant, notes)
    if official.looks_official(sd):
        if config is not None:  # a ddetr.train state: our whole config rides along
            return "official", DDETRConfig.from_dict(config), sd, "checkpoint config"
        return official.build_config(sd, args, variant, notes)
    hint = ""
    if hf.is_hf_base_model(sd):
        hint = " It is a transformers DeformableDetrModel, which has no detection heads; use DeformableDetrForObjectDetection weights."
    elif "fc.weight" in sd and "layer1.0.conv1.weight" in sd:
        hint = " It looks like a plain ResNet image classifier."
    raise CheckpointError(
        f"{path}: not a Deformable DETR checkpoint: none of its {len(sd)} tensors has an official "
        f"(transformer.*, backbone.0.body.*) or transformers (model.encoder.*, model.backbone.*) name; "
        f"first keys: {_first(sd, 5)}.{hint}"
    )


# ------------------------------------------------------------------ saving
def _canonical_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each shared tensor once (safetensors stores no aliases; load re-shares)."""
    sd = model.state_dict()
    for group in _alias_groups(model):
        for k in group[1:]:
            del sd[k]
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save(model: DeformableDETR, path, format: str = "ddetr", *, dtype: torch.dtype | None = None,
         metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as "ddetr" (one .safetensors with the config in its metadata),
    "official" (a .pth ``{'model': state_dict, 'args': Namespace}`` the official code loads) or
    "hf" (a folder transformers' ``from_pretrained`` loads). Writes atomically; returns the path.
    "ddetr" only: ``dtype`` stores the floating tensors in that type (float16 halves a file;
    ``load`` casts back to float32), ``metadata`` adds string entries (e.g. a training step)."""
    path = Path(path)
    if format != "ddetr" and (dtype is not None or metadata):
        raise ValueError(f"dtype and metadata apply to format='ddetr' only, not {format!r}")
    if format == "hf":
        path.mkdir(parents=True, exist_ok=True)
        backbone = "timm" if model.cfg.backbone == "resnet50" else "transformers ResNet"
        sd = hf.ours_to_hf(model.state_dict(), names="v4", backbone=backbone)
        sd = {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}
        (path / "config.json").write_text(json.dumps(hf.hf_config_dict(model.cfg), indent=2))
        c = model.cfg
        pre = dict(image_processor_type="DeformableDetrImageProcessor", format="coco_detection",
                   size=dict(shortest_edge=c.min_size, longest_edge=c.max_size),
                   image_mean=list(c.pixel_mean), image_std=list(c.pixel_std))
        (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
        _atomic(path / "model.safetensors", lambda p: save_file(sd, str(p), metadata={"format": "pt"}))
        return path
    if format == "ddetr":
        meta = {**(metadata or {}), "format": "ddetr", "format_version": FORMAT_VERSION,
                "config": model.cfg.to_json()}
        sd = _canonical_state_dict(model)
        if dtype is not None:
            sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        _atomic(path, lambda p: save_file(sd, str(p), metadata=meta))
    elif format == "official":
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        obj = {"model": sd, "args": official.official_args(model.cfg)}
        _atomic(path, lambda p: torch.save(obj, p))
    else:
        raise ValueError(f"format={format!r}; choose 'ddetr', 'official' or 'hf'")
    return path


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
