"""The capture file: one self-contained ``.npz`` (arrays + JSON header + the image as PNG).

Layout (a plain numpy zip, readable without this package)::

    __ddetr_capture__   uint8   JSON header: {"format": "ddetr-capture", "version": 1,
                                "arrays": {name: [shape, dtype]}, ...capture metadata}
    __image_png__       uint8   the original image, PNG-encoded
    enc/3/offsets ...           the arrays, float16/float32/int64/bool only

Loading never unpickles (``allow_pickle=False``) and checks the header and every array
against it, so a truncated, corrupt or foreign file fails with ``CaptureFileError`` naming
the problem instead of a zipfile traceback or a half-loaded capture.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
import zlib

import numpy as np
from PIL import Image

FORMAT = "ddetr-capture"
VERSION = 1
_HEADER = "__ddetr_capture__"
_IMAGE = "__image_png__"
_ALLOWED_KINDS = "biuf"  # bool, int, uint, float: nothing that needs pickle


class CaptureFileError(ValueError):
    """A file that is not a readable capture; the message says why and what to do."""


def save_capture(path, meta: dict, arrays: dict[str, np.ndarray], image: np.ndarray, compress: bool = False) -> None:
    """Write one capture file. ``image`` is (h0, w0, 3) uint8; ``compress`` trades time for
    size (float16 attention data compresses by ~10-20% only, so it is off by default)."""
    for k, a in arrays.items():
        if k.startswith("__"):
            raise ValueError(f"array name {k!r} is reserved")
        if a.dtype.kind not in _ALLOWED_KINDS:
            raise ValueError(f"array {k!r} has dtype {a.dtype}; captures hold numeric arrays only")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    header = dict(meta, format=FORMAT, version=VERSION,
                  arrays={k: [list(a.shape), a.dtype.str] for k, a in arrays.items()})
    entries = {
        _HEADER: np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
        _IMAGE: np.frombuffer(buf.getvalue(), dtype=np.uint8),
        **arrays,
    }
    tmp = f"{os.fspath(path)}.partial"
    # A file object keeps numpy from appending ".npz"; write-then-rename never leaves a
    # half-written capture under the requested name.
    with open(tmp, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **entries)
    os.replace(tmp, path)


def load_capture(path) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """Read a capture file -> (meta, arrays, image (h0, w0, 3) uint8).

    Raises ``CaptureFileError`` for a truncated, corrupt, foreign or too-new file and
    ``FileNotFoundError`` when there is no file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no capture file at {path}")
    hint = "it is truncated, corrupt or not a capture; save it again with Capture.save"
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CaptureFileError(f"{path} is a single numpy array, not a capture (captures are .npz "
                                   "files written by Capture.save)")
        with z:
            if _HEADER not in z.files:
                raise CaptureFileError(f"{path} is a .npz file but not a ddetr capture (no {_HEADER} "
                                       "header); captures are written by Capture.save")
            header = json.loads(bytes(z[_HEADER]).decode("utf-8"))
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}
            png = bytes(z[_IMAGE]) if _IMAGE in z.files else None
    except CaptureFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error, UnicodeDecodeError) as e:
        raise CaptureFileError(f"cannot read capture {path}: {type(e).__name__}: {e}; {hint}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CaptureFileError(f"{path} has a header but format {header.get('format')!r}, not {FORMAT!r}")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CaptureFileError(f"{path} is capture format version {version}; this ddetr reads up to "
                               f"{VERSION}: update the package to open it")
    manifest = header.pop("arrays", {})
    header.pop("format"), header.pop("version")
    missing = sorted(set(manifest) - set(arrays))
    extra = sorted(set(arrays) - set(manifest))
    if missing or extra:
        raise CaptureFileError(f"{path}: arrays missing {missing[:5]} / unexpected {extra[:5]}; {hint}")
    for k, (shape, dtype) in manifest.items():
        a = arrays[k]
        if list(a.shape) != list(shape) or a.dtype.str != dtype:
            raise CaptureFileError(f"{path}: array {k} is {a.dtype.str}{list(a.shape)}, header says "
                                   f"{dtype}{list(shape)}; {hint}")
    if png is None:
        raise CaptureFileError(f"{path} holds no image; {hint}")
    try:
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise CaptureFileError(f"{path}: the stored image cannot be decoded ({e}); {hint}") from e
    orig = header.get("geometry", {}).get("orig_size")
    if orig is not None and list(image.shape[:2]) != list(orig):
        raise CaptureFileError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, header says "
                               f"{orig[1]}x{orig[0]}; {hint}")
    return header, arrays, image
