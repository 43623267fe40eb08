"""RewardActor: a Ray shell over `medr3.rewards.scorer.RewardScorer`; several score shards of a batch in parallel."""

from __future__ import annotations

from pathlib import Path

import ray

from actors.cluster import actor_env
from medr3.config import RewardComposition, RewardConfig
from medr3.rewards.inputs import RewardInput
from medr3.rewards.scorer import BatchScores, RewardScorer


@ray.remote
class RewardActor:
    """One scorer per actor, so the embedder and vocabulary load once per actor and stay warm across steps."""

    def __init__(self, config: RewardConfig, corpus: str | Path = "data/corpus"):
        self.scorer = RewardScorer(config, corpus=corpus)

    def score(self, batch: list[RewardInput], composition: RewardComposition) -> BatchScores:
        return self.scorer.score(batch, composition)


def create_reward_actors(config: RewardConfig, corpus: str | Path) -> list:
    """`config.replicas` RewardActors, each reserving `config.num_cpus` / `config.num_gpus`."""
    options = {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus, "resources": config.resources}
    corpus = str(Path(corpus).resolve())  # an actor's working directory need not be the driver's
    return [
        RewardActor.options(**options, runtime_env=actor_env(f"reward-{i}")).remote(config, corpus)
        for i in range(config.replicas)
    ]


def score_batch(actors: list, batch: list[RewardInput], composition: RewardComposition) -> BatchScores:
    """Split `batch` into one contiguous shard per actor, score the shards in parallel, merge in order."""
    if not actors:
        raise ValueError("score_batch needs at least one RewardActor")
    size = -(-len(batch) // len(actors)) or 1
    shards = [batch[i : i + size] for i in range(0, len(batch), size)]
    refs = [actor.score.remote(shard, composition) for actor, shard in zip(actors, shards, strict=False)]
    return BatchScores.merge(ray.get(refs))
