"""Measure the diagnostic signals on healthy and faulty checkpoints: the numbers behind the
thresholds in ``ddetr/diagnostics.py``.

    python scripts/calibrate_diagnostics.py [--healthy CKPT ...] [--images DIR] [--max-images N]

Healthy: the shipped model plus every ``--healthy`` checkpoint (e.g. short fine-tunes of it
with other seeds, training snapshots). Faulty: each fault of ``ddetr.faults`` injected into
the shipped model, and an untrained model of the same architecture. For each check the script
prints the worst value over the model (the value nearest the fault side), the verdict and, for
faults, whether the fault was named as a problem at its location.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import ddetr  # noqa: E402
from ddetr import faults
from ddetr.assets import default_checkpoint
from ddetr.diagnose import default_images, read_images
from ddetr.diagnostics import (attention_modules, diagnose, head_strength, level_embed_spread, measure,
                               offset_change)

SHIPPED = default_checkpoint()


def signals(model, stats) -> dict[str, float]:
    """Worst value of each check's signal over the whole model."""
    mods = attention_modules(model)
    enc = [stats.layer(p, i) for p, i in stats.keys() if p == "encoder"]
    dec = [stats.layer(p, i) for p, i in stats.keys() if p == "decoder"]
    return {
        "offsets_at_init (min)": min(offset_change(m) for _, _, m in mods),
        "uniform_heads (max)": max(float(s["entropy"].max()) for s in enc + dec),
        "dead_heads (min)": min(float(head_strength(m).min()) for _, _, m in mods),
        "starved_levels encoder (min)": min(float(s["level_mass"].min()) for s in enc),
        "starved_levels decoder (min)": min(float(s["level_mass"].min()) for s in dec),
        "points_outside encoder (max)": max(float(s["wasted"].mean()) for s in enc),
        "points_outside decoder (max)": max(float(s["wasted"].mean()) for s in dec),
        "level_embed_collapsed (min)": level_embed_spread(model),
        "references_saturated (max)": max(stats.saturation().values(), default=0.0),
        "class_head_silent (min)": stats.top_score_max,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--healthy", nargs="*", default=[], help="more healthy checkpoints")
    ap.add_argument("--images", help="folder of images (default: the shipped examples)")
    ap.add_argument("--max-images", type=int, default=10)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    images = read_images(args.images, args.max_images) if args.images else default_images(args.max_images)
    print(f"{len(images)} images")
    rows = []
    shipped, _ = ddetr.load(SHIPPED)
    for path in [str(SHIPPED), *args.healthy]:
        model = shipped if path == str(SHIPPED) else ddetr.load(path)[0]
        stats = measure(model, images)
        label = f"{Path(path).parent.name}/{Path(path).name}"
        rows.append(("healthy", label, signals(model, stats), diagnose(model, stats), None))
    untrained = ddetr.build_model(shipped.cfg).eval()
    stats = measure(untrained, images)
    rows.append(("untrained", "random init", signals(untrained, stats), diagnose(untrained, stats), None))
    for model, fault in faults.inject_all(shipped):
        stats = measure(model, images)
        rows.append(("fault", fault.name, signals(model, stats), diagnose(model, stats), fault))
    names = list(rows[0][2])
    for n in names:
        print(f"\n{n}")
        for kind, label, sig, d, fault in rows:
            extra = "" if fault is None else f"  named: {faults.named(d, fault)}"
            print(f"  {kind:9s} {label:48s} {sig[n]:10.4g}  verdict {d.verdict}{extra}")
    healthy = [r for r in rows if r[0] == "healthy"]
    print("\nhealthy verdicts:", ", ".join(f"{r[1]}={r[3].verdict}" for r in healthy))
    print("faults named:", sum(faults.named(r[3], r[4]) for r in rows if r[4] is not None), "of",
          sum(r[4] is not None for r in rows))
    for kind, label, _, d, _ in rows:
        if d.verdict != "ok" and kind == "healthy" or kind == "untrained":
            print(f"\n{label} ({kind}):\n{d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
