"""GRPO math: group advantages (a registry of estimators) and the clipped policy loss (docs/method.md).

Shapes: G groups (prompts) × n samples; B sequences × T response tokens. `mask: (B, T)` is 1 on generated tokens and 0
on inserted documents and padding: masked tokens enter no term of the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from medr3.names import ESTIMATORS

_ESTIMATORS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {}


def register_advantage(name: str):
    """Decorator: an advantage estimator `(rewards: (G, n), eps) -> advantages: (G, n)` selectable by name; the
    name must be declared in `medr3.names.ESTIMATORS`, which the config checks `grpo.estimator` against."""
    if name not in ESTIMATORS:
        raise ValueError(f"advantage estimator {name!r} is not declared in medr3/names.py (ESTIMATORS)")

    def wrap(fn):
        _ESTIMATORS[name] = fn
        return fn

    return wrap


def estimator_names() -> list[str]:
    return sorted(_ESTIMATORS)


@register_advantage("grpo")
def grpo_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """(r − mean_group) / (std_group + eps) — the release's GRPO (unbiased std, as torch.std)."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)


@register_advantage("drgrpo")
def drgrpo_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """Dr. GRPO: r − mean_group, no std normalisation (removes the difficulty bias)."""
    return rewards - rewards.mean(1, keepdim=True)


@register_advantage("rloo")
def rloo_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """RLOO: r_i − mean of the other n−1 samples of the group."""
    n = rewards.shape[1]
    return (rewards - rewards.mean(1, keepdim=True)) * n / (n - 1)


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean, then normalise over the whole batch."""
    centred = rewards - rewards.mean(1, keepdim=True)
    return (centred - centred.mean()) / (centred.std() + eps)


def compute_advantages(rewards: torch.Tensor, estimator: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """rewards: (G, n) → advantages: (G, n), one scalar per trajectory (broadcast over its tokens)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, samples>=2), got {tuple(rewards.shape)}")
    try:
        fn = _ESTIMATORS[estimator]
    except KeyError:
        raise KeyError(f"unknown advantage estimator {estimator!r} (known: {estimator_names()})") from None
    return fn(rewards.float(), eps)


LOG_RATIO_LIMIT = 20.0  # exp(20) ≈ 5e8: far outside any clip range, far inside float32


@dataclass(frozen=True)
class LossSettings:
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    kl_coef: float = 0.0
    entropy_coef: float = 0.0


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def policy_loss_terms(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, s: LossSettings
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate with clip-higher and dual-clip, summed over unmasked tokens.

    logprobs, old_logprobs, mask: (B, T); advantages: (B,). Returns (sum of token losses, stats as sums) so callers
    can take the token mean over a whole mini-batch spread across micro-batches and ranks.
    """
    mask = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1).to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs) * mask  # masked positions hold arbitrary old logprobs: zero them first
    # A stale or mismatched old logprob can make the log-ratio huge; exp() would overflow to inf and the loss to NaN.
    log_ratio = torch.clamp(log_ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - s.clip_low, 1.0 + s.clip_high)
    loss = torch.maximum(unclipped, clipped)
    if s.dual_clip is not None:
        # For negative advantages bound the loss by −c·A, so a huge ratio cannot blow the update up.
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * s.dual_clip), loss)
    clip_frac = ((ratio < 1.0 - s.clip_low) | (ratio > 1.0 + s.clip_high)).to(logprobs.dtype)
    stats = {
        "clip_frac": masked_sum(clip_frac, mask).detach(),
        "approx_kl": masked_sum(0.5 * log_ratio**2, mask).detach(),
    }
    return masked_sum(loss, mask), stats


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Low-variance KL estimator k3 = exp(ref − lp) − (ref − lp) − 1 ≥ 0, per token: (B, T)."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1.0


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) under logits: logits (B, T, V), tokens (B, T) → (B, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
