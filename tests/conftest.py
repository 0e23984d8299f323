"""Shared test setup: the repository on sys.path, CPU threads that sleep when idle, and the
fixtures of the viz tests."""
import dataclasses
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ddetr.openmp import sleep_when_idle  # noqa: E402

# Before torch is imported anywhere: tests share 2 cores with each other's subprocesses, and
# spinning OpenMP teams slow everything down many times over (see ddetr/openmp.py).
sleep_when_idle()
os.environ.setdefault("OMP_NUM_THREADS", "2")


# ----------------------------------------------------------------------------- viz fixtures
EXAMPLE_MODEL = ROOT / "examples" / "default_model.safetensors"


def example_image():
    """The first shipped synthetic example, else a synthetic scene drawn here."""
    from PIL import Image

    files = sorted((ROOT / "examples" / "synthetic").glob("*.png"))
    if files:
        return Image.open(files[0]).convert("RGB")
    from ddetr.data.synthetic import render_scene

    return render_scene(7)[0]


def default_model():
    """The shipped default model when present, else the small preset with random weights.

    An untrained model's attention is uniform (the weight projection starts at zero) and its
    boxes ignore the image (the last box layer starts at zero), so the random fallback
    perturbs both: weights then differ and colour ranges are not degenerate.
    """
    import torch

    import ddetr
    from ddetr.attention import MSDeformAttn

    if EXAMPLE_MODEL.exists():
        model, _ = ddetr.load(str(EXAMPLE_MODEL))
        return model.eval()
    torch.manual_seed(0)
    model = ddetr.build_model(ddetr.preset("small", num_classes=8)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MSDeformAttn):
                m.attention_weights.weight.normal_(0.0, 0.05)
                m.sampling_offsets.weight.normal_(0.0, 0.02)
        for head in model.bbox_embed:
            head.layers[-1].weight.normal_(0.0, 0.01)
    return model


@dataclasses.dataclass
class Captured:
    """The default model, an example image, its capture saved to ``path`` and read back
    (what ``python -m viz --capture`` draws)."""

    model: object
    image: object
    capture: object
    path: Path


@pytest.fixture(scope="session")
def captured(tmp_path_factory) -> Captured:
    import torch

    from ddetr.capture import Capture, capture

    torch.set_num_threads(2)
    model, image = default_model(), example_image()
    with capture(model) as session:
        model.predict(image)
    path = tmp_path_factory.mktemp("viz") / "capture.npz"
    session.captures[0].save(path)
    return Captured(model, image, Capture.load(path), path)
