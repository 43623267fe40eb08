"""Search quality (the retrieval stage): well-formed, non-duplicate queries whose documents match them."""

from __future__ import annotations

from medr3.protocol import PROTOCOL_TAGS
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.registry import register_reward
from medr3.rewards.text import content_words, normalize, words

MIN_QUERY_WORDS, MAX_QUERY_WORDS = 2, 32


def well_formed(query: str, earlier: list[str]) -> bool:
    """A query of 2–32 words with at least one content word, no protocol tag, not a repeat of an earlier query
    (same normalised text)."""
    n = len(query.split())
    if not MIN_QUERY_WORDS <= n <= MAX_QUERY_WORDS or not content_words(query):
        return False
    if any(f"<{t}" in query or f"</{t}" in query for t in PROTOCOL_TAGS):
        return False
    return normalize(query) not in {normalize(q) for q in earlier}


def relevance(search: dict) -> float:
    """Share in [0, 1] of the query's content words that occur in its documents (title or text); 0.0 with no
    documents or no content words."""
    terms = set(content_words(search.get("query", "")))
    docs = search.get("documents", [])
    if not terms or not docs:
        return 0.0
    found = {w for d in docs for w in words(f"{d.get('title', '')} {d.get('text', '')}")}
    return len(terms & found) / len(terms)


@register_reward("search_quality")
def search_quality_term(item: RewardInput, ctx: RewardContext) -> float | None:
    """Range [0, 1]: mean of the share of well-formed non-duplicate queries and their mean relevance. With no search
    made: 0.0 when the stage requires search, else None (skipped, its weight redistributed)."""
    if not item.searches:
        return 0.0 if item.require_search else None
    queries = [str(s.get("query", "")) for s in item.searches]
    formed = sum(well_formed(q, queries[:i]) for i, q in enumerate(queries)) / len(queries)
    relevant = sum(relevance(s) for s in item.searches) / len(item.searches)
    return (formed + relevant) / 2
