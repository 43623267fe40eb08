"""Medical multi-dimensional reward: registered terms and per-stage compositions."""

from medr3.rewards.registry import get_term, register_reward, registered_terms

__all__ = ["get_term", "register_reward", "registered_terms"]
