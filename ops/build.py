"""Build (once) and load the op's C++ and CUDA kernels with torch's JIT extension builder.

Two shared libraries, loaded with ``torch.ops.load_library`` (no Python bindings):

* ``cpu``: ``csrc/ms_deform_attn_cpu.cpp``. Defines the ``ddetr_ops`` op schemas
  (``TORCH_LIBRARY``) and the CPU kernels. Always attempted.
* ``cuda``: ``csrc/ms_deform_attn_cuda.cu``. Adds the CUDA kernels
  (``TORCH_LIBRARY_IMPL(ddetr_ops, CUDA)``). Attempted when a GPU and a CUDA toolkit exist.

Each build lives in ``<root>/<kind>-<key>/`` (``default_build_root``: ``ops/_build`` in a
source checkout, a per-user cache for an installed package) where ``key`` hashes everything
the binary depends on (sources, flags, compiler, torch and Python versions, CPU features,
CUDA archs).
A library that already exists is loaded directly, without importing the builder or running
ninja, so importing a built package is fast and silent. Concurrent first imports are
serialized by an OS lock (released by the kernel if the holder dies, so a killed build never
deadlocks the next one). A failed compile is remembered in the build directory, so later
imports fall back to the reference at once; ``python -m ops --rebuild`` retries.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = {"cpu": ["ms_deform_attn_cpu.cpp"], "cuda": ["ms_deform_attn_cuda.cu"]}
HEADERS = ["ms_deform_attn_math.h", "ms_deform_attn_checks.h", "ms_deform_attn_cpu_avx512.h"]
# -march=native is safe because the JIT builds on the machine that runs the code, and the
# CPU's feature flags are part of the build key. -fopenmp makes at::parallel_for parallel
# (without it ATen's header falls back to a serial loop); it links the libgomp torch loaded.
CPU_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-Wno-psabi"]  # psabi: internal SIMD types
CPU_LDFLAGS = ["-fopenmp"]
CUDA_CFLAGS = ["-O3", "-lineinfo"]


def default_build_root() -> Path:
    """``$DDETR_OPS_BUILD_DIR`` if set; else ``ops/_build`` (gitignored) in a source checkout
    or an editable install; else, for a package installed into site-packages (which may be
    read-only or shared by several users), the per-user cache ``$XDG_CACHE_HOME/ddetr-ops``
    (default ``~/.cache/ddetr-ops``). The build key keeps environments sharing it apart."""
    env = os.environ.get("DDETR_OPS_BUILD_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    installed = package.parent.name in ("site-packages", "dist-packages")
    if not installed and os.access(package, os.W_OK):
        return package / "_build"
    cache = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA")
    return (Path(cache) if cache else Path.home() / ".cache") / "ddetr-ops"


@dataclass(frozen=True)
class BuildResult:
    """Outcome of making one kernel library available in this process."""

    kind: str  # "cpu" or "cuda"
    ok: bool
    detail: str  # the library path when ok, else why it is unavailable (one line)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _cuda_archs() -> str:
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    if torch.cuda.is_available():  # torch builds for the visible GPUs when the list is unset
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{a}.{b}" for a, b in sorted(caps))
    return "unset"


def _build_dir(kind: str, root: Path) -> Path:
    h = hashlib.sha256()
    for name in SOURCES[kind] + HEADERS:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    parts = [torch.__version__, str(torch.version.cuda), sys.version, platform.machine(),
             os.environ.get("CXX", "c++"), repr(CPU_CFLAGS), repr(CPU_LDFLAGS)]
    if kind == "cpu":
        parts.append(_cpu_flags())
    else:
        parts += [repr(CUDA_CFLAGS), _cuda_archs(), os.environ.get("CUDA_HOME", "")]
    h.update("\n".join(parts).encode())
    return root / f"{kind}-{h.hexdigest()[:16]}"


def _lib_name(kind: str) -> str:
    return f"ddetr_ops_{kind}"


@contextlib.contextmanager
def _quiet_cpp_extension():
    """Silence torch's builder chatter (e.g. its CUDA_HOME guess logged at import)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _cuda_home() -> str | None:
    with _quiet_cpp_extension():
        from torch.utils import cpp_extension
    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists() and (
        Path(home) / "include" / "cuda_runtime.h"
    ).exists():
        return home
    return None


