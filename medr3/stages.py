"""Stage scheduling: the deterministic data order of a stage, and the gate that ends a stage early.

Both are pure functions of (seed, stage, step), so a resumed job sees the same questions at the same step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class QuestionPool:
    """A stage's training questions, file by file, and how a step draws from them.

    Without weights the files are pooled: `batch_for_step` over all their questions, so a file holds the share of
    the prompts it holds of the questions. With weights, a smooth weighted round robin picks the file of every prompt
    position (so the shares hold within each step, not only on average: weights 1 and 1 with 2 prompts a step draw
    one from each) and each file is walked in its own per-epoch shuffle.
    """

    files: tuple[tuple[Question, ...], ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.weights is not None and len(self.weights) != len(self.files):
            raise ValueError(f"{len(self.weights)} weights for {len(self.files)} files")
        empty = [i for i, f in enumerate(self.files) if not f and self.weights is not None]
        if empty:
            raise ValueError(f"train file {empty[0] + 1} of the stage has a weight but no questions")

    def __len__(self) -> int:
        return sum(map(len, self.files))

    def describe(self) -> str:
        """ "N questions", and how the files share the prompts when they have weights."""
        if self.weights is None:
            return f"{len(self)} questions"
        shares = ", ".join(f"{len(f)} at weight {w:g}" for f, w in zip(self.files, self.weights))
        return f"{len(self)} questions ({shares})"

    def batch(self, stage: str, step: int, size: int, seed: int) -> list[Question]:
        """Questions of `step` (0-based), a pure function of (seed, stage, step) as a resume needs."""
        if self.weights is None:
            return batch_for_step([q for f in self.files for q in f], stage, step, size, seed)
        picks = _round_robin(self.weights, (step + 1) * size)
        out = []
        for pos in range(step * size, (step + 1) * size):
            file = picks[pos]
            out += batch_for_step(self.files[file], f"{stage}/{file}", picks[:pos].count(file), 1, seed)
        return out


def _round_robin(weights: Sequence[float], n: int) -> list[int]:
    """The first `n` picks of smooth weighted round robin: each pick adds every weight to its file's credit and takes
    the file with the most credit (the first on a tie), which then pays the total back."""
    credit, total, picks = [0.0] * len(weights), sum(weights), []
    for _ in range(n):
        credit = [c + w for c, w in zip(credit, weights)]
        best = max(range(len(weights)), key=lambda i: (credit[i], -i))
        credit[best] -= total
        picks.append(best)
    return picks


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
