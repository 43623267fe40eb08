"""Answer correctness (diagnostic plausibility), rule-based, graded like the release's judge: 2/1/0 → 1.0/0.4/0.1."""

from __future__ import annotations

from medr3.data import Question
from medr3.protocol import extract_answer
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.registry import register_reward
from medr3.rewards.text import normalize, token_f1

FULL, PARTIAL, WRONG = 1.0, 0.4, 0.1
# No <answer> at all scores below a wrong one, so committing to an answer always pays; the format term adds its own
# penalty on top.
MISSING = 0.0
FULL_F1, PARTIAL_F1 = 0.8, 0.4  # token-F1 thresholds for free-text answers


def grade_answer(answer: str | None, question: Question) -> float:
    """Score in {0.0, 0.1, 0.4, 1.0}: missing / wrong / partial / full.

    Multiple choice: the option letter `protocol.extract_answer` finds (stated letter, else the option text the
    answer contains) is full when it is the gold letter and wrong otherwise; an answer naming no option is graded
    as free text against the gold option text. Free text: normalised exact match or token F1 >= 0.8 is full,
    F1 >= 0.4 partial, anything else wrong.
    """
    if not answer or not answer.strip():
        return MISSING
    if question.options and question.answer_letter:
        letter, _ = extract_answer(answer, question.options)
        if letter is not None:
            return FULL if letter == question.answer_letter else WRONG
    return grade_text(answer, question.answer_text)


def grade_text(answer: str, gold: str) -> float:
    """Free-text answer vs the gold text: 1.0 / 0.4 / 0.1 by normalised match and token F1."""
    if normalize(answer) == normalize(gold):
        return FULL
    f1 = token_f1(answer, gold) + 1e-9  # 2 of 3 gold words is exactly F1 0.8; float error must not demote it
    return FULL if f1 >= FULL_F1 else PARTIAL if f1 >= PARTIAL_F1 else WRONG


@register_reward("answer")
def answer_term(item: RewardInput, ctx: RewardContext) -> float:
    """Range {0.0, 0.1, 0.4, 1.0}; see `grade_answer`."""
    return grade_answer(item.parsed.answer, item.question)
