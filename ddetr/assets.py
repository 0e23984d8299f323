"""The files that ship with the project: the default model and the example images.

In a source checkout they live in ``examples/`` next to the ``ddetr`` package; ``pip install``
puts the same folder inside the package, as ``ddetr/examples/`` (pyproject.toml maps the
package ``ddetr.examples`` onto ``examples/``, so the 15 MB model is stored once)::

    import ddetr
    from ddetr.assets import default_checkpoint, example_dirs
    model, report = ddetr.load(default_checkpoint())
    images = sorted(example_dirs()["synthetic"].glob("*.png"))
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Source checkout first (an editable install also imports ddetr from there), then installed.
_CANDIDATES = (_PACKAGE.parent / "examples", _PACKAGE / "examples")
DEFAULT_CHECKPOINT_NAME = "default_model.safetensors"
EXAMPLE_GROUPS = ("synthetic", "photos")  # scenes for the shipped model; photos for COCO models


def examples_dir() -> Path:
    """The folder holding the shipped model and example images (it may lack either: a
    checkout without the model file, a trimmed install)."""
    for d in _CANDIDATES:
        if (d / DEFAULT_CHECKPOINT_NAME).is_file() or any((d / g).is_dir() for g in EXAMPLE_GROUPS):
            return d
    return _CANDIDATES[0]


def default_checkpoint(required: bool = True) -> Path | None:
    """Path of the shipped default model (the ``small`` preset trained on synthetic shapes).

    Missing, it raises FileNotFoundError saying how to get one, or returns None when
    ``required`` is False (callers that offer another choice, such as random weights)."""
    path = examples_dir() / DEFAULT_CHECKPOINT_NAME
    if path.is_file():
        return path
    if not required:
        return None
    raise FileNotFoundError(
        f"the default model {DEFAULT_CHECKPOINT_NAME} is not in {' or '.join(map(str, _CANDIDATES))}. "
        "In a git checkout restore it (`git checkout -- examples/`); otherwise reinstall the "
        "package, or pass a checkpoint of your own (official .pth, transformers folder or hub "
        "id, or ours .safetensors).")


def example_dirs() -> dict[str, Path]:
    """{group: folder} of the example images that exist: ``synthetic`` (scenes the default
    model was trained for) and ``photos`` (public-domain photographs for COCO models)."""
    root = examples_dir()
    return {g: root / g for g in EXAMPLE_GROUPS if (root / g).is_dir()}
