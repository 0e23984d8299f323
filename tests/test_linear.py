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
    with torch.no_grad():
        assert onednn_applies(x, layer.weight) == ("fp32" if linear._ONEDNN else None)
        assert not onednn_applies(x.double(), layer.weight.double())
        with torch.autocast("cpu", dtype=torch.float16):
            assert not onednn_applies(x, layer.weight)


@needs_onednn
def test_bfloat16_regions_give_autocasts_result_with_cached_weights():
    """Inside autocast(bfloat16): the result of autocast's own linear, bit for bit, and the
    weights' bfloat16 copy is made once and made again after the weights change."""
    torch.manual_seed(0)
    for n_in, n_out in ((256, 256), (256, 1024), (1024, 256), (32, 8)):
        layer = Linear(n_in, n_out)
        x = torch.randn(3, 500, n_in)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert onednn_applies(x, layer.weight) == "bf16"
            ours = layer(x)
            theirs = F.linear(x, layer.weight, layer.bias)
        assert ours.dtype == theirs.dtype == torch.bfloat16
        assert torch.equal(ours, theirs), (n_in, n_out)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
        first = layer.__dict__["_bf16"][1]
        layer(x)
        assert layer.__dict__["_bf16"][1] is first  # kept between regions
    with torch.no_grad():
        layer.weight.mul_(2)  # an optimizer step, a load: the copy is made again
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        again = layer(x)
        assert torch.equal(again, F.linear(x, layer.weight, layer.bias))


def test_state_dict_is_an_nn_linear_one():
    a, b = Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(6, 4)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-6, atol=1e-6)
