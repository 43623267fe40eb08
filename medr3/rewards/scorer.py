"""`RewardScorer`: score a batch of trajectories with a stage's composition (the plain class behind RewardActor)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medr3.config import RewardComposition, RewardConfig
from medr3.embedder import CachedEmbedder, EmbedFn, load_embedder
from medr3.rewards.composition import compose
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.judge import JudgeClient
from medr3.rewards.registry import get_term
from medr3.rewards.vocabulary import Vocabulary, build_vocabulary

NEEDS_EMBEDDER = {"clinical_consistency"}
NEEDS_VOCABULARY = {"clinical_consistency", "evidence"}


@dataclass
class BatchScores:
    """Per-item results ``{"total": float, "terms": {name: float | None}}`` and batch counters (judge requests and
    failures). Shards from several actors combine with `merge`."""

    items: list[dict] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def totals(self) -> list[float]:
        return [item["total"] for item in self.items]

    def metrics(self) -> dict[str, float]:
        """`reward/total` and `reward/<term>` means (over items where the term applied), plus the counters."""
        out: dict[str, float] = {}
        if self.items:
            out["reward/total"] = sum(self.totals) / len(self.items)
        for name in dict.fromkeys(t for item in self.items for t in item["terms"]):
            values = [item["terms"][name] for item in self.items if item["terms"].get(name) is not None]
            if values:
                out[f"reward/{name}"] = sum(values) / len(values)
        return out | {k: float(v) for k, v in self.counters.items()}

    @staticmethod
    def merge(shards: list[BatchScores]) -> BatchScores:
        counters: dict[str, int] = {}
        for shard in shards:
            for key, value in shard.counters.items():
                counters[key] = counters.get(key, 0) + value
        return BatchScores([item for shard in shards for item in shard.items], counters)


class RewardScorer:
    """Scores trajectories. The embedder and the vocabulary are loaded once, on first need (a stage without
    clinical consistency never loads torch); tests inject fakes for both and a local judge callable."""

    def __init__(
        self,
        config: RewardConfig | None = None,
        corpus: str | Path = "data/corpus",
        embedder: EmbedFn | None = None,
        vocabulary: Vocabulary | None = None,
        judge: Callable[[str], str] | None = None,
    ):
        config = config or RewardConfig()
        self.corpus = Path(corpus)
        client = JudgeClient(config.judge, judge) if judge is not None or config.judge.url else None
        self.ctx = RewardContext(config, CachedEmbedder(embedder) if embedder else None, vocabulary, client)

    def score(self, batch: list[RewardInput], composition: RewardComposition) -> BatchScores:
        """Every term of `composition` for every item, and the composed total."""
        names = composition.term_names()
        terms = {name: get_term(name) for name in names}
        before = dict(self.ctx.judge.counters) if self.ctx.judge else {}
        self._prepare(set(names), batch)
        items = []
        for item in batch:
            scores = {name: _as_float(fn(item, self.ctx)) for name, fn in terms.items()}
            items.append({"total": compose(scores, composition), "terms": scores})
        counters = {k: v - before[k] for k, v in self.ctx.judge.counters.items()} if self.ctx.judge else {}
        return BatchScores(items, counters)

    def _prepare(self, names: set[str], batch: list[RewardInput]) -> None:
        if names & NEEDS_EMBEDDER and self.ctx.embedder is None:
            # Past the encoder's limit (256 word pieces for MiniLM) a text is cut: the start of a reasoning counts.
            self.ctx.embedder = CachedEmbedder(load_embedder(self.ctx.config.embedder).encode)
        if names & NEEDS_VOCABULARY and self.ctx.vocabulary is None:
            self.ctx.vocabulary = build_vocabulary(self.corpus)
        if "judge" in names and self.ctx.judge is not None:
            self.ctx.judge.reset()
            self.ctx.judge.prefetch([(item.question, item.parsed.answer) for item in batch])


def _as_float(value: float | None) -> float | None:
    return None if value is None else float(value)
