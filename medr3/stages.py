"""Stage scheduling: the deterministic data order of a stage, and the gate that ends a stage early.

Both are pure functions of (seed, stage, step), so a resumed job sees the same questions at the same step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from medr3.config import GateConfig
from medr3.data import Question


def batch_for_step(questions: Sequence[Question], stage: str, step: int, size: int, seed: int) -> list[Question]:
    """Questions of `step` (0-based): consecutive slices of a per-epoch shuffle of the stage's questions."""
    if not questions:
        raise ValueError(f"stage {stage!r} has no training questions")
    out = []
    start = step * size
    for pos in range(start, start + size):
        epoch, index = divmod(pos, len(questions))
        order = list(range(len(questions)))
        random.Random(f"{seed}/{stage}/{epoch}").shuffle(order)
        out.append(questions[order[index]])
    return out


class Gate:
    """Advance early when `metric` >= `threshold` for `patience` consecutive steps. `streak` is checkpointed."""

    def __init__(self, config: GateConfig | None, streak: int = 0):
        self.config, self.streak = config, streak

    def update(self, metrics: dict[str, float]) -> bool:
        if self.config is None:
            return False
        value = metrics.get(self.config.metric)
        if value is None:
            raise KeyError(f"gate metric {self.config.metric!r} is not among the step's metrics: {sorted(metrics)}")
        self.streak = self.streak + 1 if value >= self.config.threshold else 0
        return self.streak >= self.config.patience
