"""The example images a server offers, by group and file name (the page names files, never paths)."""
from __future__ import annotations

from pathlib import Path

from ddetr.assets import EXAMPLE_GROUPS, examples_dir

EXAMPLE_DIRS = {g: examples_dir() / g for g in EXAMPLE_GROUPS}  # the checkout's or the installed copy
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def find_examples(dirs: dict[str, Path] | None = None) -> dict[str, dict[str, Path]]:
    """Example images by group, then name (the file name)."""
    out = {}
    for group, d in (dirs or EXAMPLE_DIRS).items():
        files = sorted(p for p in d.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
        out[group] = {p.name: p.resolve() for p in files}
    return out
