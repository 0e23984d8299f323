"""The installable package: pyproject.toml's metadata, and a real ``pip install`` into a fresh
virtual environment, used from another folder."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(path: Path) -> list[str]:
    """Requirement lines without comments or whitespace."""
    lines = (line.split("#", 1)[0].replace(" ", "") for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_pins_agree_with_the_requirements_files():
    """The set-up script installs requirements*.txt, pip install the pyproject: same pins."""
    project = PYPROJECT["project"]
    installed = {_name(r): r for r in project["dependencies"] + project["optional-dependencies"]["app"]}
    for req in _requirements(ROOT / "requirements.txt"):
        assert installed.get(_name(req)) == req, f"requirements.txt has {req}, pyproject {installed.get(_name(req))}"
    dev = {_name(r): r for r in project["optional-dependencies"]["dev"]}
    for req in _requirements(ROOT / "requirements-dev.txt"):
        assert dev.get(_name(req)) == req, f"requirements-dev.txt has {req}, pyproject {dev.get(_name(req))}"
    assert "torch==2.14.1" in project["dependencies"] and "torchvision==0.29.1" in project["dependencies"]


def test_every_package_and_app_module_is_installed():
    """pyproject.toml lists the packages explicitly (``ddetr.examples`` is mapped onto
    examples/): every folder with an ``__init__.py`` of the installed top-level packages must be
    listed, and the installed explorer must not need the checkout's ``app.py``."""
    tool = PYPROJECT["tool"]["setuptools"]
    listed = set(tool["packages"])
    tops = {p.split(".")[0] for p in listed}
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in tops
             for init in (ROOT / top).rglob("__init__.py") if "_build" not in init.parts}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert "ddetr.examples" in listed and tool["package-dir"]["ddetr.examples"] == "examples"
    # app.py is the checkout's launcher and is not installed: nothing installed may import it.
    top_level_imports = set()
    for path in (ROOT / "explorer").glob("*.py"):
        top_level_imports |= set(re.findall(r"^\s*(?:from|import) (app\w*)\b", path.read_text(), re.M))
    assert not top_level_imports and "py-modules" not in tool, sorted(top_level_imports)


def test_every_data_file_of_the_packages_is_installed():
    """Non-Python files inside the package folders (the op's C++/CUDA sources, any template a
    later change adds) must match a package-data pattern, or the installed copy lacks them."""
    import fnmatch

    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for pkg in PYPROJECT["tool"]["setuptools"]["packages"]:
        folder = ROOT / PYPROJECT["tool"]["setuptools"]["package-dir"].get(pkg, pkg.replace(".", "/"))
        if pkg == "ddetr.examples":  # a curated selection of examples/ (no training logs, no notebook)
            continue
        for f in folder.iterdir():
            if f.is_dir() and (f / "__init__.py").exists() or f.suffix == ".py" or f.name in ("__pycache__", "_build"):
                continue
            files = [f] if f.is_file() else [g for g in f.rglob("*") if g.is_file() and "__pycache__" not in g.parts]
            for g in files:
                rel = g.relative_to(folder).as_posix()
                if rel == "README.md":
                    continue  # documentation of the source tree
                assert any(fnmatch.fnmatch(rel, pat) for pat in data.get(pkg, [])), f"{pkg}: {rel} is not package data"


def test_console_commands_point_at_main_functions():
    """Every entry point names a module with ``main(argv=None)`` (the two commands whose
    modules do not exist in this tree yet are checked once they do)."""
    import importlib
    import inspect

    for command, target in PYPROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        if not (ROOT / (module.replace(".", "/") + ".py")).exists():
            continue
        fn = getattr(importlib.import_module(module), func)
        params = inspect.signature(fn).parameters
        assert "argv" in params and params["argv"].default is None, command


def _source_copy(dst: Path) -> Path:
    """The checkout without build outputs: setuptools' in-tree build/ folder would otherwise
    carry files of earlier builds into the wheel."""
    skip = {".git", ".venv", "build", "runs", "data", "test-artifacts", ".pytest_cache", "tmp", ".whl"}

    def ignore(folder, names):
        top = Path(folder) == ROOT
        return [n for n in names if (top and n in skip) or n in ("_build", "__pycache__")
                or n.endswith(".egg-info")]

    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)
    return dst


def _run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


