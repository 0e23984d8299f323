"""The OpenMP wait policy is a process setting of entry points: ``import ddetr`` leaves the
environment alone and imports no torch, and the CLIs set it before torch is imported."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_importing_ddetr_sets_nothing():
    out = _python("import os, sys, ddetr; ddetr.preset('small'); "
                  "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    assert out == "None False"


_RUN_MODULE = """
runpy.run_module("{target}", run_name="__main__", alter_sys=True)"""
_RUN_COMMAND = """
from ddetr import commands
sys.exit(commands.{target}(["--help"]))"""


@pytest.mark.slow  # a fresh interpreter imports torch and the CLI's dependencies
@pytest.mark.parametrize("how, target", [
    (_RUN_MODULE, "ddetr.train"), (_RUN_MODULE, "ddetr.evaluate"),  # python -m ...
    (_RUN_COMMAND, "train"), (_RUN_COMMAND, "evaluate"),  # the console commands ddetr-train / ddetr-eval
])
def test_cli_sets_it_before_torch(how, target):
    """Runs a CLI with ``--help``, recording whether torch was already loaded when the entry
    point asked for sleeping threads (too late if it was)."""
    code = f"""
import os, runpy, sys
import ddetr.openmp as o
calls, real = [], o.sleep_when_idle
o.sleep_when_idle = lambda: calls.append(real())
sys.argv = ["{target}", "--help"]
try:{how.format(target=target).replace(chr(10), chr(10) + "    ")}
except SystemExit:
    pass
print(calls, os.environ.get("OMP_WAIT_POLICY"))
"""
    assert _python(code) == "[True] PASSIVE"
