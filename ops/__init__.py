"""Multi-scale deformable attention (Deformable DETR, arXiv 2010.04159, Eq. 3).

    from ops import ms_deform_attn
    out = ms_deform_attn(value, spatial_shapes, level_start_index,
                         sampling_locations, attention_weights)  # (B, Lq, M * D)

Importing the package builds the C++ (and, with a GPU and CUDA toolkit, the CUDA) kernels
once into ``ops/_build`` (``~/.cache/ddetr-ops`` when installed; ``$DDETR_OPS_BUILD_DIR``
overrides both) and loads them; ``python -m ops`` shows what is available and which
implementation runs. Without a compiler the pure-PyTorch reference runs, with one warning.
"""
from ops.ms_deform_attn import (
    KERNELS,
    KernelUnavailableWarning,
    MsDeformAttnGradients,
    implementation,
    ms_deform_attn,
    ms_deform_attn_backward,
)
from ops.reference import ms_deform_attn_reference

__all__ = [
    "KERNELS",
    "KernelUnavailableWarning",
    "MsDeformAttnGradients",
    "implementation",
    "ms_deform_attn",
    "ms_deform_attn_backward",
    "ms_deform_attn_reference",
]
