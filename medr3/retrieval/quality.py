"""Retrieval quality against gold document ids: hit@k, recall@k, reciprocal rank and nDCG, per query and averaged."""

from __future__ import annotations

import math
from collections.abc import Sequence


def hit_at_k(retrieved: Sequence[str], gold: set[str], k: int) -> float:
    """1.0 if any of the first `k` retrieved doc ids is gold, else 0.0."""
    return float(any(doc in gold for doc in retrieved[:k]))


def recall_at_k(retrieved: Sequence[str], gold: set[str], k: int) -> float:
    """Fraction of the gold doc ids found among the first `k` retrieved, in [0, 1]."""
    return len(gold.intersection(retrieved[:k])) / len(gold) if gold else 0.0


def reciprocal_rank(retrieved: Sequence[str], gold: set[str], k: int) -> float:
    """1/rank of the first gold doc id within the first `k` (rank from 1), 0.0 if none; averaged, this is MRR@k."""
    for rank, doc in enumerate(retrieved[:k], 1):
        if doc in gold:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(retrieved: Sequence[str], gold: set[str], k: int) -> float:
    """nDCG@k with binary relevance: Σ 1/log2(rank + 1) over the gold ids among the first `k`, each counted at its
    first rank (chunks of one passage share its id), divided by the same sum for a ranking with all gold ids first.
    """
    found, dcg = set(), 0.0
    for rank, doc in enumerate(retrieved[:k], 1):
        if doc in gold and doc not in found:
            found.add(doc)
            dcg += 1.0 / math.log2(rank + 1)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), k) + 1))
    return dcg / ideal if ideal else 0.0


def summarize(runs: Sequence[tuple[Sequence[str], set[str]]], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean hit@k and recall@k for each k in `ks`, and MRR and nDCG at max(ks), over `(retrieved doc ids, gold ids)`
    pairs.

    Queries without gold ids are left out; `n` says how many were scored.
    """
    scored = [(r, g) for r, g in runs if g]
    n = len(scored) or 1
    out: dict[str, float] = {"n": float(len(scored))}
    for k in ks:
        out[f"hit@{k}"] = sum(hit_at_k(r, g, k) for r, g in scored) / n
    for k in ks:
        out[f"recall@{k}"] = sum(recall_at_k(r, g, k) for r, g in scored) / n
    out[f"mrr@{max(ks)}"] = sum(reciprocal_rank(r, g, max(ks)) for r, g in scored) / n
    out[f"ndcg@{max(ks)}"] = sum(ndcg_at_k(r, g, max(ks)) for r, g in scored) / n
    return out


def evaluate_questions(
    searcher, questions: Sequence, modes: Sequence[str], ks: Sequence[int] = (1, 5, 10), batch: int = 64
) -> dict[str, dict[str, float]]:
    """`{mode: summarize(...) + seconds}` for `questions` (`medr3.data.Question` with `evidence_ids`), searching
    each question's text with `searcher.batch_search(queries, k, mode=...)` in batches of `batch`."""
    import time

    gold = [set(q.evidence_ids) for q in questions]
    results = {}
    for mode in modes:
        start = time.perf_counter()
        retrieved: list[list[str]] = []
        for i in range(0, len(questions), batch):
            docs = searcher.batch_search([q.question for q in questions[i : i + batch]], k=max(ks), mode=mode)
            retrieved += [[d["doc_id"] for d in hits] for hits in docs]
        results[mode] = {
            **summarize(list(zip(retrieved, gold, strict=True)), ks),
            "seconds": time.perf_counter() - start,
        }
    return results
