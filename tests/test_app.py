"""End to end: the explorer launched in-process on a free port, driven through gradio_client.

A randomly initialized `small` model (seeded) stands in for the shipped one; its detections
are meaningless but every code path (capture, views, tabs, exports, errors) is the same.
"""
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402

# Gradio's queue analytics use a pandas option that pandas 3 deprecates: not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
from ddetr.capture import Capture  # noqa: E402
from ddetr.data.synthetic import render_scene  # noqa: E402
from huge_png import huge_png  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("app_inputs")
    names = {}
    for i in range(2):
        img, _ = render_scene(100 + i)
        img.save(d / f"scene_{i}.png")
        names[f"scene_{i}.png"] = d / f"scene_{i}.png"
    rgb = np.asarray(Image.open(names["scene_0.png"]).convert("RGB"))
    Image.fromarray(rgb).save(d / "photo.jpg", quality=90)
    data = (d / "photo.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "notes.txt").write_text("not an image\n")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one.png")
    huge_png(d / "huge.png", 20000, 20000)
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(d / "deep16.png")
    with open(d / "big.bin", "wb") as f:
        f.write(os.urandom(3 << 20))  # over the test server's 2 MB upload limit
    return {"dir": d, "examples": {"synthetic": names, "photos": {}}}


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    """(url, demo, forward counter). One server for the module; closed at the end."""
    torch.set_num_threads(2)
    lm = app.random_model(seed=0)
    ckpt_dir = tmp_path_factory.mktemp("ckpts")
    from ddetr.checkpoint import save

    other = app.random_model(seed=1).model
    save(other, ckpt_dir / "other.safetensors")
    _partial(ckpt_dir / "other.safetensors", ckpt_dir / "partial.safetensors")
    (ckpt_dir / "broken.safetensors").write_bytes(b"not a checkpoint")
    calls = {"n": 0}
    lm.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    demo = app.build_demo(lm, examples=files["examples"],
                          checkpoints={n: ckpt_dir / n for n in ("other.safetensors", "partial.safetensors",
                                                                 "broken.safetensors")})
    port = free_port()
    demo.launch(**app.launch_kwargs(server_port=port, prevent_thread_lock=True, quiet=True, max_file_size="2mb"))
    yield f"http://127.0.0.1:{port}/", demo, calls
    demo.close()


