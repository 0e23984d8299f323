"""The models a server offers: the startup model plus a folder of checkpoints, by name.

Models are loaded once and shared read-only by all sessions; model runs are serialized by a
per-model lock (the CPU is the bottleneck either way, and it keeps peak memory at one forward
pass). Paths never come from the page: the page names a checkpoint, the registry knows where
it lives.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .state import UserError

# Files the checkpoint loader knows (ddetr.checkpoint: ours .safetensors, official .pth, a
# transformers folder with config.json + weights).
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class LoadedModel:
    name: str
    model: object  # ddetr.DeformableDETR, eval mode, shared read-only
    report: object  # ddetr.checkpoint.LoadReport
    random_weights: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    runs: int = 0  # forward passes made (tests check that views never run the model)
    param_findings: list | None = None  # ddetr.diagnostics.check_parameters, computed once
    incomplete: bool = False  # opened "anyway": some tensors stayed randomly initialized

    @property
    def missing(self) -> list[str]:
        """Tensors left at random initialization (empty for a complete checkpoint)."""
        return [] if self.random_weights else list(getattr(self.report, "missing_keys", None) or [])


class IncompleteCheckpoint(UserError):
    """The checkpoint's tensors do not all fit the model; it opens only when the user asks."""


class ModelRegistry:
    """The checkpoints this server may open: the startup model plus those found in the
    configured directory, by name. Paths never come from the page: a name the registry does
    not know is refused. At most ``max_loaded`` models stay in memory."""

    def __init__(self, startup: LoadedModel, paths: dict[str, Path] | None = None, max_loaded: int = 2,
                 device: str = "cpu"):
        self.startup_name = startup.name
        self._paths = dict(paths or {})
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict({startup.name: startup})
        self._lock = threading.Lock()
        self.max_loaded, self.device = max(1, int(max_loaded)), device
        _freeze(startup.model)

    @property
    def names(self) -> list[str]:
        return [self.startup_name] + [n for n in self._paths if n != self.startup_name]

    def get(self, name: str, *, incomplete: bool = False) -> LoadedModel:
        """The model of checkpoint ``name``, loaded on first use. A checkpoint whose tensors do
        not all match the model raises ``IncompleteCheckpoint``; ``incomplete=True`` (the user's
        explicit "open anyway") then loads what fits and lists the rest in ``report.missing_keys``."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            if name not in self._paths:
                raise UserError(f"unknown checkpoint {name!r}; choose one of: {', '.join(self.names)}")
            path = self._paths[name]
        from ddetr import load  # also transformers detectors (ddetr.hf_family)  # imported late: loading is rare, the module is large

        try:
            with warnings.catch_warnings():  # the page's banner names the missing tensors
                warnings.simplefilter("ignore", UserWarning)
                model, report = load(path, device=self.device, strict=not incomplete)
        except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
            # The loader names the file by its path and its fix by an argument; the page shows
            # neither (a server path, a keyword no one can pass from a browser).
            msg = str(e).replace(str(path), name)
            if "strict=False" in msg:
                msg = msg[: msg.index("Pass strict=False")].rstrip(" .") if "Pass strict=False" in msg else msg
                raise IncompleteCheckpoint(f"checkpoint {name!r} does not fit the model: {msg}") from None
            raise UserError(f"cannot load checkpoint {name!r}: {msg}") from None
        _freeze(model)
        entry = LoadedModel(name, model, report, incomplete=bool(getattr(report, "missing_keys", None)))
        with self._lock:
            self._loaded[name] = entry
            while len(self._loaded) > self.max_loaded:
                oldest = next(k for k in self._loaded if k != name and k != self.startup_name)
                self._loaded.pop(oldest)
        return entry


def _freeze(model) -> None:
    """Shared read-only: eval mode and no parameter gradients (a gradient computation for one
    user must not accumulate ``.grad`` into weights every user reads)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def find_checkpoints(directory: str | os.PathLike) -> dict[str, Path]:
    """Checkpoints directly inside ``directory`` (files with a known suffix, and folders holding
    a transformers ``config.json``), by display name (the file or folder name), sorted."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise UserError(f"--checkpoint-dir {directory}: not a directory")
    out = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES:
            out[p.name] = p.resolve()
        elif p.is_dir() and (p / "config.json").is_file():
            out[p.name + "/"] = p.resolve()
    return out


