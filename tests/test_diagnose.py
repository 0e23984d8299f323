"""``python -m ddetr.diagnose``: the JSON contract, exit codes and messages."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddetr.diagnose import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "default_model.safetensors"
SEVERITIES = {"ok", "warning", "problem"}


@pytest.fixture
def two_images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("synthetic_00.png", "synthetic_01.png"):
        shutil.copy(ROOT / "examples" / "synthetic" / name, d / name)
    (d / "notes.txt").write_text("not an image: ignored by suffix")
    return d


def test_json_contract_and_html(tmp_path, two_images, capsys):
    out, page = tmp_path / "d.json", tmp_path / "d.html"
    rc = main(["--checkpoint", str(SHIPPED), "--images", str(two_images), "--max-images", "2",
               "--json", str(out), "--html", str(page)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert set(d) == {"checkpoint", "verdict", "findings"} and d["checkpoint"] == str(SHIPPED)
    assert d["verdict"] in SEVERITIES and d["findings"]
    for f in d["findings"]:
        assert set(f) == {"check", "severity", "module", "layer", "head", "level", "value", "message"}
        assert isinstance(f["check"], str) and f["severity"] in SEVERITIES
        assert f["module"] in ("encoder", "decoder", "model")
        for k in ("layer", "head", "level"):
            assert f[k] is None or isinstance(f[k], int)
        assert isinstance(f["value"], float) and f["message"]
    worst = max((f["severity"] for f in d["findings"]), key=["ok", "warning", "problem"].index)
    assert d["verdict"] == worst
    assert "over 2 image(s)" in out.read_text()
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "<script" not in html and "http" not in html
    assert "SHA-256" in html and str(SHIPPED.parent) not in html  # the loading report, without server paths
    assert "Verdict" in capsys.readouterr().out


@pytest.mark.parametrize("problem, phrase", [("missing", "no such file"), ("garbage", "not a readable"),
                                             ("no_images", "no images"), ("no_folder", "no such folder")])
def test_what_could_not_run_exits_non_zero_with_a_message(tmp_path, two_images, capsys, problem, phrase):
    ckpt, images = str(SHIPPED), str(two_images)
    if problem == "missing":
        ckpt = str(tmp_path / "nope.pth")
    elif problem == "garbage":
        (tmp_path / "bad.pth").write_bytes(b"this is not a checkpoint")
        ckpt = str(tmp_path / "bad.pth")
    elif problem == "no_images":
        (tmp_path / "empty").mkdir()
        images = str(tmp_path / "empty")
    else:
        images = str(tmp_path / "absent")
    rc = main(["--checkpoint", ckpt, "--images", images])
    err = capsys.readouterr().err
    assert rc == 2 and phrase in err and "Traceback" not in err


def test_runs_as_a_module(tmp_path, two_images):
    r = subprocess.run([sys.executable, "-m", "ddetr.diagnose", "--checkpoint", str(tmp_path / "x.pth"),
                        "--images", str(two_images)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "ddetr-diagnose:" in r.stderr and "Traceback" not in r.stderr
