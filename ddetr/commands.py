"""Console commands of the ``ddetr`` package (``[project.scripts]`` in pyproject.toml).

A console script imports its target module before calling it, so a CLI module cannot set
process-wide options before torch is imported the way ``python -m ddetr.train`` does. These
launchers import nothing heavy: each asks for sleeping OpenMP threads (``ddetr/openmp.py``)
and only then imports and runs the CLI's ``main``.
"""
from __future__ import annotations

from .openmp import sleep_when_idle


def train(argv: list[str] | None = None):
    """``ddetr-train``: ``python -m ddetr.train``."""
    sleep_when_idle()
    from .train import main

    return main(argv)


def evaluate(argv: list[str] | None = None):
    """``ddetr-eval``: ``python -m ddetr.evaluate``."""
    sleep_when_idle()
    from .evaluate import main

    return main(argv)
