"""SetCriterion: focal loss value, official normalisation, aux/enc terms, weights, overfitting."""
import os
import tempfile
from types import SimpleNamespace

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from ddetr.criterion import SetCriterion, average_num_boxes, sigmoid_focal_loss


def _layer(B, Q, K, gen, requires_grad=False):
    logits = torch.randn(B, Q, K, generator=gen)
    boxes = torch.cat([torch.rand(B, Q, 2, generator=gen) * 0.6 + 0.2,
                       torch.rand(B, Q, 2, generator=gen) * 0.3 + 0.05], -1)
    return SimpleNamespace(logits=logits.requires_grad_(requires_grad), boxes=boxes.requires_grad_(requires_grad))


def _targets(sizes, K, gen):
    return [{"labels": torch.randint(0, K, (n,), generator=gen),
             "boxes": torch.cat([torch.rand(n, 2, generator=gen) * 0.6 + 0.2,
                                 torch.rand(n, 2, generator=gen) * 0.3 + 0.05], 1)} for n in sizes]


def _output(B=2, Q=10, K=4, n_aux=2, S=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    last = _layer(B, Q, K, gen, True)
    return SimpleNamespace(logits=last.logits, boxes=last.boxes,
                           aux=[_layer(B, Q, K, gen, True) for _ in range(n_aux)],
                           enc=_layer(B, S, K, gen, True) if S else None)


def test_focal_loss_matches_direct_formula_and_torchvision():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, generator=gen)
    t = (torch.rand(2, 7, 3, generator=gen) > 0.7).float()
    p = x.sigmoid()
    direct = -(0.25 * t * (1 - p) ** 2 * p.log() + 0.75 * (1 - t) * p ** 2 * (1 - p).log()).sum() / 3.0
    ours = sigmoid_focal_loss(x, t, num_boxes=3.0)
    torch.testing.assert_close(ours, direct)
    torch.testing.assert_close(ours, tv_focal(x, t, alpha=0.25, gamma=2, reduction="sum") / 3.0)
    # The official form: loss.mean(1).sum() / num_boxes, times num_queries in loss_labels.
    official = tv_focal(x, t, 0.25, 2, reduction="none").mean(1).sum() / 3.0 * x.shape[1]
    torch.testing.assert_close(ours, official)