PREDICT = """
import json, sys
import ddetr, ops
from PIL import Image
from ddetr.assets import default_checkpoint, example_dirs
model, report = ddetr.load(default_checkpoint())
image = sorted(example_dirs()["synthetic"].glob("*.png"))[0]
dets = model.predict(Image.open(image), score_threshold=0.5)
import explorer.page  # the explorer's page: its example galleries come from the installed copy
from explorer.examples import find_examples
examples = {group: sorted(items) for group, items in find_examples().items()}
print(json.dumps(dict(ddetr=ddetr.__file__, ops=ops.__file__, checkpoint=str(default_checkpoint()),
                      image=image.name, impl=ops.implementation("cpu"), boxes=dets[0].boxes.tolist(),
                      labels=dets[0].labels.tolist(), examples=examples, app=explorer.page.__file__)))
"""


@pytest.mark.slow
def test_pip_install_into_a_fresh_environment(tmp_path):
    """``pip install`` the project into a new virtual environment, then use it from a folder
    that is not the checkout: ``ddetr-explorer --help``, ``python -m ops`` (which compiles the
    CPU kernel from the *installed* C++ sources into the per-user cache, with the installed
    package made read-only), and a prediction with the shipped model found through
    ``ddetr.assets``, equal to the same prediction from the source tree.

    The dependencies are not installed again: torch alone is 5 GB and there is no network. The
    new environment is a plain venv (no ``--system-site-packages``: the system Python has no
    torch, and it would hide what the project brings); a ``.pth`` file adds the test runner's
    site-packages *after* the venv's own, and ninja's executable is linked into its bin/ as
    installing ninja would put it. The project itself is built into a wheel from a copy of the
    checkout (``pip wheel --no-build-isolation``, with the runner's setuptools: no network to
    fetch one; the copy is deleted afterwards) and installed with the venv's own pip
    (``--no-deps``), so its packages, package data, console scripts and assets all come from
    the wheel. ``pip check`` then proves the reused packages satisfy the pins in
    pyproject.toml.
    """
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, os.environ.copy(), timeout=300)
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "_reuse_test_runner_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ninja = Path(sys.executable).parent / "ninja"
    if ninja.exists():
        (bin_dir / "ninja").symlink_to(ninja)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DDETR_OPS_BUILD_DIR", "VIRTUAL_ENV")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    src, wheels = _source_copy(tmp_path / "src"), tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(src)], tmp_path, env)
    shutil.rmtree(src)  # nothing may come from the checkout any more
    (wheel,) = wheels.glob("ddetr_explorer-*.whl")
    # Python 3.11's venv bundles setuptools 65, which would shadow the reused (newer) one that
    # torch requires; Python 3.12's venv has none.
    _run([str(py), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], tmp_path, env)
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path, env)
    _run([str(py), "-m", "pip", "check"], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    for pkg in ("ops", "ddetr"):  # read-only, as a shared or system site-packages
        for p in (site / pkg).rglob("*"):
            p.chmod(p.stat().st_mode & ~0o222)
        (site / pkg).chmod(0o555)

    for command in ("ddetr-explorer", "ddetr-train", "ddetr-eval", "ddetr-viz"):
        res = _run([str(bin_dir / command), "--help"], work, env)
        assert "usage:" in res.stdout, command
        if command == "ddetr-explorer":  # the installed copy of the shipped model
            assert "ddetr/examples/default_model.safetensors" in " ".join(res.stdout.split()), res.stdout

    res = _run([str(py), "-m", "ops", "--strict"], work, env)
    assert "cpu-kernel   available" in res.stdout, res.stdout
    assert str(tmp_path / "cache" / "ddetr-ops") in res.stdout, res.stdout
    assert not list((site / "ops").glob("_build"))

    from ddetr.assets import default_checkpoint, example_dirs

    res = _run([str(py), "-c", PREDICT], work, env)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("ddetr", "ops", "checkpoint", "app"):
        assert Path(got[key]).is_relative_to(site), (key, got[key])
    assert got["examples"] == {group: sorted(p.name for p in d.iterdir() if p.suffix in (".png", ".jpg"))
                               for group, d in example_dirs().items()}
    assert got["impl"] == "cpu-kernel"

    import torch
    from PIL import Image

    import ddetr

    model, _ = ddetr.load(default_checkpoint())
    assert default_checkpoint().is_relative_to(ROOT)
    dets = model.predict(Image.open(example_dirs()["synthetic"] / got["image"]), score_threshold=0.5)
    assert len(got["labels"]) > 0 and got["labels"] == dets[0].labels.tolist()
    torch.testing.assert_close(torch.tensor(got["boxes"]), dets[0].boxes.float(), atol=1e-3, rtol=0)
