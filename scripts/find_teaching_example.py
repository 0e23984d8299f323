"""Choose the Learn view's teaching example on purpose: search synthetic scenes for a confident
detection whose decoder query has visibly specialised heads (``viz.learn_teaching``).

    python scripts/find_teaching_example.py --scenes 60 --out examples/teaching

Writes ``teaching.png`` (the scene) and ``teaching.json`` (the scene seed, the query, the
layer, its detection, the specialisation numbers and those of the runners-up) to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep on a shared CPU
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ddetr.capture import capture  # noqa: E402
from ddetr.checkpoint import load  # noqa: E402
from ddetr.data.synthetic import render_scene, scene_seed  # noqa: E402
from viz.learn_focus import focus  # noqa: E402
from viz.learn_teaching import specialisation  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "examples" / "default_model.safetensors"))
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--min-score", type=float, default=0.7)
    ap.add_argument("--layer", type=int, default=-1, help="decoder layer (-1: the last)")
    ap.add_argument("--out", default=str(ROOT / "examples" / "teaching"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, _ = load(args.model)
    found = []
    for i in range(args.scenes):
        s = scene_seed(args.seed, "teaching", i)
        image, _ = render_scene(s)
        with capture(model, encoder=False, queries="detections", self_attention=False) as session:
            dets = model.predict(image)[0]
        cap = session.last
        for q, score in zip(dets.query_index.tolist(), dets.scores.tolist()):
            if score < args.min_score:
                continue
            f = focus(cap, "decoder", args.layer, q)
            sp = specialisation(f)
            found.append(dict(index=i, scene_seed=int(s), query=int(q), layer=f.layer, label=f.label,
                              score=round(float(score), 4), specialisation=round(sp.score, 4),
                              direction_spread=round(sp.direction_spread, 4), level_diversity=sp.level_diversity,
                              distance_spread=round(sp.distance_spread, 4), max_weight=round(sp.max_weight, 4),
                              levels=sp.levels.tolist(), directions_deg=[round(float(d)) for d in sp.directions_deg],
                              distances_px=[round(float(d), 1) for d in sp.distances]))
        print(f"scene {i}: {len(found)} candidates so far", file=sys.stderr)
    if not found:
        raise SystemExit(f"no detection above --min-score {args.min_score} in {args.scenes} scenes")
    found.sort(key=lambda r: -r["specialisation"])
    best = found[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    render_scene(best["scene_seed"])[0].save(out / "teaching.png")
    doc = {"image": "teaching.png", "part": "decoder", "layer": best["layer"], "query": best["query"],
           "chosen": best, "runners_up": found[1:6], "searched_scenes": args.scenes, "candidates": len(found),
           "model": Path(args.model).name, "command": "python scripts/find_teaching_example.py "
           + " ".join(argv if argv is not None else sys.argv[1:])}
    (out / "teaching.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(best, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
