"""Coordinate frames of sampling locations, computed in one place.

A sampling location leaves the op as ``u`` in [0, 1] of a level's *padded* feature map
(``op`` frame: what ``ops.ms_deform_attn`` read). This module maps it to

* ``level`` pixels: ``u * (W_l, H_l)`` on level l's feature map, and
* ``image`` pixels of the original (un-resized) image: ``u / valid_ratio_l * (w0, h0)``,

and back, plus offsets (location minus reference) in both pixel frames.

Convention: every pixel frame is *continuous with edges at integers*: 0 is the left/top edge
of pixel 0, pixel i spans [i, i + 1) and its centre is i + 0.5, so the pixel holding a point
is ``floor(x)``. It is the convention of ``grid_sample(align_corners=False)``, of the model's
normalized boxes and of ``Detections`` boxes, so level and image frames differ by a pure scale
(no half-pixel shifts) and sampling points, references and boxes overlay without correction.
With matplotlib draw images with ``imshow(img, extent=(0, w, h, 0))``.

Which image mapping is the truth? The model's own. It never sees the padded input size: a
reference point (cx, cy) in [0, 1] of the *unpadded* image enters the op as ``(cx, cy) *
valid_ratio_l`` (``DeformableDecoder``), encoder tokens sit at ``(i + 0.5) / valid_W_l``
(``encoder_reference_points``) and two-stage proposals at the same place. So the valid part of
every level is stretched onto the whole resized image, whatever the rounding of the strided
convolutions; boxes, references and sampling points then agree. ``image`` below is that mapping.

The backbone's geometry tells a slightly different story (``receptive_field_image``): a cell i
of a stride-s map is computed from input pixels centred on pixel s * i, i.e. at s * i + 0.5,
not at the cell centre s * (i + 0.5) (every convolution pads (k - 1) / 2 and strides from pixel
0), and the valid part spans ceil(w / s) * s >= w input pixels. The two frames differ by up to
(s - 1) / 2 pixels (31.5 at stride 64); the model was trained with the first, which is why
captures report it; the second is offered for readers who ask what the convolutions saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _per_level(values: np.ndarray, ndim: int, level_axis: int) -> np.ndarray:
    """Reshape (L, 2) per-level pairs to broadcast against an array of ``ndim`` dims whose
    level axis is ``level_axis`` (negative, counted from the end, the x/y axis being -1)."""
    if level_axis >= -1:
        raise ValueError(f"level_axis must be <= -2 (the last axis holds x, y), got {level_axis}")
    shape = [1] * ndim
    shape[level_axis] = values.shape[0]
    shape[-1] = 2
    return values.reshape(shape)


def sampling_locations(reference_points: torch.Tensor, offsets: torch.Tensor, spatial_shapes: torch.Tensor,
                       n_points: int) -> torch.Tensor:
    """The op-frame locations from their factors: the official formula. ``MSDeformAttn``
    calls this very function; it lives here, in a module that needs no op, so that a saved
    capture is decoded without importing the model or building the op.

    reference_points (B, Lq, L, 2 | 4); offsets (B, Lq, M, L, P, 2); spatial_shapes (L, 2).
    Points: ref + offset / (W_l, H_l). Boxes: centre + offset / P * wh / 2.
    Returns (B, Lq, M, L, P, 2).
    """
    if reference_points.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)  # (L, 2)
        # ref + offsets / normalizer, bit for bit, in one pass with a last dimension of P * 2
        # instead of 2: broadcasting over a last dimension of 2 kept the two elementwise ops
        # unvectorized (R50 encoder at 800x1333: 8 ms -> 1 ms a layer; bench/r50_cpu.py --profile).
        B, Lq, M, L, P, _ = offsets.shape
        ref = reference_points[:, :, None, :, None, :].expand(B, Lq, 1, L, P, 2).reshape(B, Lq, 1, L, P * 2)
        norm = normalizer[:, None, :].expand(L, P, 2).reshape(L, P * 2)
        return torch.addcdiv(ref, offsets.reshape(B, Lq, M, L, P * 2), norm).view(B, Lq, M, L, P, 2)
    if reference_points.shape[-1] == 4:
        return (
            reference_points[:, :, None, :, None, :2]
            + offsets / n_points * reference_points[:, :, None, :, None, 2:] * 0.5
        )
    raise ValueError(f"reference_points must end in 2 or 4 coordinates, got shape {tuple(reference_points.shape)}")


def box_cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """(..., 4) cx, cy, w, h -> (..., 4) x0, y0, x1, y1."""
    b = np.asarray(b)
    c, wh = b[..., :2], b[..., 2:]
    return np.concatenate([c - wh / 2, c + wh / 2], -1)


@dataclass(frozen=True)
class Geometry:
    """Everything needed to move a location between frames, for one image.

    spatial_shapes (L, 2) rows (H_l, W_l) of the padded level maps; valid_ratios (L, 2) as
    (w, h) fractions of each level map that hold image (from the model); input_size (h, w)
    after resize, before padding; padded_size (H, W) of the batch tensor; orig_size (h0, w0);
    strides (L,) of the levels in input pixels (8, 16, 32, 64 for the R50 multi-scale model).
    """

    spatial_shapes: np.ndarray
    valid_ratios: np.ndarray
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    orig_size: tuple[int, int]
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial_shapes", np.asarray(self.spatial_shapes, dtype=np.int64).reshape(-1, 2))
        object.__setattr__(self, "valid_ratios", np.asarray(self.valid_ratios, dtype=np.float64).reshape(-1, 2))
        if self.spatial_shapes.shape != self.valid_ratios.shape:
            raise ValueError(f"spatial_shapes {self.spatial_shapes.shape} and valid_ratios "
                             f"{self.valid_ratios.shape} must both be (L, 2)")
        for name in ("input_size", "padded_size", "orig_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))

    # ----- per-level facts -----
    @property
    def n_levels(self) -> int:
        return int(self.spatial_shapes.shape[0])

    @property
    def level_wh(self) -> np.ndarray:
        """(L, 2) padded map sizes, x first: (W_l, H_l)."""
        return self.spatial_shapes[:, ::-1].astype(np.float64)

    @property
    def level_start_index(self) -> np.ndarray:
        """(L,) offset of each level in the flattened token sequence."""
        sizes = self.spatial_shapes.prod(1)
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def valid_wh(self) -> np.ndarray:
        """(L, 2) the valid (non-padding) extent of each level map in level pixels, (w, h)."""
        return self.valid_ratios * self.level_wh

    @property
    def orig_wh(self) -> np.ndarray:
        return np.array(self.orig_size[::-1], dtype=np.float64)

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): resized / original."""
        (h, w), (h0, w0) = self.input_size, self.orig_size
        return h / h0, w / w0

    # ----- op frame <-> level pixels -----
    def to_level(self, u, level_axis: int = -3) -> np.ndarray:
        """op-frame locations (..., L, [P,] 2) -> level pixels; ``level_axis`` locates L."""
        u = np.asarray(u, dtype=np.float64)
        return u * _per_level(self.level_wh, u.ndim, level_axis)

    def from_level(self, x, level_axis: int = -3) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / _per_level(self.level_wh, x.ndim, level_axis)

    # ----- op frame <-> original-image pixels (the model's own mapping) -----
    def to_image(self, u, level_axis: int = -3) -> np.ndarray:
        """op-frame locations (..., L, [P,] 2) -> original-image pixels (x, y).

        u / valid_ratio_l is the location as a fraction of the unpadded image (the frame of
        the model's boxes); times (w0, h0) gives original pixels.
        """
        u = np.asarray(u, dtype=np.float64)
        return u / _per_level(self.valid_ratios, u.ndim, level_axis) * self.orig_wh

    def from_image(self, x, level_axis: int = -3) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / self.orig_wh * _per_level(self.valid_ratios, x.ndim, level_axis)

    def level_to_image(self, x, level: int) -> np.ndarray:
        """Level-``level`` pixels (..., 2) -> original-image pixels (..., 2)."""
        return np.asarray(x, dtype=np.float64) / self.valid_wh[level] * self.orig_wh

    def image_to_level(self, x, level: int) -> np.ndarray:
        """Original-image pixels (..., 2) -> level-``level`` pixels (..., 2)."""
        return np.asarray(x, dtype=np.float64) / self.orig_wh * self.valid_wh[level]

    def receptive_field_image(self, x, level: int) -> np.ndarray:
        """Level pixels (..., 2) -> original-image pixels by the backbone's convolution geometry.

        The receptive field of cell i of a stride-s map is centred on input pixel s * i (edge
        frame s * i + 0.5); a continuous level coordinate x maps to s * (x - 0.5) + 0.5 of the
        resized input, then to the original by the resize scale. Not the frame the model
        assumes (see the module docstring); offered for comparison.
        """
        s = self.strides[level]
        sy, sx = self.scale
        x_in = s * (np.asarray(x, dtype=np.float64) - 0.5) + 0.5
        return x_in / np.array([sx, sy])

    # ----- references, offsets, boxes -----
    @staticmethod
    def reference_centre(ref) -> np.ndarray:
        """references (..., 2 | 4) -> (..., 2): the point itself, or the box centre."""
        return np.asarray(ref)[..., :2]

    def reference_to_image(self, ref, level_axis: int = -2) -> np.ndarray:
        """op-frame references (..., L, 2 | 4) -> image pixels: points (x, y) or boxes cxcywh."""
        ref = np.asarray(ref, dtype=np.float64)
        if ref.shape[-1] == 2:
            return self.to_image(ref, level_axis)
        vr = _per_level(self.valid_ratios, ref.ndim, level_axis)
        vr4 = np.concatenate([vr, vr], -1)
        return ref / vr4 * np.concatenate([self.orig_wh, self.orig_wh])

    def offsets(self, locations, references, level_axis: int = -3) -> dict[str, np.ndarray]:
        """Location minus its reference centre, in level and in image pixels.

        locations (..., L, P, 2) op frame; references (..., L, 2 | 4) op frame (broadcast over
        M and P by the caller: pass ``references[:, None, :, None]`` for (Lq, M, L, P, 2)).
        For point references the level-pixel offset is the raw ``sampling_offsets`` output
        (``sampling_locations``); for box references it is not (the raw
        offset is in units of the box half-size / P).
        """
        centre = self.reference_centre(references)
        return {
            "level_px": self.to_level(locations, level_axis) - self.to_level(centre, level_axis),
            "image_px": self.to_image(locations, level_axis) - self.to_image(centre, level_axis),
        }

    def box_to_image(self, boxes) -> np.ndarray:
        """Model boxes (..., 4) cxcywh in [0, 1] of the unpadded image -> xyxy original pixels."""
        return box_cxcywh_to_xyxy(np.asarray(boxes, dtype=np.float64)) * np.tile(self.orig_wh, 2)

    # ----- tokens -----
    def token_cell(self, token: int) -> tuple[int, int, int]:
        """Flat token index -> (level, ix, iy)."""
        lsi = self.level_start_index
        if not 0 <= token < int(self.spatial_shapes.prod(1).sum()):
            raise IndexError(f"token {token} out of range 0..{int(self.spatial_shapes.prod(1).sum()) - 1}")
        level = int(np.searchsorted(lsi, token, side="right") - 1)
        iy, ix = divmod(token - int(lsi[level]), int(self.spatial_shapes[level, 1]))
        return level, ix, iy

    def token_index(self, level: int, ix: int, iy: int) -> int:
        H, W = (int(v) for v in self.spatial_shapes[level])
        if not (0 <= ix < W and 0 <= iy < H):
            raise IndexError(f"cell ({ix}, {iy}) outside level {level} of size {W}x{H}")
        return int(self.level_start_index[level]) + iy * W + ix

    def nearest_token(self, x: float, y: float, level: int) -> int:
        """The level-``level`` token whose cell holds original-image point (x, y) (clamped to
        the valid part of the map, so a point on the image never picks a padding token)."""
        if not 0 <= level < self.n_levels:
            raise IndexError(f"level {level} out of range 0..{self.n_levels - 1}")
        lx, ly = self.image_to_level([x, y], level)
        vw, vh = np.maximum(np.round(self.valid_wh[level]).astype(int), 1)
        ix = int(np.clip(np.floor(lx), 0, vw - 1))
        iy = int(np.clip(np.floor(ly), 0, vh - 1))
        return self.token_index(level, ix, iy)

    def token_image_px(self, token: int) -> np.ndarray:
        """Image-pixel (x, y) of a token's cell centre, as the encoder's reference point puts it."""
        level, ix, iy = self.token_cell(token)
        return self.level_to_image(np.array([ix + 0.5, iy + 0.5]), level)

    def to_dict(self) -> dict:
        """JSON-able; the derived entries (level_start_index, scale, padding, valid_sizes) are
        written for readers without this package and ignored by ``from_dict``."""
        (h, w), (H, W) = self.input_size, self.padded_size
        return {
            "spatial_shapes": self.spatial_shapes.tolist(),
            "valid_ratios": self.valid_ratios.tolist(),
            "input_size": list(self.input_size),
            "padded_size": list(self.padded_size),
            "orig_size": list(self.orig_size),
            "strides": list(self.strides),
            "level_start_index": self.level_start_index.tolist(),
            "scale": list(self.scale),
            "padding": [H - h, W - w],  # bottom, right (input pixels)
            "valid_sizes": np.round(self.valid_wh[:, ::-1]).astype(int).tolist(),  # (h, w) per level
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(d["spatial_shapes"], d["valid_ratios"], d["input_size"], d["padded_size"],
                   d["orig_size"], d["strides"])