def _partial(src, dst, drop: str = "class_embed"):
    """A copy of checkpoint ``src`` without the tensors whose names contain ``drop``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys() if drop not in k}
    save_file(sd, str(dst), metadata=meta)


def client(server) -> Client:
    return Client(server[0], verbose=False)


def status_of(result) -> str:
    return result[3]  # (det_image, att_image, det_list, status, notice, legend); the session key is a State


def test_launch_is_secure_by_default(server):
    import httpx

    url, demo, _ = server
    assert url.startswith("http://127.0.0.1:") and demo.server_name == "127.0.0.1"
    assert demo.max_file_size == 2 << 20
    assert demo.analytics_enabled is False and demo.run_history is False
    for path in ("monitoring", "monitoring/summary"):  # Gradio answers 403 "Monitoring is not enabled."
        assert httpx.get(url + path, timeout=10).status_code in (403, 404)
    defaults = app.launch_kwargs(app.parse_args([]))
    assert defaults["server_name"] == "127.0.0.1" and defaults["enable_monitoring"] is False
    assert defaults["max_file_size"] and defaults["share"] is False and defaults["run_history"] is False


def test_random_weights_are_labelled(server):
    import httpx

    config = httpx.get(server[0] + "config", timeout=10).text
    assert "RANDOM WEIGHTS" in config and "crescent" in config  # header: checkpoint, variant, classes
    assert "small" in config


def test_missing_default_checkpoint_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr("explorer.cli.DEFAULT_CHECKPOINT", tmp_path / "default_model.safetensors")
    with pytest.raises(SystemExit) as e:
        app.startup_model(app.parse_args([]))
    assert "--random-weights" in str(e.value) and "--checkpoint" in str(e.value)
    with pytest.raises(SystemExit, match="no such file"):
        app.startup_model(app.parse_args(["--checkpoint", str(tmp_path / "nope.pth")]))


def test_detect_then_explore_without_running_the_model_again(server, files):
    _, demo, calls = server
    c = client(server)
    before = calls["n"]
    r = c.predict("scene_0.png", 0.0, api_name="/detect_example")
    assert calls["n"] == before + 1
    assert "scene_0.png" in status_of(r) and "decoder layer" in status_of(r)
    det_image, att_image = np.asarray(Image.open(r[0])), np.asarray(Image.open(r[1]))
    assert det_image.shape == att_image.shape and det_image.shape[2] == 3
    choices = r[2]["choices"]
    assert len(choices) > 3 and choices[0][1] == 0

    r = c.predict(2, api_name="/select_detection")
    assert "detection #2" in status_of(r)
    sess = next(s for s in demo.explorer.store._items.values() if s.image_name == "scene_0.png"
                and s.target == ("detection", 2))
    x0, y0, x1, y1 = sess.capture.detections.boxes[2].tolist()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = c.predict(cx, cy, api_name="/click")  # on a box: selects the smallest box holding the point
    assert "detection #" in status_of(r)
    r = c.predict(cx, cy, api_name="/click_pixel")
    assert "encoder layer" in status_of(r) and f"({cx:.0f}, {cy:.0f})" in status_of(r)
    previous = np.asarray(Image.open(r[1]))
    r = c.predict(0, [1], [0, 2], "weight", 5, "merged", 1, api_name="/set_view")
    assert "encoder layer 0" in status_of(r) and "level-1 token" in status_of(r) and "5 sampling points" in status_of(r)
    assert not np.array_equal(np.asarray(Image.open(r[1])), previous)
    r = c.predict(1, [0, 3], [0, 1, 2, 3], "head", 0, "scales", 0, api_name="/set_view")
    assert "encoder layer 1" in status_of(r)
    r = c.predict(0.0, api_name="/set_threshold")
    for tab in app.TABS:
        c.predict(tab, api_name="/show_tab")
    assert calls["n"] == before + 1  # every change of view came from the capture


def test_tabs_draw_for_the_selected_detection(server):
    c = client(server)
    c.predict("scene_1.png", 0.0, api_name="/detect_example")
    c.predict(0, api_name="/select_detection")
    ids = list(app.TABS)
    for i, tab_id in enumerate(ids):
        r = c.predict(tab_id, api_name="/show_tab")
        assert len(r) == 2 * len(ids)  # (note, body) of every tab; only this one is drawn
        note, body = r[2 * i], r[2 * i + 1]
        kind = app.TABS[tab_id].body
        if tab_id == "gradients":
            assert "Press the button" in note
        elif tab_id == "compare":  # draws after its button ran checkpoint B
            assert "press **Compare**" in note
        elif kind == "plot":
            assert isinstance(body, dict) and body.get("plot"), (tab_id, note)
        elif kind == "image":
            assert np.asarray(Image.open(body)).ndim == 3, (tab_id, note)
        elif kind == "markdown":
            assert body, (tab_id, note)
    r = c.predict(api_name="/gradients")
    assert r[1].get("plot")
    r = c.predict("checkpoint", api_name="/show_tab")
    k = 2 * ids.index("checkpoint")
    assert "offsets_at_init" in r[k] and "PROBLEM" in r[k]  # an untrained model is diagnosed as such
    assert "capture of a" in r[k + 1]


def test_upload_and_odd_images(server, files):
    c = client(server)
    d = files["dir"]
    for name, note in [("photo.jpg", None), ("gray.png", "grayscale"), ("rgba.png", "alpha"),
                       ("cmyk.jpg", "CMYK"), ("deep16.png", "16-bit")]:
        r = c.predict(handle_file(str(d / name)), 0.0, api_name="/detect")
        assert name in status_of(r)
        if note:
            assert note in status_of(r)


@pytest.mark.parametrize("name, message", [
    ("notes.txt", "not an image"),
    ("truncated.jpg", "truncated or corrupt"),
    ("one.png", "at least 8 pixels"),
    ("huge.png", "megapixels"),
    ("big.bin", "size"),  # over max_file_size: refused by the upload route itself
])
def test_bad_inputs_give_a_message_and_the_next_request_succeeds(server, files, name, message):
    c = client(server)
    with pytest.raises(Exception) as e:
        c.predict(handle_file(str(files["dir"] / name)), 0.3, api_name="/detect")
    assert message.lower() in str(e.value).lower()
    if name != "big.bin":  # that message is gradio_client's own, about the client's own file
        assert str(files["dir"]) not in str(e.value)
    r = c.predict("scene_0.png", 0.0, api_name="/detect_example")
    assert "scene_0.png" in status_of(r)


def test_upload_limit_is_enforced_by_the_server(server, files):
    import httpx

    with open(files["dir"] / "big.bin", "rb") as f:
        r = httpx.post(server[0] + "gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=30)
    assert r.status_code == 413 or "maximum" in r.text.lower()


def test_views_before_any_image_say_what_to_do(server):
    c = client(server)
    with pytest.raises(AppError, match="upload an image or pick an example"):
        c.predict(10, 10, api_name="/click")
    with pytest.raises(AppError, match="not in the list of choices|unknown example"):
        c.predict("../../etc/passwd", 0.3, api_name="/detect_example")


def test_paths_from_the_client_are_never_opened(server, tmp_path):
    """A raw API call naming a server file (not an upload) is refused, and the file is not read."""
    import httpx

    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)
    url = server[0] + "gradio_api/call/detect"
    payload = {"path": str(secret), "meta": {"_type": "gradio.FileData"}, "orig_name": "secret.png"}
    r = httpx.post(url, json={"data": [payload, 0.3]}, timeout=30)  # refused before it is queued
    assert r.status_code == 422 and "uploaded through the page" in r.text
    assert not any(s.image_name == "secret.png" for s in server[1].explorer.store._items.values())
    c = client(server)
    with pytest.raises(AppError, match="not in the list of choices|unknown checkpoint"):
        c.predict(str(secret), api_name="/set_checkpoint")


def test_exports(server, files):
    _, demo, _ = server
    c = client(server)
    c.predict("scene_0.png", 0.0, api_name="/detect_example")
    c.predict(1, api_name="/select_detection")
    png = c.predict("png", api_name="/export")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    svg = open(c.predict("svg", api_name="/export"), encoding="utf-8").read()
    assert "<svg" in svg
    html = open(c.predict("html", api_name="/export"), encoding="utf-8").read()
    assert "<html" in html.lower() and "plotly" in html.lower() and "scene_0.png" in html
    report = open(c.predict("report", api_name="/export"), encoding="utf-8").read()
    assert report.count("<details") >= 10  # a section per detection (the 10 best)
    cap = Capture.load(c.predict("capture", api_name="/export"))
    sess = next(s for s in demo.explorer.store._items.values() if s.target == ("detection", 1) and s.image_name == "scene_0.png")
    assert cap == sess.capture


def test_select_events_are_thin_wrappers_over_xy(server):
    """A click event at display pixel (u, v) does exactly what /click does at the image point."""
    import gradio as gr

    _, demo, _ = server
    ex, h = demo.explorer, demo.handlers
    s = ex.store.create(ex.registry.startup_name)
    s.view.threshold = 0.0
    ex.run(s, next(iter(ex.examples["synthetic"].values())))
    scale = ex.scale(s)
    det = s.capture.detections
    x0, y0, x1, y1 = det.boxes[0].tolist()
    for u, v in [(2, 3), ((x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale)]:
        u, v = int(u), int(v)
        h.on_det_select(s.key, "", gr.SelectData(None, {"index": [u, v], "value": None}))
        by_event = s.target
        h.click(s.key, (u + 0.5) / scale, (v + 0.5) / scale)
        assert s.target == by_event
    assert s.target[0] == "detection"
    h.on_att_select(s.key, "", gr.SelectData(None, {"index": [5, 5], "value": None}))
    by_event = (s.target, s.point)
    h.click(s.key, x0, y0)  # something else first
    h.click_view(s.key, 5, 5)
    assert (s.target, s.point) == by_event


def test_clients_get_their_own_sessions(server):
    a, b = client(server), client(server)
    ra = a.predict("scene_0.png", 0.0, api_name="/detect_example")
    rb = b.predict("scene_1.png", 0.0, api_name="/detect_example")
    assert "scene_0.png" in status_of(ra) and "scene_1.png" in status_of(rb)
    ra = a.predict(1, api_name="/select_detection")
    assert "scene_0.png" in status_of(ra) and "detection #1" in status_of(ra)


def test_checkpoint_dropdown_switches_this_session_only(server):
    a, b = client(server), client(server)
    r = a.predict("other.safetensors", api_name="/set_checkpoint")
    assert "other.safetensors" in r[0] and not r[1]  # the header names it; no notice
    ra = a.predict("scene_0.png", 0.0, api_name="/detect_example")
    rb = b.predict("scene_0.png", 0.0, api_name="/detect_example")
    assert ra[2]["choices"] != rb[2]["choices"]  # another seed: other detections


def test_a_failed_checkpoint_keeps_the_model_and_open_anyway_names_what_is_missing(server, tmp_path):
    _, demo, _ = server
    h, x, c = demo.handlers, demo.explorer, demo.handlers.c
    out = h.detect_example(None, "scene_0.png", 0.0)
    key = out[c.key]
    s = x.store.get(key)
    start = s.model_name
    for name in ("broken.safetensors", "partial.safetensors"):
        out = h._page(h.set_checkpoint, [c.key, c.ckpt, c.notice, c.open_anyway, c.header, c.att_image])(key, name)
        assert s.model_name == start and s.capture is not None  # the current model and image stay
        assert out[c.ckpt]["value"] == start  # the dropdown goes back to the model in use
        assert name in out[c.notice] and c.header not in out and c.att_image not in out
        assert str(tmp_path.parent) not in out[c.notice] and "strict=False" not in out[c.notice]
    assert out[c.open_anyway]["visible"] is True and "Open anyway" in out[c.notice]
    out = h.open_anyway(key)
    assert s.model_name == "partial.safetensors"
    assert "OPENED ANYWAY" in out[c.header] and "class_embed" in out[c.header]
    h.detect_example(key, "scene_0.png", 0.0)
    assert s.capture is not None and s.capture.meta["variant"]
    h.set_checkpoint(key, start)  # back, for the other tests
