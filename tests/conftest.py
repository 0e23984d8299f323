"""Shared test setup: the repository on sys.path, and CPU threads that sleep when idle."""
import os
import sys
from pathlib import Path

# Before torch is imported anywhere: tests share 2 cores with each other's subprocesses, and
# spinning OpenMP teams slow everything down many times over (see ddetr/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
