"""How well does a query teach? A measure of head specialisation, used to choose the Learn
view's teaching example (``scripts/find_teaching_example.py``) on purpose.

A good teaching query has heads that visibly differ: they look in different directions, at
different levels and at different distances, and no head puts nearly all its weight on one
point (then there is nothing to see but one dot). Per head m, from its weights A (L, P):

* direction: the weighted mean offset (image px) from the reference; the spread of the M
  directions is their circular variance, 1 - |mean of the unit vectors| (0 = all alike);
* level: the level holding most of the head's weight; diversity = distinct levels / L;
* distance: the weighted mean distance of the points; spread = std of log distance;
* concentration: the largest single weight; heads above 0.8 cost the score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .learn_focus import Focus


@dataclass
class Specialisation:
    direction_spread: float  # circular variance of the heads' mean-offset directions, in [0, 1]
    level_diversity: float  # distinct favourite levels / L, in (0, 1]
    distance_spread: float  # std over heads of log weighted mean distance
    max_weight: float  # largest single attention weight of any head
    directions_deg: np.ndarray  # (M,) each head's mean-offset direction, degrees, image frame (y down)
    levels: np.ndarray  # (M,) favourite level
    distances: np.ndarray  # (M,) weighted mean distance, image px

    @property
    def score(self) -> float:
        """Higher = more visibly specialised heads (each term in [0, ~1])."""
        return (self.direction_spread + self.level_diversity + min(self.distance_spread, 1.0)
                - 5.0 * max(0.0, self.max_weight - 0.8))


def specialisation(f: Focus) -> Specialisation:
    off = f.image_px - f.reference_image_px  # (M, L, P, 2)
    w = f.weights  # (M, L, P)
    mean_off = (w[..., None] * off).sum((1, 2))  # (M, 2)
    unit = mean_off / np.maximum(np.linalg.norm(mean_off, axis=-1, keepdims=True), 1e-9)
    dist = f.mean_distance()
    levels = f.level_mass().argmax(-1)
    return Specialisation(
        direction_spread=float(1.0 - np.linalg.norm(unit.mean(0))),
        level_diversity=float(len(np.unique(levels)) / f.n_levels),
        distance_spread=float(np.std(np.log(np.maximum(dist, 1e-3)))),
        max_weight=float(w.max()),
        directions_deg=np.degrees(np.arctan2(mean_off[:, 1], mean_off[:, 0])),
        levels=levels, distances=dist)


def specialisation_markdown(s: Specialisation) -> str:
    heads = "; ".join(f"head {m}: {d:.0f}°, level {l}, {r:.0f} px"
                      for m, (d, l, r) in enumerate(zip(s.directions_deg, s.levels, s.distances)))
    return (f"Head specialisation: direction spread {s.direction_spread:.2f} (0 = all heads look the same way), "
            f"{len(set(s.levels.tolist()))} distinct favourite levels, distance spread {s.distance_spread:.2f}, "
            f"largest weight {s.max_weight:.2f}. {heads}.")
