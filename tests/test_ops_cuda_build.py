"""Building the op's kernels: the CUDA sources compile (for sm_80 and sm_90, without a GPU),
a machine without a compiler falls back to the reference with one warning, a failed build is
reported and remembered, concurrent first imports build once, and a built import is silent.

Each case runs in a subprocess with its own environment and, where it builds, its own build
directory ($DDETR_OPS_BUILD_DIR or an explicit root), so nothing here touches ops/_build.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, env_extra: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def cuda_toolkit() -> str | None:
    """$CUDA_HOME, else /usr/local/cuda, if it holds nvcc (the nvcc on PATH may be a shim
    that makes torch guess the wrong CUDA_HOME)."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return home
    return None


@pytest.mark.slow
def test_cuda_sources_compile_for_sm80_and_sm90(tmp_path):
    if torch.version.cuda is None:
        pytest.skip("torch has no CUDA support")
    home = cuda_toolkit()
    if home is None:
        if os.environ.get("DDETR_OPS_REQUIRE_CUDA_BUILD") == "1":
            pytest.fail("DDETR_OPS_REQUIRE_CUDA_BUILD=1 but no CUDA toolkit (set CUDA_HOME)")
        pytest.skip("no CUDA toolkit (set CUDA_HOME)")
    start = time.monotonic()
    proc = run_python(f"""
        from ops import build
        result = build.load_kernel("cuda", root={str(tmp_path)!r})
        print(result.detail)
        assert result.ok
        import torch
        assert "CUDA" in torch._C._dispatch_dump("ddetr_ops::ms_deform_attn_backward")
    """, {"CUDA_HOME": home, "TORCH_CUDA_ARCH_LIST": "8.0;9.0",
          # Hide a GPU: `import ops` would load the regular CUDA kernel, and registering a
          # second CUDA implementation of the same op in one process is an error.
          "CUDA_VISIBLE_DEVICES": ""})
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ninja = next(tmp_path.glob("cuda-*/build.ninja")).read_text()
    for arch in ("80", "90"):
        assert f"arch=compute_{arch},code=sm_{arch}" in ninja
    assert elapsed < 600, f"nvcc took {elapsed:.0f} s"


NO_COMPILER_CHECK = """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import ops
    ours = [w for w in caught if issubclass(w.category, ops.KernelUnavailableWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    print("WARNING:", ours[0].message)
    assert ops.implementation("cpu") == "reference"
    import torch
    shapes = torch.tensor([[3, 4], [2, 2]]); starts = torch.tensor([0, 12])
    args = (torch.randn(1, 16, 2, 4), shapes, starts, torch.rand(1, 5, 2, 2, 3, 2),
            torch.rand(1, 5, 2, 2, 3))
    assert torch.equal(ops.ms_deform_attn(*args), ops.ms_deform_attn_reference(*args))
"""


def test_without_compiler_runs_reference_with_one_warning(tmp_path):
    proc = run_python(NO_COMPILER_CHECK, {"CXX": "/nonexistent/c++",
                                          "DDETR_OPS_BUILD_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reference" in proc.stdout and "no C++ compiler" in proc.stdout


def test_failed_build_is_reported_once_and_remembered(tmp_path):
    env = {"CXX": "/bin/false", "DDETR_OPS_BUILD_DIR": str(tmp_path)}  # a "compiler" that fails
    first = run_python(NO_COMPILER_CHECK, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "build failed" in first.stdout and "full log" in first.stdout
    start = time.monotonic()
    second = run_python(NO_COMPILER_CHECK, env)  # no new attempt: the failure is recorded
    assert second.returncode == 0, second.stdout + second.stderr
    assert "building" not in second.stderr and "build failed" in second.stdout
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_concurrent_first_imports_build_once(tmp_path):
    code = "import ops; print(ops.implementation('cpu'))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DDETR_OPS_BUILD_DIR": str(tmp_path),
           "CUDA_VISIBLE_DEVICES": ""}  # the CPU kernel is enough to test the lock
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert out.strip() == "cpu-kernel", out + err
    assert sum(err.count("ops: building the cpu kernel") for _, err in outs) == 1


def test_built_import_is_silent_and_python_m_ops_reports():
    import ops  # builds into ops/_build if this session has not yet

    assert ops.KERNELS["cpu"].ok, ops.KERNELS["cpu"].detail
    quiet = run_python("import ops", {})
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr
    report = subprocess.run([sys.executable, "-m", "ops", "--strict"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=600)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "cpu-kernel   available" in report.stdout
    assert "cpu tensors -> cpu-kernel" in report.stdout
