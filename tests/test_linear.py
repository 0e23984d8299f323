"""ddetr.linear.Linear: oneDNN's fused linear at float32 CPU inference, nn.Linear elsewhere."""
import pytest
import torch
import torch.nn.functional as F

from ddetr import linear
from ddetr.linear import Linear, onednn_applies

needs_onednn = pytest.mark.skipif(not linear._ONEDNN, reason="this PyTorch build has no oneDNN linear")


def ops_called(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@needs_onednn
def test_inference_goes_through_onednn_with_float32_accuracy():
    torch.manual_seed(0)
    layer = Linear(256, 96)
    x = torch.randn(2, 700, 256)
    with torch.inference_mode():
        ours = layer(x)
        assert "mkldnn::_linear_pointwise" in ops_called(lambda: layer(x))
    exact = F.linear(x.double(), layer.weight.double(), layer.bias.double())
    aten = F.linear(x, layer.weight, layer.bias)
    # as accurate as PyTorch's own float32 linear, measured against float64
    assert (ours.double() - exact).abs().max() <= 4 * (aten.double() - exact).abs().max() + 1e-6
    assert ours.shape == (2, 700, 96)


def test_training_and_autocast_keep_torch_linear():
    torch.manual_seed(0)
    layer = Linear(32, 8)
    x = torch.randn(5, 32, requires_grad=True)
    assert not onednn_applies(x, layer.weight)  # autograd records: F.linear and its backward
    y = layer(x)
    y.sum().backward()
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(5, 32))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_applies(x, layer.weight)
        assert layer(x).dtype == torch.bfloat16  # autocast still casts
    with torch.no_grad():
        assert onednn_applies(x, layer.weight) == linear._ONEDNN
        assert not onednn_applies(x.double(), layer.weight.double())


def test_state_dict_is_an_nn_linear_one():
    a, b = Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(6, 4)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-6, atol=1e-6)
