"""``python -m ops``: build the kernels if needed and report which implementation runs.

    python -m ops            # build (first time), then print availability
    python -m ops --rebuild  # retry builds that failed before (e.g. after installing g++)
    python -m ops --strict   # exit 1 unless every kernel this machine can use is available
"""
import argparse
import subprocess
import sys

import torch

import ops
from ops import build


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ops", description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="retry failed kernel builds")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if a usable device has no kernel")
    args = parser.parse_args()

    if args.rebuild:
        # `python -m ops` imported (and tried to load) the package already: forget the
        # recorded failures and start over in a fresh interpreter.
        build.forget_failures()
        return subprocess.call([sys.executable, "-m", "ops"] + (["--strict"] if args.strict else []))

    print(f"ms_deform_attn implementations (torch {torch.__version__}, "
          f"CUDA build {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}):")
    print("  reference    available (pure PyTorch, grid_sample; ops.ms_deform_attn_reference)")
    for kind, res in ops.KERNELS.items():
        state = "available" if res.ok else "unavailable"
        print(f"  {kind + '-kernel':<12} {state}: {res.detail}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("in use: " + ", ".join(f"{d} tensors -> {ops.implementation(d)}" for d in devices))
    if args.strict and any(ops.implementation(d) == "reference" for d in devices):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
