"""One vector-store interface over Qdrant, with two backends: the in-process engine (`edge.py`, the embedded default)
and qdrant-client (`client.py`: a Qdrant server by URL, or the client's local mode for tests).

Both hold the same collection layout, so the same data gives the same results:
- named dense vector `dense` (cosine) for the embeddings;
- a BM25-scored full-text index on payload field `search_text` (title + text), queried with Qdrant's TextQuery:
  Lucene BM25 with live IDF and average length, computed by Qdrant itself. The index tokenizes documents and queries
  alike (`text_index`): words, lowercased, Lucene's English stopwords dropped, Snowball-stemmed by default;
- a keyword index on `source` for source filters;
- hybrid = both arms as prefetches fused by reciprocal rank fusion, score Σ 1/(rrf_k + rank0), rrf_k passed
  explicitly because the two backends default to different k.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from medr3.config import RetrieverConfig

DENSE = "dense"
SEARCH_FIELD = "search_text"
RESULT_FIELDS = ["id", "doc_id", "title", "text", "source"]
BM25_K1, BM25_B = 1.2, 0.75  # Lucene's defaults
# Lucene's English stopword set (EnglishAnalyzer; bm25s's "en"). On the bundled retrieval evaluation it beat Qdrant's
# longer English list on PubMedQA* and lost a little on BioASQ (docs/architecture.md, "BM25 text processing").
LUCENE_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
PLAIN_TEXT_INDEX = {"tokenizer": "word", "lowercase": True, "stopwords": "none", "stemmer": "none"}


class StoreUnavailableError(ConnectionError):
    """The vector store cannot be reached (the message names the URL or path)."""


class Store(ABC):
    """A Qdrant collection of corpus chunks: point id = chunk row number, payload = RESULT_FIELDS + search_text."""

    @abstractmethod
    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        """Insert or overwrite points; `vectors`: (len(ids), dim) float32. Idempotent, so a resumed batch is safe."""

    @abstractmethod
    def flush(self) -> None:
        """Make every upsert so far durable on disk."""

    @abstractmethod
    def count(self) -> int:
        """Exact number of points."""

    @abstractmethod
    def search(
        self,
        texts: Sequence[str],
        vectors: np.ndarray | None,
        mode: str,
        k: int,
        sources: Sequence[str] | None = None,
    ) -> list[list[dict]]:
        """One batched search. `texts`: Q query strings (BM25 arm); `vectors`: (Q, dim) query embeddings (dense
        arm; None for mode 'bm25'). Returns per query up to `k` dicts `{id, doc_id, title, text, source, score}`, best
        first.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the store (file locks, connections)."""


def open_store(config: RetrieverConfig, dim: int | None = None) -> Store:
    """Open the store `config` names; with `dim`, create it empty first (anything there before is deleted)."""
    if config.backend == "edge":
        from medr3.retrieval.edge import EdgeStore

        return EdgeStore(config, dim)
    from medr3.retrieval.client import ClientStore

    return ClientStore(config, dim)


def text_index(config: RetrieverConfig) -> dict:
    """The text processing of the BM25 arm an index of `config` gets, as recorded in its manifest's fingerprint.

    qdrant-client's local mode scores text queries only over the plain word tokenizer, so backend `local` always gets
    `PLAIN_TEXT_INDEX` (the settings indexes had before they were configurable).
    """
    if config.backend == "local":
        return dict(PLAIN_TEXT_INDEX)
    return PLAIN_TEXT_INDEX | {"stopwords": config.bm25_stopwords, "stemmer": config.bm25_stemmer}


def chunk_payload(chunk) -> dict:
    """Payload of one chunk (a `medr3.data.Passage`): what a search returns, plus the BM25-indexed text."""
    search_text = f"{chunk.title}\n{chunk.text}" if chunk.title else chunk.text
    return {
        "id": chunk.id,
        "doc_id": chunk.doc_id,
        "title": chunk.title,
        "text": chunk.text,
        "source": chunk.source,
        SEARCH_FIELD: search_text,
    }


def hit(payload: dict, score: float) -> dict:
    """A search result from a point's payload."""
    return {**{name: payload.get(name, "") for name in RESULT_FIELDS}, "score": float(score)}
