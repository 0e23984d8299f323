"""``torch.compile`` for inference, on the parts where it pays.

``compile_model(model)`` compiles the ResNet body in place (``nn.Module.compile``: parameter
names, checkpoints and hooks on other modules are unchanged). The backbone is a static chain
of convolutions, batch-norm folds and ReLUs that Inductor hands to oneDNN with the
elementwise tails fused; it is also some 60% of an R50 forward's time in float32. The
transformer is left eager by default: its shapes change with every image size, its op is a
custom kernel compile cannot speed up, and captures hook its attention modules. ``parts=
"model"`` compiles everything (slow to compile on CPU: tens of minutes for R50 on 2 cores).

Inductor's freezing is on (``options={"freezing": True}``): under ``torch.inference_mode``
(``predict``) the weights become constants, so the batch-norm folds and the bfloat16 casts
of the weights are computed once at compile time and oneDNN gets prepacked weights. The
compiled part therefore must not be trained or have its weights replaced afterwards:
compile a model for inference, after loading its checkpoint.

Compilation happens on the first call for each input shape and precision (Dynamo guards on
both), so the first ``predict`` of a size is slow and the later ones are not; ``dynamic=None``
(default) lets a second image size recompile once with symbolic sizes.

Measured (``python bench/r50_cpu.py --compile``, R50 800x1333, 2 shared cores, fresh Inductor
cache): compiling the backbone takes 22 s (fp32) and 27 s (bf16) on the first call; the
steady forward is as fast as eager (eager/compiled 0.99x fp32, 1.04x bf16), because eager
already runs the convolutions in oneDNN, channels-last, with batch norm folded. So it stays
an option, off by default.
"""
from __future__ import annotations

PARTS = ("backbone", "model")


def compile_model(model, parts: str = "backbone", *, mode: str | None = None, dynamic: bool | None = None):
    """Compile ``model``'s ``parts`` in place with ``torch.compile(mode=mode, dynamic=dynamic)``
    and return the model. ``parts``: "backbone" (the ResNet body) or "model" (the whole forward)."""
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {', '.join(map(repr, PARTS))}, got {parts!r}")
    target = model if parts == "model" else model.backbone[0].body
    target.compile(mode=mode, dynamic=dynamic, options={"freezing": True})
    return model
