"""Idle OpenMP threads that sleep: a process setting made by the project's entry points only.

PyTorch's CPU kernels run on OpenMP thread teams whose idle threads spin by default. On a
shared CPU (a 2-core training machine, a server answering several users) spinning teams fight
each other and every other process: measured on the 2-core machine this project trains on, a
training step took 4 s instead of 0.5 s, and the small model's forward 3 s instead of 0.1 s.
``OMP_WAIT_POLICY=PASSIVE`` makes them sleep. The OpenMP runtime reads the variable once, when
``import torch`` loads it, so only a program's entry point can set it, before torch is
imported: ``app.py``, ``python -m ddetr.train`` / ``ddetr.evaluate`` and their console
commands ``ddetr-train`` / ``ddetr-eval`` (``ddetr/commands.py``), the ``bench/`` scripts and
the tests do. Importing ``ddetr`` itself leaves the environment alone.
"""
from __future__ import annotations

import os
import sys


def sleep_when_idle() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy (``ACTIVE`` opts out).

    Returns whether it can still take effect: False once torch has been imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules
