"""The ``Capture`` record (what one image's forward did, read back in every frame) and its
file: one self-contained ``.npz`` (arrays + JSON header + the image as PNG).

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
import torch
from PIL import Image

from .capture_html import capture_html
from .config import label_name
from .frames import Geometry, sampling_locations
from .postprocess import Detections

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


class Capture:
    """What one image's forward pass did: sampling of every stored layer, boxes and scores of
    every decoder layer, two-stage proposals, detections, geometry and the original image.

    ``arrays`` (numpy, keys below; N = stored rows: Lv tokens or the selected queries)::

        enc/{i}/offsets (Lv, M, L, P, 2)  enc/{i}/weights (Lv, M, L, P)  enc/{i}/references (Lv, L, 2)
        dec/{i}/offsets (Qs, M, L, P, 2)  dec/{i}/weights (Qs, M, L, P)  dec/{i}/references (Qs, L, 2|4)
        dec/{i}/self_attention (M, Qs, Q)   dec/query_index (Qs,)   padding_mask (Lv,)
        layer/{i}/boxes (Q, 4) cxcywh [0, 1]  layer/{i}/logits (Q, K)  layer/{i}/reference (Q, 2|4)
        det/boxes (N, 4) xyxy px  det/scores  det/labels  det/query_index
        proposals/boxes (Lv, 4)  proposals/scores (Lv,)  proposals/valid (Lv,)  proposals/index (Q,)

    Offsets and references are the op-frame factors of the locations (see the module
    docstring); ``sampling`` and the ``*_points`` accessors give locations in every frame.
    ``image`` is the original image, (h0, w0, 3) uint8; ``meta`` the JSON-able metadata.
    """

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray], image: np.ndarray):
        # A JSON round trip makes an in-memory capture's metadata equal to a re-loaded one's.
        self.meta = json.loads(json.dumps(meta))
        self.arrays, self.image = arrays, image
        self.geometry = Geometry.from_dict(meta["geometry"])

    # --- file ---
    def save(self, path, compress: bool = False) -> None:
        """Write one self-contained ``.npz`` (arrays, JSON metadata, PNG image)."""
        save_capture(path, self.meta, self.arrays, self.image, compress)

    @classmethod
    def load(cls, path) -> "Capture":
        """Read a file written by ``save``; ``CaptureFileError`` if it is not one."""
        meta, arrays, image = load_capture(path)
        return cls(meta, arrays, image)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Capture):
            return NotImplemented
        if self.meta != other.meta or set(self.arrays) != set(other.arrays):
            return False
        if self.image.shape != other.image.shape or not np.array_equal(self.image, other.image):
            return False
        return all(a.dtype == other.arrays[k].dtype and a.shape == other.arrays[k].shape
                   and np.array_equal(a, other.arrays[k], equal_nan=a.dtype.kind == "f")
                   for k, a in self.arrays.items())

    __hash__ = None

    # --- facts ---
    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()) + self.image.nbytes)

    @property
    def left_out(self) -> list[str]:
        return list(self.meta["left_out"])

    @property
    def encoder_layers(self) -> list[int]:
        return list(self.meta["encoder_layers"])

    @property
    def decoder_layers(self) -> list[int]:
        return list(self.meta["decoder_layers"])

    @property
    def levels(self) -> list[dict]:
        """Per level: index, padded size (height, width), valid size, stride, first token."""
        g = self.geometry
        vh = np.round(g.valid_wh[:, ::-1]).astype(int)
        return [{"level": lvl, "height": int(H), "width": int(W), "valid_height": int(vh[lvl, 0]),
                 "valid_width": int(vh[lvl, 1]), "stride": g.strides[lvl], "start": int(g.level_start_index[lvl])}
                for lvl, (H, W) in enumerate(g.spatial_shapes.tolist())]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def label_name(self, label: int) -> str:
        """The name of class id ``label`` (``config.label_name``)."""
        return label_name(self.meta["class_names"], label)

    @property
    def detections(self) -> Detections:
        """The model's top-k detections (``top_k`` of the config, no threshold; use ``.above``)."""
        a = self.arrays
        labels = a["det/labels"]
        names = [self.label_name(i) for i in labels.tolist()]
        return Detections(torch.from_numpy(a["det/boxes"]), torch.from_numpy(a["det/scores"]),
                          torch.from_numpy(labels), names, torch.from_numpy(a["det/query_index"]))

    # --- sampling ---
    def _part(self, part: str, layer: int) -> str:
        key = {"encoder": "enc", "enc": "enc", "decoder": "dec", "dec": "dec"}.get(part)
        if key is None:
            raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
        stored = self.meta["encoder_layers" if key == "enc" else "decoder_layers"]
        if layer not in stored:
            name = f"{'encoder' if key == 'enc' else 'decoder'} layer {layer} "
            why = "; ".join(s for s in self.left_out if name in s)
            raise KeyError(f"{part} layer {layer} was not captured (stored: {stored})"
                           + (f": {why}" if why else "; pass it in capture(..., encoder=/decoder=)"))
        return f"{key}/{layer}"

    def sampling(self, part: str, layer: int, rows=None) -> dict[str, np.ndarray | None]:
        """Op-frame arrays of one layer: locations (N, M, L, P, 2) float32, weights (N, M, L, P),
        offsets (N, M, L, P, 2) raw, references (N, L, 2|4); ``rows`` selects stored rows."""
        prefix = self._part(part, layer)
        sel = slice(None) if rows is None else rows
        a = self.arrays
        weights = a[f"{prefix}/weights"][sel].astype(np.float32)
        if f"{prefix}/locations" in a:
            return {"locations": a[f"{prefix}/locations"][sel], "weights": weights, "offsets": None, "references": None}
        ref = a[f"{prefix}/references"][sel]
        off = a[f"{prefix}/offsets"][sel].astype(np.float32)
        loc = sampling_locations(torch.from_numpy(np.ascontiguousarray(ref))[None],
                                      torch.from_numpy(np.ascontiguousarray(off))[None],
                                      torch.from_numpy(self.geometry.spatial_shapes), off.shape[-2])[0]
        return {"locations": loc.numpy(), "weights": weights, "offsets": off, "references": ref}

    def points(self, part: str, layer: int, row: int) -> dict[str, np.ndarray | None]:
        """One stored row (token or query position) in every frame:
        locations (M, L, P, 2) op frame, level_px, image_px, weights (M, L, P), offsets (raw),
        offsets_level_px, offsets_image_px, reference (L, 2|4) op frame, reference_image_px
        (L, 2) points or (L, 4) cxcywh boxes in image pixels."""
        s = self.sampling(part, layer, slice(row, row + 1))
        g = self.geometry
        loc = s["locations"][0]
        out = {"locations": loc, "level_px": g.to_level(loc), "image_px": g.to_image(loc), "weights": s["weights"][0],
               "offsets": None, "offsets_level_px": None, "offsets_image_px": None,
               "reference": None, "reference_image_px": None}
        if s["references"] is not None:
            ref = s["references"][0]
            off = g.offsets(loc, ref[None, :, None])
            out.update(offsets=s["offsets"][0], offsets_level_px=off["level_px"], offsets_image_px=off["image_px"],
                       reference=ref, reference_image_px=g.reference_to_image(ref))
        return out

    def decoder_points(self, layer: int, query: int) -> dict:
        """``points`` of decoder ``query`` at ``layer``, plus its output box (xyxy image
        pixels), top score and label at that layer, and self-attention (M, Q) if stored."""
        prefix = self._part("decoder", layer)
        qi = self.arrays["dec/query_index"]
        pos = np.flatnonzero(qi == query)
        if pos.size == 0:
            raise KeyError(f"query {query} was not captured ({qi.size} queries stored, selection "
                           f"{self.meta['queries']!r}); capture with queries=None to keep all")
        out = self.points("decoder", layer, int(pos[0]))
        scores = 1 / (1 + np.exp(-self.arrays[f"layer/{layer}/logits"][query].astype(np.float64)))
        box = self.geometry.box_to_image(self.arrays[f"layer/{layer}/boxes"][query])
        out.update(query=int(query), box_image_px=box, label=int(scores.argmax()), score=float(scores.max()))
        sa = self.arrays.get(f"{prefix}/self_attention")
        out["self_attention"] = None if sa is None else sa[:, int(pos[0])].astype(np.float32)
        return out

    def encoder_points(self, layer: int, x: float, y: float, level: int = 0) -> dict:
        """``points`` of the level-``level`` encoder token whose cell holds original-image
        point (x, y), plus token, level, cell (ix, iy) and the token's own image position."""
        token = self.geometry.nearest_token(x, y, level)
        out = self.points("encoder", layer, token)
        lvl, ix, iy = self.geometry.token_cell(token)
        out.update(token=token, level=lvl, cell=(ix, iy), token_image_px=self.geometry.token_image_px(token))
        return out

    def trajectory(self, query: int) -> dict[str, np.ndarray]:
        """Refinement trajectory of one query over the D decoder layers, in image pixels:
        reference_points (D, 2) the centre of each layer's input reference; reference_boxes
        (D, 4) cxcywh of that reference when it is a box, NaN while it is a point; boxes (D, 4)
        each layer's output box xyxy; scores, labels (D,) its top class per layer."""
        D, g = self.meta["dec_layers"], self.geometry
        wh4 = np.tile(g.orig_wh, 2)
        ref_points, ref_boxes = np.zeros((D, 2)), np.full((D, 4), np.nan)
        boxes, scores, labels = np.zeros((D, 4)), np.zeros(D), np.zeros(D, dtype=np.int64)
        for i in range(D):
            r = self.arrays[f"layer/{i}/reference"][query].astype(np.float64)  # (2,) point or (4,) box
            r = r * wh4[: r.shape[-1]]
            ref_points[i] = r[:2]
            if r.shape[-1] == 4:
                ref_boxes[i] = r
            boxes[i] = g.box_to_image(self.arrays[f"layer/{i}/boxes"][query])
            s = 1 / (1 + np.exp(-self.arrays[f"layer/{i}/logits"][query].astype(np.float64)))
            scores[i], labels[i] = s.max(), s.argmax()
        return {"reference_points": ref_points, "reference_boxes": ref_boxes,
                "boxes": boxes, "scores": scores, "labels": labels}

    def summary(self) -> str:
        """What was stored, what was left out and why, and the size."""
        m, g = self.meta, self.geometry
        (h0, w0), (h, w), (H, W) = g.orig_size, g.input_size, g.padded_size
        Lv = int(g.spatial_shapes.prod(1).sum())
        lines = [f"capture of a {w0}x{h0} image (resized {w}x{h}, padded {W}x{H}), {m['variant']}, "
                 f"{m['dtype']}, {self.nbytes / 1e6:.1f} MB",
                 f"levels (W x H): {', '.join(f'{x}x{y}' for y, x in g.spatial_shapes.tolist())}; "
                 f"{m['n_heads']} heads x {m['n_levels']} levels x {m['n_points']} points"]
        enc = m["encoder_layers"]
        lines.append(f"encoder: layers {enc} of {m['enc_layers']}, all {Lv} tokens" if enc
                     else "encoder: nothing stored")
        dec = m["decoder_layers"]
        if dec or m["self_attention_layers"]:
            n = self.arrays["dec/query_index"].size
            lines.append(f"decoder: sampling layers {dec} of {m['dec_layers']}, {n} of {m['num_queries']} queries "
                         f"({m['queries']}); self-attention layers {m['self_attention_layers']}")
        else:
            lines.append("decoder sampling: nothing stored")
        lines.append(f"boxes, scores and references of all {m['num_queries']} queries at every decoder layer")
        if "proposals/boxes" in self.arrays:
            lines.append(f"two-stage: {int(self.arrays['proposals/valid'].sum())} valid proposals of {Lv}, "
                         f"{self.arrays['proposals/index'].size} became queries")
        det = self.detections
        if len(det):
            lines.append(f"{len(det)} detections (top-{m['top_k']}); best {det.label_names[0]} "
                         f"{float(det.scores[0]):.3f}")
        lines += [f"left out: {s}" for s in m["left_out"]] or ["left out: nothing"]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Jupyter's view: the summary and a Figure-6 sketch of the best detection."""
        return capture_html(self)

    def __repr__(self) -> str:
        g = self.geometry
        return (f"Capture({self.meta['variant']}, image {g.orig_size[1]}x{g.orig_size[0]}, "
                f"encoder {self.encoder_layers}, decoder {self.decoder_layers}, {self.nbytes / 1e6:.1f} MB)")
