"""Test helper: weights moved off their structured initialization."""
import torch


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every tensor away from its structured init (zero offsets, uniform attention, zero box
    deltas would make outputs agree trivially), keeping shared tensors shared."""
    g = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if id(t) in seen or not t.is_floating_point():
                continue
            seen.add(id(t))
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif "backbone" in name and t.dim() == 1 and name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)
            else:
                t.add_(torch.randn(t.shape, generator=g) * (0.05 if t.dim() > 1 else 0.02))
    return module
