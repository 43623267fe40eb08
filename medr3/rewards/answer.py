"""Answer correctness (diagnostic plausibility), rule-based, graded like the release's judge: 2/1/0 → 1.0/0.4/0.1."""

from __future__ import annotations

from medr3.data import Question
from medr3.protocol import is_correct, named_options
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.registry import register_reward
from medr3.rewards.text import token_f1

FULL, PARTIAL, WRONG = 1.0, 0.4, 0.1
# No <answer> at all scores below a wrong one, so committing to an answer always pays; the format term adds its own
# penalty on top.
MISSING = 0.0
PARTIAL_F1 = 0.4  # token F1 with the gold text from which an answer that is not right earns partial credit


def grade_answer(answer: str | None, question: Question) -> float:
    """Score in {0.0, 0.1, 0.4, 1.0}: missing / wrong / partial / full.

    Full exactly when `protocol.is_correct`. Otherwise: a multiple-choice answer that names an option (a wrong one,
    or several: hedging earns nothing) is wrong; any other answer is partial when its token F1 with the gold text is
    >= 0.4, else wrong.
    """
    if not answer or not answer.strip():
        return MISSING
    if is_correct(answer, question):
        return FULL
    if question.options and named_options(answer, question.options):
        return WRONG
    return PARTIAL if token_f1(answer, question.answer_text) + 1e-9 >= PARTIAL_F1 else WRONG


@register_reward("answer")
def answer_term(item: RewardInput, ctx: RewardContext) -> float:
    """Range {0.0, 0.1, 0.4, 1.0}; see `grade_answer`."""
    return grade_answer(item.parsed.answer, item.question)
