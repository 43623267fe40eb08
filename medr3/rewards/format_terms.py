"""The release's shaping terms: format, think length, language consistency, and DAPO's overlong penalty."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from medr3.protocol import check_format
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.registry import register_reward

_DOCUMENT = re.compile(r"<document>.*?(?:</document>|$)", re.DOTALL)
_TAGS = re.compile(r"</?(?:think|search|document|answer)>")
_SCRIPT_ALIASES = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HANGUL": "CJK"}


@register_reward("format")
def format_term(item: RewardInput, ctx: RewardContext) -> float:
    """1.0 for a well-formed response (`protocol.check_format`), else 0.0. A self-written ``<document>`` is a
    format error, so the release composition (penalty 0.1) takes 0.1 off the total for it (docs/method.md)."""
    return 1.0 if check_format(item.response, item.search_allowed, item.self_document).ok else 0.0


@register_reward("think_length")
def think_length_term(item: RewardInput, ctx: RewardContext) -> float:
    """Range [0, 1]: 1.0 when the reasoning has between `think_min_words` and `think_max_words` words (searches and
    documents excluded); below, the share of the minimum reached; above, linearly down to 0 at twice the maximum."""
    n = len(item.parsed.think.split())
    low, high = ctx.config.think_min_words, ctx.config.think_max_words
    if n < low:
        return n / low
    if n > high:
        return max(0.0, 1.0 - (n - high) / high)
    return 1.0


@register_reward("language")
def language_term(item: RewardInput, ctx: RewardContext) -> float:
    """Range [0, 1]: the share of the response's letters (inserted documents excluded) written in the question's
    script (Latin, CJK, Cyrillic, …); 0.0 for a response with no letters. Scripts, not languages: cheap and
    robust for the release's purpose, which is to stop the model drifting into another language mid-reasoning."""
    target = _dominant_script(item.question.question)
    own = _TAGS.sub(" ", _DOCUMENT.sub(" ", item.response))
    scripts = _scripts(own)
    total = sum(scripts.values())
    return scripts[target] / total if total else 0.0


def _scripts(text: str) -> Counter:
    counts = Counter()
    for ch in text:
        if ch.isalpha():
            script = unicodedata.name(ch, "UNKNOWN").split()[0]
            counts[_SCRIPT_ALIASES.get(script, script)] += 1
    return counts


def _dominant_script(text: str) -> str:
    counts = _scripts(text)
    return counts.most_common(1)[0][0] if counts else "LATIN"


@register_reward("overlong")
def overlong_term(item: RewardInput, ctx: RewardContext) -> float:
    """DAPO's soft overlong penalty, range [-1, 0]: ``min(-(L - (Lmax - buffer)) / buffer, 0)`` with L the response
    tokens (generated + inserted); 0 inside ``Lmax - buffer``, -1 at Lmax and beyond, 0 when the buffer is 0."""
    buffer = item.overlong_buffer
    if buffer <= 0:
        return 0.0
    penalty = -(item.response_tokens - (item.max_response_tokens - buffer)) / buffer
    return max(-1.0, min(penalty, 0.0))