def missing_tool(kind: str) -> str | None:
    """Why ``kind`` cannot be built here (a missing tool), or None if it can be attempted."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler: `{cxx}` is not on PATH (install g++, or set CXX)"
    if shutil.which("ninja") is None and not (Path(sys.executable).parent / "ninja").exists():
        return "ninja is not installed (pip install ninja)"
    if kind == "cuda":
        if torch.version.cuda is None:
            return "this torch build has no CUDA support"
        if _cuda_home() is None:
            return ("no CUDA toolkit found (nvcc and include/cuda_runtime.h under CUDA_HOME); "
                    "set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda")
    return None


@contextlib.contextmanager
def _lock(path: Path):
    """Exclusive inter-process lock; the OS releases it if this process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: rely on torch's own lock in the build directory
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _summarize(err: BaseException) -> str:
    """First compiler error line of a failed build (the full log is saved next to it)."""
    text = str(err)
    for line in text.splitlines():
        if re.search(r"\berror\b", line, re.IGNORECASE) and "Error building extension" not in line:
            return line.strip()[:300]
    return (text.strip().splitlines() or [type(err).__name__])[0][:300]


def _compile(kind: str, out_dir: Path) -> None:
    with _quiet_cpp_extension():
        from torch.utils import cpp_extension
    env_path = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:  # a venv's ninja when the venv is not activated
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env_path
    try:
        with _quiet_cpp_extension():
            cpp_extension.load(
                name=_lib_name(kind),
                sources=[str(CSRC / s) for s in SOURCES[kind]],
                extra_cflags=CPU_CFLAGS,
                extra_cuda_cflags=CUDA_CFLAGS,
                extra_ldflags=CPU_LDFLAGS if kind == "cpu" else [],
                extra_include_paths=[str(CSRC)],
                build_directory=str(out_dir),
                with_cuda=kind == "cuda",
                is_python_module=False,
                verbose=False,
            )
    finally:
        os.environ["PATH"] = env_path


def forget_failures(root: Path | None = None) -> None:
    """Deletes the recorded build failures, so the next import tries to build again."""
    root = Path(root) if root is not None else default_build_root()
    for marker in root.glob("*/build_failed.txt"):
        marker.unlink(missing_ok=True)


def load_kernel(kind: str, root: Path | None = None) -> BuildResult:
    """Builds ``kind`` ("cpu" or "cuda") if needed and loads it into this process."""
    root = Path(root) if root is not None else default_build_root()
    out_dir = _build_dir(kind, root)
    lib = out_dir / f"{_lib_name(kind)}.so"
    failed = out_dir / "build_failed.txt"
    if not lib.exists():
        why = missing_tool(kind)
        if why is not None:
            return BuildResult(kind, False, why)
        with _lock(out_dir.with_suffix(".lock")):
            if failed.exists():
                return BuildResult(kind, False, failed.read_text().splitlines()[0])
            if not lib.exists():
                print(f"ops: building the {kind} kernel of ms_deform_attn in {out_dir} "
                      f"(once; {'a minute' if kind == 'cpu' else 'a few minutes'})...",
                      file=sys.stderr, flush=True)
                try:
                    _compile(kind, out_dir)
                except Exception as err:  # compiler/linker/loader errors all mean "no kernel"
                    log = out_dir / "build_error.log"
                    out_dir.mkdir(parents=True, exist_ok=True)
                    log.write_text(str(err))
                    reason = f"build failed: {_summarize(err)} (full log: {log})"
                    failed.write_text(reason + "\n")
                    return BuildResult(kind, False, reason)
    try:
        torch.ops.load_library(str(lib))
    except OSError as err:
        return BuildResult(kind, False, f"cannot load {lib}: {err} (delete {out_dir} to rebuild)")
    return BuildResult(kind, True, str(lib))
