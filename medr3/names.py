"""The names a config may choose from, declared apart from the code they name.

`medr3/config.py` checks a run's estimator, reward terms and gate metrics against these at load, without importing
torch or the reward terms (no import cycle). Each registry refuses a name not declared here, and tests/test_config.py
checks that every name declared here is registered, so the two cannot drift apart: adding a reward term or an
estimator is its function plus its name here.
"""

# Advantage estimators, `@register_advantage` in medr3/grpo.py.
ESTIMATORS = ("grpo", "drgrpo", "rloo", "reinforce_pp")

# Reward terms, `@register_reward` in medr3/rewards/.
REWARD_TERMS = (
    "answer",
    "format",
    "think_length",
    "language",
    "overlong",
    "clinical_consistency",
    "evidence",
    "search_quality",
    "judge",
)

# What `medr3.experience.rollout_metrics` logs, as `rollout/<name>`.
ROLLOUT_METRICS = (
    "accuracy",
    "format_rate",
    "searches_per_traj",
    "response_tokens",
    "generated_tokens",
    "truncated_rate",
)


def gate_metrics(terms: list[str]) -> list[str]:
    """The step metrics a stage's gate may read: the stage's reward (`reward/total`, `reward/<term>` of its own
    terms) and its rollout metrics."""
    return ["reward/total", *(f"reward/{t}" for t in terms), *(f"rollout/{m}" for m in ROLLOUT_METRICS)]
