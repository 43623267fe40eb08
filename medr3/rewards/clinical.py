"""Clinical consistency: how well the reasoning agrees with verified reference reasoning (the release's reasoning
reward, weighted 0.8 in its composition)."""

from __future__ import annotations

import numpy as np

from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.registry import register_reward
from medr3.rewards.text import jaccard


def concept_path(entities: list[str]) -> set[frozenset[str]]:
    """The reasoning's concept path as a set of steps: unordered pairs of consecutive distinct entities.

    "anemia → reticulocytopenia → parvovirus" gives {anemia–reticulocytopenia, reticulocytopenia–parvovirus};
    two reasonings that link the same concepts in the same chain share steps even if worded differently.
    """
    path = [e for i, e in enumerate(entities) if i == 0 or e != entities[i - 1]]
    return {frozenset(pair) for pair in zip(path, path[1:], strict=False) if pair[0] != pair[1]}


def agreement(think: str, reference: str, think_vec: np.ndarray, ref_vec: np.ndarray, ctx: RewardContext) -> float:
    """Range [0, 1]: mean of entity-set Jaccard, embedding cosine (clipped at 0) and concept-path Jaccard."""
    mine, theirs = ctx.entities(think), ctx.entities(reference)
    cosine = max(0.0, float(np.dot(think_vec, ref_vec)))
    return (jaccard(set(mine), set(theirs)) + min(cosine, 1.0) + jaccard(concept_path(mine), concept_path(theirs))) / 3


@register_reward("clinical_consistency")
def clinical_consistency_term(item: RewardInput, ctx: RewardContext) -> float | None:
    """Range [0, 1], or None (skipped, its weight redistributed) when the question has no reference reasoning.

    The best `agreement` of the reasoning (think block, searches and documents removed) with any reference; 0.0 for
    a response with no reasoning.
    """
    refs = list(item.question.references)
    if not refs:
        return None
    think = item.parsed.think
    if not think:
        return 0.0
    vecs = ctx.embed([think, *refs])
    return max(agreement(think, ref, vecs[0], vec, ctx) for ref, vec in zip(refs, vecs[1:], strict=True))
