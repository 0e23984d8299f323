"""Load a ``save_pretrained`` folder (or hub id) of a supported family as a ``FamilyDetector``.

The family is read from ``config.json``'s ``model_type``; the model class from its
``architectures`` entry (else the family's object-detection auto class); the image processor
from ``preprocessor_config.json`` and, for text-prompted families, the tokenizer from the
folder. ``from_pretrained`` is given the folder or the hub id itself, so a hub id downloads
where there is network and reads the local cache with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .detector import FamilyDetector
from .registry import NOT_SUPPORTED, family_of

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class FamilyLoadReport:
    """What ``load`` did; ``str()`` is the readable summary the app and CLIs print."""

    format: str
    source: str
    variant: str  # the model_type
    family: str  # its title
    num_classes: int
    label_source: str
    notes: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.format} checkpoint {self.source}",
                 f"  {self.family} ({self.variant}), run by transformers; class names: {self.label_source}"]
        if self.missing_keys:
            lines.append(f"  RANDOMLY INITIALIZED ({len(self.missing_keys)} tensors): {', '.join(self.missing_keys[:10])}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def config_of(source) -> dict | None:
    """config.json of a folder, a config.json path or (cache, then network) a hub id; None when
    ``source`` is none of these or holds no config."""
    src = str(source)
    path = Path(src).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir():
        f = path / "config.json"
        if not f.is_file():
            return None
        try:
            out = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return out if isinstance(out, dict) else None
    if path.exists() or not _HUB_ID.match(src) or src.endswith((".pth", ".pt", ".bin", ".safetensors")):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(src, "config.json")).read_text())
    except Exception:  # offline without a cache, unknown repo: the caller's loader reports it
        return None


def family_model_type(source) -> str | None:
    """The ``model_type`` of ``source`` when it is a supported family (or a known unsupported
    variant, so that ``load`` can say why), else None."""
    cfg = config_of(source)
    mt = (cfg or {}).get("model_type")
    return mt if family_of(mt) is not None or mt in NOT_SUPPORTED else None


def load_family(source, *, device="cpu", class_names=None, text=None, note: str | None = None, **ignored):
    """(FamilyDetector in eval mode, FamilyLoadReport) for a folder or hub id of a supported
    family. ``text``: a default prompt for open-vocabulary models."""
    from ..checkpoint import CheckpointError

    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{source}: a transformers checkpoint needs the transformers package "
                              "(pip install 'transformers>=5' timm)") from None

    src = str(source)
    path = Path(src).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    where = str(path) if path.exists() else src
    cfg = config_of(source)
    if cfg is None:
        raise CheckpointError(f"{src}: no config.json (a transformers save_pretrained folder or hub id is needed)")
    mt = cfg.get("model_type")
    if mt in NOT_SUPPORTED:
        raise CheckpointError(f"{src}: {mt} is not supported: it {NOT_SUPPORTED[mt]}")
    fam = family_of(mt)
    if fam is None:
        raise CheckpointError(f"{src}: model_type={mt!r} is not a supported family")
    variant, num_classes = ignored.pop("variant", None), ignored.pop("num_classes", None)
    ignored.pop("strict", None)  # transformers loads strictly here: missing tensors are refused below
    if ignored:
        raise CheckpointError(f"{src}: load() got {sorted(ignored)}, which a {fam.title} checkpoint does not take")
    if variant is not None and variant != mt:
        raise CheckpointError(f"{src}: variant={variant!r} was asked for, but the folder holds a {fam.title} ({mt}) model")
    archs = cfg.get("architectures") or []
    cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
    if cls is None:
        cls = transformers.AutoModelForZeroShotObjectDetection if fam.text else transformers.AutoModelForObjectDetection
    notes = [note] if note else []
    try:
        hf, info = cls.from_pretrained(where, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{src}: transformers could not load the {fam.title} model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]})") from None
    missing = list(info.get("missing_keys", []))
    if missing:
        raise CheckpointError(f"{src}: {len(missing)} tensors of the {fam.title} model are not in the file "
                              f"(e.g. {', '.join(missing[:5])}); they would stay random. Use a complete checkpoint.")
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{src}: no usable image processor ({str(e).splitlines()[0]}); save the model's "
                              "processor with it (processor.save_pretrained(folder))") from None
    tokenizer = None
    if fam.text:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(where)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{src}: {fam.title} needs its tokenizer ({str(e).splitlines()[0]}); save it "
                                  "with the model (tokenizer.save_pretrained(folder))") from None
    det = FamilyDetector(hf.eval(), fam, processor, tokenizer, class_names=class_names, default_text=text, source=src)
    if num_classes is not None and not fam.text and num_classes != len(det.class_names):
        raise CheckpointError(f"{src}: the model has {len(det.class_names)} classes, not num_classes={num_classes}")
    label_source = ("class_names argument" if class_names is not None else
                    "the text prompt" if fam.text else "config.json id2label")
    if unexpected := list(info.get("unexpected_keys", [])):
        notes.append(f"ignored {len(unexpected)} tensors: {', '.join(unexpected[:5])}")
    report = FamilyLoadReport("transformers", src, mt, fam.title, len(det.class_names), label_source, notes,
                              [], unexpected)
    return det.to(device).eval(), report
