"""``ddetr.compile_model``: the compiled model gives eager's detections, in both precisions."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ddetr import build_model, compile_model, preset
from randomize import randomize


@pytest.mark.slow  # compiling takes ~30 s on 2 cores
def test_compiled_backbone_matches_eager():
    torch.manual_seed(0)
    eager = randomize(build_model(preset("small", d_model=64, dim_feedforward=128, backbone_width=16, enc_layers=1,
                                         dec_layers=1, num_queries=10, num_classes=3, min_size=64, max_size=96))).eval()
    compiled = compile_model(copy.deepcopy(eager))
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints unchanged
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for prec in ("fp32", "bf16"):
        (a,), (b,) = eager.predict(image, precision=prec), compiled.predict(image, precision=prec)
        tol = 1e-4 if prec == "fp32" else 0.05  # bf16: fused kernels round elsewhere
        torch.testing.assert_close(b.scores, a.scores, atol=tol, rtol=0)
        torch.testing.assert_close(b.boxes, a.boxes, atol=tol * 96, rtol=0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile


def test_unknown_part_is_refused():
    with pytest.raises(ValueError, match="'backbone', 'model'"):
        compile_model(torch.nn.Module(), parts="decoder")
