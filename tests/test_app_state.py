"""The explorer's server-side state without Gradio: bounded sessions, safe image reading,
checkpoint discovery."""

import numpy as np
import pytest
from PIL import Image

from explorer.images import MIN_SIDE, read_image
from explorer.models import find_checkpoints
from explorer.state import Session, SessionStore, UserError
from huge_png import huge_png  # noqa: E402

LIMIT = 50_000_000


class _Blob:
    def __init__(self, n):
        self.nbytes = n


def _session(store, nbytes):
    s = store.create("m")
    s.cache["blob"] = _Blob(nbytes)
    store.touch(s.key)
    return s


def test_store_is_bounded_by_count_and_bytes():
    store = SessionStore(max_sessions=3, max_bytes=1000)
    a, b, c = (_session(store, 100) for _ in range(3))
    d = _session(store, 100)  # 4th session: the least recently used (a) goes
    assert store.get(a.key) is None and store.get(d.key) is d and len(store) == 3
    store.get(b.key)  # b is now the most recent
    e = _session(store, 850)  # bytes: c, then d go; b and e stay
    assert store.get(c.key) is None and store.get(b.key) is b and store.get(e.key) is e
    assert store.total_bytes() <= 1000 and store.evicted == 3


def test_store_keeps_the_active_session_even_when_it_alone_is_too_big():
    store = SessionStore(max_sessions=4, max_bytes=10)
    s = _session(store, 1000)
    assert store.get(s.key) is s
    t = _session(store, 1000)
    assert store.get(s.key) is None and store.get(t.key) is t
    assert store.peak_bytes >= 1000


def test_store_keys_are_random_and_drop_forgets():
    store = SessionStore()
    keys = {store.create("m").key for _ in range(50)}
    assert len(keys) == 50 and all(len(k) == 32 for k in keys)
    k = next(iter(keys))
    store.drop(k)
    assert store.get(k) is None and store.get(None) is None and store.get("nope") is None


def test_session_reset_forgets_the_image():
    s = Session("k", "m")
    s.capture, s.target, s.notes = object(), ("pixel", (1, 2)), ["x"]
    s.cache["d"] = 1
    s.reset()
    assert s.capture is None and s.target is None and not s.cache and not s.notes


# ----------------------------------------------------------------------------- images
def _png16(path, w, h):
    Image.fromarray((np.arange(w * h).reshape(h, w) * 7 % 65536).astype(np.uint16)).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rgb = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "ok.jpg", quality=90)
    data = (d / "ok.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("this is not an image\n")
    Image.new("RGB", (1, 1)).save(d / "one.png")
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    _png16(d / "deep.png", 80, 60)
    huge_png(d / "huge.png", 20000, 20000)
    return d


@pytest.mark.parametrize("name, message", [
    ("truncated.jpg", "truncated or corrupt"),
    ("notes.txt", "not an image"),
    ("one.png", f"at least {MIN_SIDE} pixels"),
    ("huge.png", "megapixels"),
])
def test_bad_images_give_a_message(files, name, message):
    with pytest.raises(UserError, match=message) as e:
        read_image(files / name, [files], LIMIT)
    assert str(files) not in str(e.value)  # never show the server's folders


@pytest.mark.parametrize("name, note", [
    ("ok.jpg", None), ("gray.png", "grayscale"), ("rgba.png", "alpha"), ("cmyk.jpg", "CMYK"), ("deep.png", "16-bit"),
])
def test_convertible_images_are_read_with_a_note(files, name, note):
    import torch

    from ddetr.preprocess import to_rgb_tensor

    img, notes = read_image(files / name, [files], LIMIT)
    assert (note is None and not notes) or any(note in n for n in notes)
    t = to_rgb_tensor(img)
    assert t.shape == (3, 60, 80) and t.dtype == torch.float32 and 0 <= float(t.min()) <= float(t.max()) <= 1


def test_only_files_under_the_allowed_roots_are_opened(files, tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(outside)
    with pytest.raises(UserError, match="not uploaded through the page"):
        read_image(outside, [files], LIMIT)
    with pytest.raises(UserError, match="not uploaded through the page"):
        read_image(files / ".." / tmp_path.name / "secret.png", [files], LIMIT)  # no escape by ..
    with pytest.raises(UserError, match="not uploaded"):
        read_image(files / "missing.png", [files], LIMIT)


def test_pixel_limit_is_checked_before_decoding(files):
    with pytest.raises(UserError, match="megapixels"):
        read_image(files / "ok.jpg", [files], max_pixels=1000)


def test_find_checkpoints(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.pth").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    found = find_checkpoints(tmp_path)
    assert list(found) == ["a.safetensors", "b.pth", "hf/"]
    assert all(p.is_absolute() for p in found.values())
    with pytest.raises(UserError, match="not a directory"):
        find_checkpoints(tmp_path / "nope")
