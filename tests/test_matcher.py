"""HungarianMatcher: batched == per image, optimality, empty targets, perfect predictions."""
import itertools

import pytest
import torch

from ddetr.matcher import HungarianMatcher, focal_class_cost


def _targets(sizes, K, gen):
    out = []
    for n in sizes:
        cxcy = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        out.append({"labels": torch.randint(0, K, (n,), generator=gen), "boxes": torch.cat([cxcy, wh], 1)})
    return out


def _predictions(B, Q, K, gen):
    logits = torch.randn(B, Q, K, generator=gen)
    boxes = torch.cat([torch.rand(B, Q, 2, generator=gen) * 0.8 + 0.1,
                       torch.rand(B, Q, 2, generator=gen) * 0.4 + 0.02], -1)
    return logits, boxes


def test_batched_equals_one_by_one():
    gen = torch.Generator().manual_seed(0)
    B, Q, K = 4, 12, 5
    logits, boxes = _predictions(B, Q, K, gen)
    targets = _targets([3, 0, 7, 12], K, gen)
    matcher = HungarianMatcher()
    batched = matcher(logits, boxes, targets)
    for b in range(B):
        (q1, t1), = matcher(logits[b:b + 1], boxes[b:b + 1], targets[b:b + 1])
        q, t = batched[b]
        assert q.dtype == t.dtype == torch.int64
        assert len(q) == len(t) == min(Q, len(targets[b]["labels"]))
        assert torch.equal(q, q1) and torch.equal(t, t1)
        assert len(set(q.tolist())) == len(q) and len(set(t.tolist())) == len(t)  # one-to-one


def test_matching_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(1)
    Q, N, K = 5, 3, 4
    logits, boxes = _predictions(1, Q, K, gen)
    targets = _targets([N], K, gen)
    matcher = HungarianMatcher()
    cost = matcher.cost_matrix(logits, boxes, targets)[0]  # (Q, N)
    (q, t), = matcher(logits, boxes, targets)
    found = cost[q, t].sum()
    best = min(sum(cost[perm[j], j] for j in range(N)) for perm in itertools.permutations(range(Q), N))
    assert found == pytest.approx(float(best), abs=1e-5)


def test_cost_terms_match_the_official_formula():
    gen = torch.Generator().manual_seed(2)
    logits, boxes = _predictions(1, 6, 3, gen)
    targets = _targets([4], 3, gen)
    prob = logits[0].sigmoid()
    labels = targets[0]["labels"]
    alpha, gamma = 0.25, 2.0
    neg = (1 - alpha) * (prob ** gamma) * (-(1 - prob + 1e-8).log())
    pos = alpha * ((1 - prob) ** gamma) * (-(prob + 1e-8).log())
    expected = pos[:, labels] - neg[:, labels]
    torch.testing.assert_close(focal_class_cost(prob, labels), expected)
    class_only = HungarianMatcher(cost_class=1, cost_bbox=0, cost_giou=0)
    torch.testing.assert_close(class_only.cost_matrix(logits, boxes, targets)[0], expected)
    l1_only = HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0)
    l1 = (boxes[0][:, None] - targets[0]["boxes"][None]).abs().sum(-1)
    torch.testing.assert_close(l1_only.cost_matrix(logits, boxes, targets)[0], l1)


def test_empty_targets():
    gen = torch.Generator().manual_seed(3)
    logits, boxes = _predictions(2, 8, 3, gen)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for targets in ([empty, empty], [empty, _targets([2], 3, gen)[0]]):
        matches = HungarianMatcher()(logits, boxes, targets)
        assert len(matches) == 2
        q, t = matches[0]
        assert q.numel() == t.numel() == 0 and q.dtype == t.dtype == torch.int64
    assert len(matches[1][0]) == 2


def test_perfect_prediction_is_matched_to_itself():
    gen = torch.Generator().manual_seed(4)
    Q, K = 20, 6
    targets = _targets([5], K, gen)
    slots = torch.randperm(Q, generator=gen)[:5]  # the queries that hold the objects
    logits, boxes = _predictions(1, Q, K, gen)
    logits[:] = -6.0
    logits[0, slots, targets[0]["labels"]] = 6.0
    boxes[0, slots] = targets[0]["boxes"]
    (q, t), = HungarianMatcher()(logits, boxes, targets)
    assert torch.equal(slots[t], q)  # target t[i] sits in query q[i]


def test_wrong_number_of_targets_and_nan_are_clear_errors():
    logits, boxes = _predictions(2, 4, 3, torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="one target dict per image"):
        HungarianMatcher()(logits, boxes, _targets([1], 3, torch.Generator()))
    boxes[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        HungarianMatcher()(logits, boxes, _targets([1, 1], 3, torch.Generator()))
