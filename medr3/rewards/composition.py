"""Combine per-term scores into one reward with a stage's `RewardComposition` (formula in its docstring)."""

from __future__ import annotations

from collections.abc import Mapping

from medr3.config import RewardComposition


def gain_weights(scores: Mapping[str, float | None], composition: RewardComposition) -> dict[str, float]:
    """The gain weights of the applicable terms, rescaled so they sum to the full gain weight: a skipped (None)
    term's weight is shared out proportionally, e.g. answer 1 + clinical 0.8 with no reference → answer 1.8."""
    present = {t: w for t, w in composition.gain.items() if scores.get(t) is not None}
    kept, full = sum(present.values()), sum(composition.gain.values())
    if kept <= 0:
        return {}
    return {t: w * full / kept for t, w in present.items()}


def compose(scores: Mapping[str, float | None], composition: RewardComposition) -> float:
    """``max(Σ gain·t, floor) − Σ penalty·(1 − t) + Σ shaping·t`` over the terms that apply (not None)."""
    gain = sum(w * scores[t] for t, w in gain_weights(scores, composition).items())
    if composition.floor is not None:
        gain = max(gain, composition.floor)
    penalty = sum(w * (1.0 - scores[t]) for t, w in composition.penalty.items() if scores.get(t) is not None)
    shaping = sum(w * scores[t] for t, w in composition.shaping.items() if scores.get(t) is not None)
    return gain - penalty + shaping
