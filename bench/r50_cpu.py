"""R50 Deformable DETR at 800x1333: ours in float32 and bfloat16 against transformers (float32),
with the same weights, measured side by side in one run; plus the accuracy of bfloat16.

Timing (default): the multi-scale R50 (official architecture) on one 800x1333 image, batch 1.
Weights are random (the official initialization, with sampling offsets and attention weights
moved off their structured start, so points spread as a trained model's do) and copied into
transformers' ``DeformableDetrForObjectDetection`` with ``ddetr.checkpoint_hf.ours_to_hf``.
The three forwards run interleaved, ``--repeats`` rounds, so that the load of a shared machine
hits all of them alike; medians and ratios are printed. Goals: ours bf16 >= 4x transformers,
ours fp32 >= 2.5x. Where the CPU has no native bfloat16 (AVX-512 BF16 or AMX), the bfloat16
column is skipped and the output says so.

Accuracy (``--accuracy``): for the three R50 variants (multi_scale, box_refine, two_stage) with
random weights (``tests/randomize.py``), ``ddetr.precision.agreement`` on one 800x1333 image:
every captured sampling location (level pixels; goal <= 0.05), encoder and decoder apart, and
the boxes of fp32's top-100 detections against the bf16 boxes of the same queries (pixels;
goal <= 1), and fp32's top-100 detections matched one-to-one (Hungarian on the L1 box
distance, labels kept) to bf16's top-100: the largest and median coordinate difference, and
the fraction matched to the same label. Two-stage queries are a top-k over encoder scores;
where the precisions pick different ones, the decoder and same-query boxes are not compared
and the matched detections are the comparison. Then the same on a trained model with box
refinement and two-stage proposals (the shipped default model, its scenes scaled to 800x1333):
the boxes of the detections a user is shown (score >= 0.3), matched one-to-one to bf16's.

    python bench/r50_cpu.py                      # timing, 3 rounds
    python bench/r50_cpu.py --accuracy           # bf16 vs fp32, three variants
    python bench/r50_cpu.py --profile fp32       # torch.profiler table of one forward
    python bench/r50_cpu.py --device cuda        # the same comparison on a GPU
    python bench/r50_cpu.py --compile            # eager vs torch.compile'd backbone, compile time
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py: before torch is imported
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ddetr  # noqa: E402
from ddetr import precision  # noqa: E402

H, W = 800, 1333


def r50(variant: str = "multi_scale", seed: int = 0) -> ddetr.DeformableDETR:
    """An R50 model whose sampling offsets and attention weights are off their structured init."""
    torch.manual_seed(seed)
    model = ddetr.build_model(ddetr.preset(variant)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "sampling_offsets" in n or "attention_weights" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def transformers_twin(model):
    import transformers

    from ddetr import checkpoint_hf as hf

    cfg = transformers.DeformableDetrConfig(**hf.hf_config_dict(model.cfg))
    theirs = transformers.DeformableDetrForObjectDetection(cfg).eval()
    theirs.load_state_dict(hf.ours_to_hf(model.state_dict(), names="v5", backbone="timm"), strict=True)
    return theirs, transformers.__version__


def interleaved(runs: dict, repeats: int, sync=lambda: None) -> tuple[dict, dict, dict[str, list[float]]]:
    """Call every function of ``runs`` once (its output and first-call seconds kept), then
    ``repeats`` rounds of all of them in turn, so that a shared machine's load hits all alike.
    ``sync`` waits for a device's queued work (a GPU's work is timed to its end, not its launch).
    Returns (outputs, first-call seconds, seconds of each round) by name."""
    outputs, first, times = {}, {}, {k: [] for k in runs}
    with torch.inference_mode():
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            sync()
            first[name] = time.perf_counter() - t0
        for _ in range(repeats):
            for name, fn in runs.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    return outputs, first, times


def timing(repeats: int, device: str = "cpu") -> None:
    ours = r50().to(device)
    theirs, version = transformers_twin(ours)
    theirs.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, H, W, generator=g).to(device)
    mask = torch.zeros(1, H, W, dtype=torch.bool, device=device)
    note = precision.bf16_speed_note(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    if note:
        print(f"bfloat16: skipped, {note}")

    def ours_in(prec, model=ours):  # noqa: B008
        def run():
            with precision.use(prec):
                return model(x, mask)
        return run

    runs = {"ours fp32": ours_in("fp32")}
    if not note:
        runs["ours bf16"] = ours_in("bf16")
    runs[f"transformers {version} fp32"] = lambda: theirs(pixel_values=x, pixel_mask=(~mask).long())
    outputs, _, times = interleaved(runs, repeats, sync)  # the first call warms up (allocator, oneDNN)
    med = {k: statistics.median(v) for k, v in times.items()}
    theirs_name = next(k for k in runs if k.startswith("transformers"))
    ref = outputs["ours fp32"].logits
    where = (torch.cuda.get_device_name(device) if torch.device(device).type == "cuda"
             else f"{torch.get_num_threads()} CPU threads")
    print(f"R50 multi-scale, {H}x{W}, batch 1, {where}, "
          f"op: {__import__('ops').implementation()}, {repeats} interleaved rounds (median)")
    for name, t in med.items():
        out = outputs[name]
        logits = out.logits if hasattr(out, "logits") else out["logits"]
        print(f"  {name:<30} {t:6.2f} s  (runs {', '.join(f'{s:.2f}' for s in times[name])})  "
              f"{med[theirs_name] / t:5.2f}x vs transformers  max|logit - ours fp32| "
              f"{(logits.float() - ref).abs().max().item():.1e}")
    print(f"goals: ours fp32 >= 2.5x transformers: {med[theirs_name] / med['ours fp32']:.2f}x"
          + ("" if note else f"; ours bf16 >= 4x: {med[theirs_name] / med['ours bf16']:.2f}x"))


def compiled(repeats: int, parts: str) -> None:
    """Ours eager against ours with ``ddetr.compile_model(parts=...)``, fp32 and bf16, interleaved."""
    import copy

    eager = r50()
    comp = ddetr.compile_model(copy.deepcopy(eager), parts)
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    precs = ["fp32"] + ([] if precision.bf16_speed_note("cpu") else ["bf16"])
    runs = {}
    for prec in precs:
        for kind, model in (("eager", eager), (f"compiled {parts}", comp)):
            def run(model=model, prec=prec):
                with precision.use(prec):
                    return model(x, mask)
            runs[f"ours {prec} {kind}"] = run
    outputs, first, times = interleaved(runs, repeats)  # the compiled ones compile in their first call
    print(f"torch.compile (ddetr.compile_model, parts={parts!r}, Inductor freezing), R50 multi-scale {H}x{W}, "
          f"batch 1, {torch.get_num_threads()} threads, {repeats} interleaved rounds (median)")
    for prec in precs:
        e, c = f"ours {prec} eager", f"ours {prec} compiled {parts}"
        te, tc = statistics.median(times[e]), statistics.median(times[c])
        diff = (outputs[c].logits.float() - outputs[e].logits.float()).abs().max().item()
        print(f"  {prec}: eager {te:5.2f} s (first call {first[e]:5.1f} s); compiled {tc:5.2f} s (first call, "
              f"compiling: {first[c]:6.1f} s); eager/compiled {te / tc:4.2f}x; max|logit - eager| {diff:.1e}")


def accuracy(variants: list[str]) -> None:
    from randomize import randomize

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    print(f"bfloat16 against float32 (ddetr.precision.agreement), random-weight R50 variants, one {H}x{W} image")
    for variant in variants:
        torch.manual_seed(0)
        model = randomize(ddetr.build_model(ddetr.preset(variant))).eval()
        r = precision.agreement(model, image)
        dec = "not compared" if r.decoder_level_px is None else f"{r.decoder_level_px:.4f}"
        boxes = "not compared" if r.boxes_px is None else f"{r.boxes_px:.3f} px"
        print(f"  {variant:<24} sampling locations (goal <= 0.05 level px): encoder {r.encoder_level_px:.4f}, "
              f"decoder {dec}; same two-stage queries {r.same_proposals:.0%}\n"
              f"  {'':<24} boxes (goal <= 1 px): same queries {boxes}; top-100 detections matched one-to-one: "
              f"max {r.matched_px:.3f} px, median {r.matched_median_px:.3f} px, same label {r.matched_same_label:.0%}; "
              f"same top-100 {r.same_detections:.0%}; distinct fp32 boxes {r.distinct_boxes}",
              flush=True)
    trained()


def trained(threshold: float = 0.3) -> None:
    """The same comparison on a trained model with box refinement and two-stage proposals (the
    shipped default model, its held-out scenes scaled to 800x1333): the detections a user is
    shown (score >= ``threshold``) matched one-to-one to bf16's top 200."""
    from PIL import Image

    from ddetr.precision import match_detections

    path = ROOT / "examples" / "default_model.safetensors"
    if not path.exists():
        print("trained model: examples/default_model.safetensors is missing; skipped")
        return
    model = ddetr.load(path)[0].eval()
    print(f"trained model ({path.name}: {model.cfg.variant}, box refinement {model.cfg.with_box_refine}, "
          f"two-stage {model.cfg.two_stage}), scenes scaled to {W}x{H}, detections >= {threshold}:")
    for scene in sorted((ROOT / "examples" / "synthetic").glob("*.png")):
        image = Image.open(scene).convert("RGB").resize((W, H))
        with torch.inference_mode():
            a = model.predict(image, precision="fp32", score_threshold=threshold)[0]
            b = model.predict(image, precision="bf16", top_k=2 * model.cfg.top_k)[0]
        err, same = match_detections(a.boxes.numpy(), a.labels.numpy(), b.boxes.numpy(), b.labels.numpy())
        print(f"  {scene.name}: {len(a.boxes)} detections, boxes within {err.max():.3f} px (goal <= 1), "
              f"same label {same.mean():.0%}", flush=True)


def profile(prec: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = r50()
    x = torch.randn(1, 3, H, W)
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    with torch.inference_mode(), precision.use(prec):
        model(x, mask)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x, mask)
    print(f"ours {prec}, R50 multi-scale {H}x{W}, {torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument("--device", default="cpu", help="timing on this device (e.g. cuda: the GPU comparison)")
    ap.add_argument("--accuracy", action="store_true", help="bf16 vs fp32 boxes and sampling locations")
    ap.add_argument("--variants", nargs="+", default=["multi_scale", "multi_scale_box_refine", "multi_scale_two_stage"])
    ap.add_argument("--compile", nargs="?", const="backbone", choices=("backbone", "model"),
                    help="eager against ddetr.compile_model(parts=...) (default: the backbone)")
    ap.add_argument("--profile", choices=precision.PRECISIONS, help="print a torch.profiler table instead")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.profile)
    elif args.compile:
        compiled(args.repeats, args.compile)
    elif args.accuracy:
        accuracy(args.variants)
    else:
        timing(args.repeats, args.device)


if __name__ == "__main__":
    main()
