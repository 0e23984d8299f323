"""The Checkpoint tab: per-image diagnostics at once, the calibrated checkpoint-level verdict
over the example images after its Diagnose button, and the loading report with file facts."""
from __future__ import annotations

from pathlib import Path

import torch

import ddetr
from explorer.models import LoadedModel, ModelRegistry
from explorer.session import Explorer
from explorer.state import SessionStore

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "default_model.safetensors"
SCENES = sorted((ROOT / "examples" / "synthetic").glob("*.png"))[:3]


def test_diagnose_button_gives_the_checkpoint_level_verdict():
    torch.set_num_threads(2)
    model, report = ddetr.load(SHIPPED)
    x = Explorer(ModelRegistry(LoadedModel("shipped", model, report)), SessionStore(),
                 {"synthetic": {p.name: p for p in SCENES}})
    s = x.store.create("shipped")
    x.run(s, SCENES[0], example=SCENES[0].name)
    before = x.draw_tab(s, "checkpoint")
    assert before.note.startswith("**This image only**") and "SHA-256" in before.body
    assert "8 classes (9 logits; id 0 unused)" in before.body and str(ROOT) not in before.body
    runs = x.model_of(s).runs
    after = x.run_action(s, "checkpoint")
    assert x.model_of(s).runs == runs + len(SCENES)
    assert after.note.startswith("**Over the example images.**") and "Verdict: OK" in after.note
    assert f"over {len(SCENES)} image(s)" in after.note
