"""From trajectories to what the learner trains on: reward inputs, group advantages, train samples, rollout metrics.

Rewards and advantages are computed once, on the driver's data (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medr3.config import Config, StageConfig
from medr3.grpo import compute_advantages
from medr3.packing import TrainSample
from medr3.protocol import check_format, is_correct, parse
from medr3.rewards.inputs import RewardInput
from medr3.rollout import Trajectory


def reward_inputs(trajs: Sequence[Trajectory], stage: StageConfig, config: Config) -> list[RewardInput]:
    return [
        RewardInput(
            question=t.question,
            response=t.text,
            searches=t.searches,
            self_document=t.self_document,
            search_allowed=stage.retrieval,
            require_search=stage.require_search,
            response_tokens=len(t.response_ids),
            max_response_tokens=config.grpo.max_response_tokens,
            overlong_buffer=config.grpo.overlong_buffer,
            finish_reason=t.finish_reason,
        )
        for t in trajs
    ]


def advantages(totals: Sequence[float], n: int, estimator: str, eps: float) -> list[float]:
    """One advantage per trajectory; trajectories come grouped by question, `n` per group."""
    rewards = torch.tensor(totals, dtype=torch.float).view(-1, n)
    return compute_advantages(rewards, estimator, eps).flatten().tolist()


def uniform_groups(totals: Sequence[float], n: int, tol: float = 1e-6) -> list[bool]:
    """Per group of `n`: whether its rewards are all equal, so that every advantage in it is 0 and its policy
    gradient is nothing (all wrong alike, all right alike)."""
    rewards = torch.tensor(totals, dtype=torch.float).view(-1, n)
    return ((rewards.amax(1) - rewards.amin(1)) <= tol).tolist()


def group_means(totals: Sequence[float], n: int) -> list[float]:
    """Each group's mean reward (one per prompt, in order): the units a change in a stage's reward is measured in,
    since which questions a step drew moves its mean more than anything else (summary.md's interval)."""
    return torch.tensor(totals, dtype=torch.float).view(-1, n).mean(1).tolist()


def train_samples(
    trajs: Sequence[Trajectory], advs: Sequence[float], n: int, skip: Sequence[bool] = ()
) -> list[TrainSample]:
    """Trajectories with at least one generated token become samples (an empty response teaches nothing), except
    those of the groups (`n` trajectories each, in order) that `skip` marks."""
    skipped = {i for i, s in enumerate(skip) if s}
    return [
        TrainSample(t.prompt_ids + t.response_ids, len(t.prompt_ids), t.loss_mask, t.logprobs, a)
        for i, (t, a) in enumerate(zip(trajs, advs, strict=True))
        if t.generated_tokens > 0 and i // n not in skipped
    ]


def rollout_metrics(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Accuracy (`protocol.is_correct`, as evaluation counts it), format rate, searches per trajectory, lengths,
    finish reasons: `rollout/<name>` for the names in `medr3.names.ROLLOUT_METRICS`, which a stage's gate may read."""
    n = max(len(trajs), 1)
    correct = fmt = searches = 0
    for t in trajs:
        correct += is_correct(parse(t.text).answer, t.question)
        fmt += check_format(t.text, t.search_allowed, t.self_document).ok
        searches += len(t.searches)
    return {
        "rollout/accuracy": correct / n,
        "rollout/format_rate": fmt / n,
        "rollout/searches_per_traj": searches / n,
        "rollout/response_tokens": sum(len(t.response_ids) for t in trajs) / n,
        "rollout/generated_tokens": sum(t.generated_tokens for t in trajs) / n,
        "rollout/truncated_rate": sum(t.finish_reason == "length" for t in trajs) / n,
    }
