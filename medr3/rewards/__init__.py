"""Medical multi-dimensional reward: registered terms, per-stage compositions and the batch scorer.

Terms (`registry.py`) are pure functions of one trajectory (`inputs.RewardInput`) and shared tools
(`inputs.RewardContext`); `composition.compose` combines them with a stage's `RewardComposition`; `scorer.RewardScorer`
scores a batch and is what `actors/reward.py` wraps. Nothing here imports Ray or loads a model at import time.
"""

from medr3.rewards.registry import get_term, register_reward, registered_terms

__all__ = ["get_term", "register_reward", "registered_terms"]
