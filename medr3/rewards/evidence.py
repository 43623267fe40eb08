"""Evidence support: did the search find the gold evidence, and is the reasoning grounded in what it found?

The release defines this term but never wires it in (docs/method.md); here it scores the retrieved documents.
"""

from __future__ import annotations

from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.registry import register_reward
from medr3.rewards.text import words


def gold_hit(item: RewardInput) -> float:
    """1.0 when any retrieved document's doc_id is one of the question's gold evidence ids, else 0.0."""
    gold = set(item.question.evidence_ids)
    found = {str(d) for s in item.searches for d in s.get("doc_ids", [])}
    found |= {str(doc.get("doc_id", "")) for doc in item.documents}
    return 1.0 if gold & found else 0.0


def grounding(item: RewardInput, ctx: RewardContext) -> float | None:
    """Share in [0, 1] of the distinct medical entities of the reasoning and answer that occur in the retrieved
    documents (title or text, as whole word sequences); None when the response names no entity."""
    answer = item.parsed.answer or ""
    terms = set(ctx.entities(f"{item.parsed.think}\n{answer}"))
    if not terms:
        return None
    docs = " " + " ".join(" ".join(words(f"{d.get('title', '')} {d.get('text', '')}")) for d in item.documents) + " "
    return sum(f" {t} " in docs for t in terms) / len(terms)


@register_reward("evidence")
def evidence_term(item: RewardInput, ctx: RewardContext) -> float | None:
    """Range [0, 1]: the mean of the gold-evidence hit (when the question has gold ids) and grounding (when the
    response names medical entities); 0.0 when no part applies. With no search made: 0.0 when the stage allows
    search, None (skipped) only when it does not. Skipping would hand this term's gain weight to the others, so in a
    stage that allows search, not searching would out-score searching with little evidence."""
    if not item.searches:
        return 0.0 if item.search_allowed else None
    parts = [gold_hit(item)] if item.question.evidence_ids else []
    ground = grounding(item, ctx)
    if ground is not None:
        parts.append(ground)
    return sum(parts) / len(parts) if parts else 0.0
