"""``Linear``: ``nn.Linear`` whose float32 CPU inference goes through oneDNN.

At 800x1333 an R50 encoder multiplies ~22,000 tokens by its projection and FFN weights six
times over: about 200 GFLOP, half of a float32 forward's time. PyTorch's ``F.linear`` on the
CPU runs that GEMM in its BLAS (MKL) and first copies the broadcast bias into the output;
oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``, what Inductor's CPU backend
calls for frozen linears) adds the bias inside the GEMM and, measured on this machine (2 cores
of an AMD EPYC, where MKL does not pick its fastest code path), is 1.5-2x faster at the encoder's
shapes with float32 accuracy (errors against float64 of the same size as MKL's).

Used only where it is a pure speed-up: float32 CPU tensors, no autograd recording (training
keeps ``F.linear`` and its backward), outside ``torch.autocast`` (the bfloat16 regions of
``ddetr.precision`` keep autocast's casting), and only if this PyTorch build has the op. The
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


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``Linear`` sends ``x`` through oneDNN (see the module's docstring)."""
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() >= 2 and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_applies(x, self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
