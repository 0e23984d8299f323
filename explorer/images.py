"""The one place where uploaded image files are opened: only from allowed folders, with the
pixel limit checked from the header before any pixel is decoded, and a message naming the fix
for every failure."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .state import UserError

MIN_SIDE = 8  # below this an "image" is a mistake (a 1x1 pixel upscaled to 320 px says nothing)


def _inside(path: Path, roots) -> bool:
    path = path.resolve()
    for r in roots:
        try:
            path.relative_to(Path(r).resolve())
            return True
        except ValueError:
            continue
    return False


def read_image(path: str | os.PathLike, allowed_roots, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """Open an uploaded image file safely -> (decoded PIL image, notes about conversions).

    Only files under ``allowed_roots`` (Gradio's upload folder, the example folders) are
    opened: a client that posts a path of its own choosing gets an error, not the file.
    Every failure is a ``UserError`` naming the problem and the fix; the pixel limit is
    checked from the header, before any pixel is decoded.
    """
    p = Path(path)
    if not _inside(p, allowed_roots) or not p.is_file():
        raise UserError("this file was not uploaded through the page; upload the image again")
    size_mb = p.stat().st_size / 1e6
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; PIL still refuses (raises) beyond 2 x its own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except UnidentifiedImageError:
        raise UserError(f"{_name(p)} is not an image this app can read ({size_mb:.2f} MB, unknown format); "
                        "upload a PNG, JPEG, WebP, BMP, GIF or TIFF file") from None
    except Image.DecompressionBombError:
        raise UserError(f"{_name(p)} is far too large to decode safely (this server's limit is "
                        f"{max_pixels / 1e6:.0f} megapixels); "
                        "downscale it first (the model resizes to at most 1333 px anyway)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot open {_name(p)}: {e}; the file may be corrupt") from None
    w, h = img.size
    if w * h > max_pixels:
        raise UserError(f"{_name(p)} is {w}x{h} = {w * h / 1e6:.0f} megapixels, over this server's limit of "
                        f"{max_pixels / 1e6:.0f}; downscale it first (the model resizes to at most 1333 px anyway)")
    if min(w, h) < MIN_SIDE:
        raise UserError(f"{_name(p)} is only {w}x{h} pixels; the model needs an image at least "
                        f"{MIN_SIDE} pixels on each side (objects of interest are usually 10+ pixels)")
    notes = []
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"{img.format} with {img.n_frames} frames: using the first")
    mode = img.mode
    try:
        img.load()
        if img.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation
            img = ImageOps.exif_transpose(img)
            notes.append("rotated as its EXIF orientation says (as browsers show it)")
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data is found at decode
        raise UserError(f"cannot decode {_name(p)}: {e}; the file is truncated or corrupt, export it again") from None
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    elif mode.startswith("I;16") or mode == "I":
        notes.append(f"{mode} (16-bit) image scaled to [0, 1]")
    elif mode in ("L", "1", "LA"):
        notes.append("grayscale image: the gray channel is used for R, G and B")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("alpha channel dropped (transparent pixels show their stored colour)")
    return img, notes


def _name(p: Path) -> str:
    # Gradio keeps the uploaded name as the last path component; never show the server's folders.
    return f"'{p.name}'"


