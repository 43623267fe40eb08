"""The searcher: embed a batch of queries once, run one batched store search, return clean documents."""

from __future__ import annotations

from collections.abc import Sequence

from medr3.config import RetrieverConfig
from medr3.embedder import Embedder, load_embedder
from medr3.protocol import strip_tags
from medr3.retrieval.manifest import IndexNotReadyError, Manifest, check_index
from medr3.retrieval.store import open_store


class Searcher:
    """Hybrid (dense + BM25, RRF-fused), dense or BM25 search over a finished index.

    Opening checks the index manifest (`check_index`): an index that is missing, interrupted or built for another
    backend, collection or embedder is refused with IndexNotReadyError, and an unreachable server with
    StoreUnavailableError naming its URL.
    """

    def __init__(self, config: RetrieverConfig, embedder: Embedder | None = None):
        self.config = config
        self.store = open_store(config)
        try:
            self.manifest: Manifest = check_index(config)
            points = self.store.count()
            if points != self.manifest.points_total:
                raise IndexNotReadyError(
                    f"{config.index_path}: store holds {points} points, its manifest says {self.manifest.points_total}"
                )
        except Exception:
            self.store.close()
            raise
        # Load the encoder now, not at the first search, so that a caller's first timeout is not spent on it.
        if embedder is None and config.mode != "bm25":
            embedder = load_embedder(config.embedder, dtype=config.embed_dtype)
        self._embedder = embedder

    @property
    def sources(self) -> list[str]:
        """Corpus sources in the index (what `sources` filters may name)."""
        return sorted(self.manifest.sources)

    def batch_search(
        self,
        queries: Sequence[str],
        k: int | None = None,
        sources: Sequence[str] | None = None,
        mode: str | None = None,
    ) -> list[list[dict]]:
        """Top-`k` (default config.top_k) documents for each of the Q queries, best first, in one batched search.

        Returns Q lists of `{id, doc_id, title, text, score, source}`; title and text have protocol tags stripped.
        `sources` (default config.sources, None = all) restricts the corpus sources; `mode` overrides config.mode.
        """
        k = k or self.config.top_k
        mode = mode or self.config.mode
        sources = sources if sources is not None else self.config.sources
        unknown = sorted(set(sources or ()) - set(self.manifest.sources))
        if unknown:
            raise ValueError(f"unknown corpus source(s) {unknown}; this index has {self.sources}")
        queries = [" ".join(str(q).split()) for q in queries]
        vectors = None
        if mode != "bm25" and queries:
            if self._embedder is None:
                self._embedder = load_embedder(self.config.embedder, dtype=self.config.embed_dtype)
            vectors = self._embedder.encode(queries)
        results = self.store.search(queries, vectors, mode, k, sources)
        for docs in results:
            for doc in docs:
                doc["title"] = strip_tags(doc["title"]).strip()
                doc["text"] = strip_tags(doc["text"]).strip()
        return results

    def close(self) -> None:
        self.store.close()
