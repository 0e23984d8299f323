"""Images in, padded batch out: any image type and mode -> RGB float, the official eval resize,
ImageNet normalization, and padding (bottom/right) with a mask."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Beyond this an image is almost certainly a mistake (or a decompression bomb); PIL's own
# hard limit is 2 * 89.5 MP. Users with huge scans can resize first.
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An input that cannot be read as an image; the message says what and how to fix it."""


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) normalized, zero-padded
    mask: torch.Tensor  # (B, H, W) bool, True at padding
    sizes: list[tuple[int, int]]  # (h, w) after resize, before padding
    orig_sizes: list[tuple[int, int]]  # (h, w) of the inputs
    originals: list[torch.Tensor]  # (3, h0, w0) float RGB in [0, 1], for captures and figures

    @property
    def scales(self) -> list[tuple[float, float]]:
        """(sy, sx): resized / original, per image."""
        return [(h / h0, w / w0) for (h, w), (h0, w0) in zip(self.sizes, self.orig_sizes)]


def resized_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Official ``get_size_with_aspect_ratio``: shorter side to min_size unless the longer side
    would exceed max_size. Returns (h, w)."""
    size = min_size
    lo, hi = float(min(h, w)), float(max(h, w))
    if hi / lo * size > max_size:
        size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / peak, 0, 1)
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    # P, L, LA, RGBA, CMYK, YCbCr, 1 ...: PIL knows each mode's conversion to RGB.
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def to_rgb_tensor(image) -> torch.Tensor:
    """Any supported image -> (3, H, W) float32 RGB in [0, 1].

    Accepts a PIL image of any mode, a numpy array or tensor shaped (H, W), (H, W, C) [numpy]
    or (C, H, W) [tensor] with C in {1, 3, 4} (alpha dropped), of dtype uint8, uint16, bool or
    float in [0, 1].
    """
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        raise ImageError("got a path; open the file first (e.g. PIL.Image.open(path)) and pass the image")
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"image of {w}x{h} pixels exceeds the {MAX_PIXELS // 1_000_000} MP limit; resize it first")
        try:
            arr = _pil_to_array(image)
        except (OSError, SyntaxError) as e:  # truncated or corrupt file, decoded lazily by PIL
            raise ImageError(f"could not decode the image ({e}); the file may be truncated or corrupt") from e
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return (t[None] if t.ndim == 2 else t.permute(2, 0, 1)).expand(3, -1, -1).contiguous()
    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image))
        if t.ndim == 3:
            t = t.permute(2, 0, 1)  # numpy images are (H, W, C)
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array or tensor")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ImageError(f"image array of shape {tuple(image.shape)} is not (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4")
    if t.shape[1] < 1 or t.shape[2] < 1:
        raise ImageError(f"image of shape {tuple(image.shape)} is empty")
    if t.shape[1] * t.shape[2] > MAX_PIXELS:
        raise ImageError(f"image of {t.shape[2]}x{t.shape[1]} pixels exceeds the {MAX_PIXELS // 1_000_000} MP limit")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype in (torch.uint16, torch.int32):  # 16-bit data (PIL mode "I" arrays are int32)
        t = t.float() / (65535.0 if t.dtype == torch.uint16 or t.max() > 255 else 255.0)
    elif t.dtype == torch.bool:
        t = t.float()
    elif t.is_floating_point():
        t = t.float()
        if not torch.isfinite(t).all():
            raise ImageError("image contains NaN or infinite values")
        if t.min() < 0 or t.max() > 1:
            raise ImageError(f"float image values must lie in [0, 1], got [{t.min():.3g}, {t.max():.3g}]; divide by 255 for 8-bit data")
    else:
        raise ImageError(f"unsupported image dtype {t.dtype}; use uint8, uint16, bool or float in [0, 1]")
    t = t[:3]
    return t.expand(3, -1, -1).contiguous()


def pad_batch(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of (3, h_i, w_i) -> images (B, 3, H, W) zero-padded bottom/right, mask (B, H, W) True at padding."""
    if not images:
        raise ValueError("pad_batch needs at least one image")
    H = max(int(im.shape[1]) for im in images)
    W = max(int(im.shape[2]) for im in images)
    out = images[0].new_zeros((len(images), 3, H, W))
    mask = torch.ones((len(images), H, W), dtype=torch.bool, device=images[0].device)
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
        mask[i, : im.shape[1], : im.shape[2]] = False
    return out, mask


def prepare(images, min_size: int, max_size: int, mean, std, device=None) -> Batch:
    """Convert, resize (official eval transform), normalize and pad a list of images."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise ValueError("no images given")
    resized, sizes, orig_sizes, originals = [], [], [], []
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    for i, img in enumerate(images):
        try:
            rgb = to_rgb_tensor(img)
        except ImageError as e:
            raise ImageError(f"image {i}: {e}") from None
        h0, w0 = rgb.shape[1:]
        h, w = resized_size(h0, w0, min_size, max_size)
        x = rgb
        if (h, w) != (h0, w0):
            x = F.interpolate(rgb[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        resized.append((x.clamp(0, 1) - mean_t) / std_t)
        sizes.append((h, w))
        orig_sizes.append((h0, w0))
        originals.append(rgb)
    batch_images, mask = pad_batch(resized)
    if device is not None:
        batch_images, mask = batch_images.to(device), mask.to(device)
    return Batch(batch_images, mask, sizes, orig_sizes, originals)
