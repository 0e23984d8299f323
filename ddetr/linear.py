"""``Linear``: ``nn.Linear`` whose float32 CPU inference goes through oneDNN.

At 800x1333 an R50 encoder multiplies ~22,000 tokens by its projection and FFN weights six
times over: about 200 GFLOP, half of a float32 forward's time. PyTorch's ``F.linear`` on the
CPU runs that GEMM in its BLAS (MKL) and first copies the broadcast bias into the output;
oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``, what Inductor's CPU backend
calls for frozen linears) adds the bias inside the GEMM and, measured on this machine (2 cores
of an AMD EPYC, where MKL does not pick its fastest code path), is 1.5-2x faster at the encoder's
shapes with float32 accuracy (errors against float64 of the same size as MKL's).

Used only where it is a pure speed-up: CPU tensors, no autograd recording (training keeps
``F.linear`` and its backward), and only if this PyTorch build has the op. Inside a bfloat16
``torch.autocast`` region (``ddetr.precision``'s dense layers) the input is cast as autocast
would cast it and the weights' bfloat16 copy is kept between calls instead of made again in
every region; the result is autocast's, bit for bit. The
module is an ``nn.Linear`` in every other respect: parameter names, initialization, hooks and
checkpoints are unchanged. ``DDETR_LINEAR=aten`` turns it off (e.g. to compare).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN = (os.environ.get("DDETR_LINEAR", "onednn") != "aten" and torch.backends.mkldnn.is_available()
           and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """How ``Linear`` runs ``x``: "fp32" or "bf16" through oneDNN, None for ``F.linear``."""
    if not (_ONEDNN and x.device.type == "cpu" and weight.dtype == torch.float32 and x.dim() >= 2
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return None
    if torch.is_autocast_enabled("cpu"):
        # autocast's own bfloat16 linear, minus its per-region cast of the weight (the result
        # is the same, bit for bit: tests/test_linear.py)
        ok = torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
        return "bf16" if ok else None
    return "fp32" if x.dtype == torch.float32 else None


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        how = onednn_applies(x, self.weight)
        if how == "fp32":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        if how == "bf16":
            w, b = self._bfloat16_weights()
            return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), w, b, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _bfloat16_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias rounded to bfloat16, kept until the parameters change (a load,
        an optimizer step: their version counters move)."""
        key = (self.weight.data_ptr(), self.weight._version,
               None if self.bias is None else (self.bias.data_ptr(), self.bias._version))
        cached = self.__dict__.get("_bf16")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                b = None if self.bias is None else self.bias.to(torch.bfloat16)
                cached = self.__dict__["_bf16"] = (key, self.weight.to(torch.bfloat16), b)
        return cached[1], cached[2]