def test_term_names_weights_and_total():
    out = _output(n_aux=2, S=30)
    targets = _targets([3, 1], 4, torch.Generator().manual_seed(1))
    crit = SetCriterion(num_classes=4)
    losses = crit(out, targets)
    for suffix in ("", "_0", "_1", "_enc"):
        for name in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
            assert name + suffix in losses
    assert "class_error" in losses and "loss_ce_2" not in losses
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    expected = sum({"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2}[k.rsplit("_", 1)[0] if k.endswith(("_0", "_1", "_enc")) else k] * v
                   for k, v in losses.items() if k.startswith("loss_"))
    total = crit.weighted_total(losses)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert out.logits.grad.abs().sum() > 0 and out.aux[0].boxes.grad.abs().sum() > 0
    assert out.enc.logits.grad.abs().sum() > 0
    assert not losses["cardinality_error"].requires_grad and not losses["class_error"].requires_grad


def test_box_losses_match_formula_for_matched_pairs():
    out = _output(B=1, Q=6, K=3, n_aux=0, seed=2)
    targets = _targets([2], 3, torch.Generator().manual_seed(3))
    crit = SetCriterion(num_classes=3)
    (q, t), = crit.matcher(out.logits, out.boxes, targets)
    losses = crit(out, targets)
    l1 = (out.boxes[0, q] - targets[0]["boxes"][t]).abs().sum() / 2
    torch.testing.assert_close(losses["loss_bbox"], l1)
    onehot = torch.zeros_like(out.logits)
    onehot[0, q, targets[0]["labels"][t]] = 1
    torch.testing.assert_close(losses["loss_ce"], tv_focal(out.logits, onehot, 0.25, 2, "sum") / 2)


def test_perfect_prediction_has_zero_box_loss():
    gen = torch.Generator().manual_seed(4)
    targets = _targets([3], 5, gen)
    logits = torch.full((1, 8, 5), -8.0)
    boxes = torch.rand(1, 8, 4, generator=gen) * 0.2 + 0.1
    logits[0, [1, 4, 6], targets[0]["labels"]] = 8.0
    boxes[0, [1, 4, 6]] = targets[0]["boxes"]
    losses = SetCriterion(5)(SimpleNamespace(logits=logits, boxes=boxes, aux=[], enc=None), targets)
    assert losses["loss_bbox"].item() == pytest.approx(0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0, abs=1e-6)
    assert losses["loss_ce"].item() < 1e-4
    assert losses["class_error"].item() == 0 and losses["cardinality_error"].item() == 0


def test_encoder_loss_ignores_classes():
    out = _output(B=2, Q=5, K=4, n_aux=0, S=40, seed=5)
    targets = _targets([2, 3], 4, torch.Generator().manual_seed(6))
    relabelled = [{"labels": (t["labels"] + 1) % 4, "boxes": t["boxes"]} for t in targets]
    crit = SetCriterion(4)
    a, b = crit(out, targets), crit(out, relabelled)
    for k in ("loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"):
        torch.testing.assert_close(a[k], b[k])
    assert not torch.allclose(a["loss_ce"], b["loss_ce"])


def test_empty_targets_give_finite_losses_and_gradients():
    out = _output(B=2, Q=6, K=3, n_aux=1, S=12, seed=7)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    crit = SetCriterion(3)
    losses = crit(out, empty)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    total = crit.weighted_total(losses)
    assert torch.isfinite(total)
    total.backward()  # all queries pushed towards background
    assert (out.logits.grad > 0).all()


def test_bad_labels_are_a_clear_error():
    out = _output(B=1, Q=4, K=3, n_aux=0)
    bad = [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(3)(out, bad)


def _num_boxes_worker(rank, world, init_file, result_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    targets = [{"labels": torch.zeros(n, dtype=torch.int64)} for n in ([1, 2] if rank == 0 else [5])]
    n = average_num_boxes(targets, torch.device("cpu"))
    torch.save(n, f"{result_file}.{rank}")
    torch.distributed.destroy_process_group()


def test_num_boxes_is_averaged_over_workers():
    with tempfile.TemporaryDirectory() as d:
        # fork: no re-import of torch in the children (no CUDA is initialised in this test process)
        torch.multiprocessing.start_processes(_num_boxes_worker, nprocs=2, start_method="fork",
                                              args=(2, os.path.join(d, "init"), os.path.join(d, "n")))
        assert [torch.load(os.path.join(d, f"n.{r}")) for r in range(2)] == [4.0, 4.0]  # (3 + 5) / 2
    assert average_num_boxes([{"labels": torch.zeros(0)}], torch.device("cpu")) == 1.0  # clamped


def test_total_decreases_when_overfitting_one_image():
    from ddetr.config import preset
    from ddetr.model import build_model

    torch.manual_seed(0)
    cfg = preset("small", num_classes=4, d_model=32, dim_feedforward=64, enc_layers=1, dec_layers=2,
                 num_queries=10, backbone_width=8, backbone_blocks=(1, 1, 1, 1))
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(8)
    image = torch.rand(1, 3, 64, 80, generator=gen)
    image[:, :, 10:40, 20:50] = 1.0  # a white square on noise
    mask = torch.zeros(1, 64, 80, dtype=torch.bool)
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[35 / 80, 25 / 64, 30 / 80, 30 / 64]])}]
    crit = SetCriterion(4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(40):
        losses = crit(model(image, mask), targets)
        total = crit.weighted_total(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert set(losses) >= {"loss_ce_0", "loss_ce_enc"}  # the small preset: aux + two-stage terms
    assert totals[-1] < 0.5 * totals[0], totals
