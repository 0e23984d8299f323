"""Deformable DETR Explorer: the launcher. The page is ``explorer.page.build_demo``, its tabs
the registry in ``explorer.views``, the session state is owned by ``explorer.session.Explorer``;
the command line and the serving policy are ``explorer.cli`` and ``explorer.serving``.

    python app.py                               # the shipped model, http://127.0.0.1:7860
    python app.py --checkpoint r50.pth          # any format ddetr.checkpoint.load knows
    python app.py --checkpoint-dir runs/        # a dropdown of the checkpoints found there
    python app.py --random-weights              # an untrained `small` model, clearly labelled

The model runs once per image under ``ddetr.capture``; every change of view re-renders from
that capture (kept server-side in ``explorer.state.SessionStore``). Clicks arrive as
``gr.Image.select`` events, which ``gradio_client`` cannot send, so each select handler is a
thin wrapper over a plain endpoint taking (x, y) in original-image pixels (``/click``).
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
# Before torch starts OpenMP: idle OpenMP threads sleep instead of spinning. A server shares its
# cores (with other requests, other programs); on a busy 2-core machine spinning teams made the
# small model's forward 30x slower (3 s instead of 0.1 s, bench/app.py). Override in the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from explorer.cli import (DEFAULT_CHECKPOINT, GET_MODEL, MAX_FILE_SIZE, _shown, launch_kwargs,  # noqa: E402,F401
                          main, make_demo, parse_args, random_model, startup_model)
from explorer.examples import find_examples  # noqa: E402,F401
from explorer.page import CSS, build_demo  # noqa: E402,F401
from explorer.status import model_header, plain_header  # noqa: E402,F401
from explorer.views import TABS  # noqa: E402,F401


def __getattr__(name: str):
    # ``demo`` at module level as in Gradio's demo/*/run.py (``gradio app.py`` reload mode finds
    # it), built on first access only: importing app.py in tests must not load the checkpoint.
    if name == "demo":
        d = make_demo(parse_args([]))
        globals()["demo"] = d
        return d
    raise AttributeError(name)


if __name__ == "__main__":
    main()
