"""The embedded backend: qdrant-edge-py, Qdrant's Rust engine in-process, one shard on disk at `<index_path>/edge`.

The shard is created without a write-ahead log: the indexer flushes after every batch before it records the batch in
the manifest (durable either way), and without a WAL the shard takes no file lock, so several search replicas on one
machine can open it at once (with a WAL a second open fails with WouldBlock). Dense search is exact: at ~10^5 points
a brute-force scan of a batch takes milliseconds and has recall 1, and no HNSW build is needed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medr3.config import RetrieverConfig
from medr3.retrieval.manifest import IndexNotReadyError
from medr3.retrieval.store import (
    BM25_B,
    BM25_K1,
    DENSE,
    LUCENE_STOPWORDS,
    RESULT_FIELDS,
    SEARCH_FIELD,
    Store,
    hit,
    text_index,
)


def shard_path(config: RetrieverConfig) -> Path:
    return Path(config.index_path) / "edge"


class EdgeStore(Store):
    def __init__(self, config: RetrieverConfig, dim: int | None = None):
        import qdrant_edge as qe

        self._qe, self._config = qe, config
        path = shard_path(config)
        if dim is not None:
            shutil.rmtree(path, ignore_errors=True)
            self._shard = qe.EdgeShard.create(
                str(path),
                qe.EdgeConfig(
                    vectors={DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
                    max_search_threads=1,  # one search thread per replica: replicas, not threads, scale out here
                    wal_enabled=False,
                ),
            )
            self._shard.update(qe.UpdateOperation.create_field_index("source", qe.PayloadSchemaType.Keyword))
            self._shard.update(qe.UpdateOperation.create_field_index(SEARCH_FIELD, self._text_index_params()))
        elif not (path / "edge_config.json").is_file():
            raise IndexNotReadyError(f"{path}: no Qdrant Edge shard here; build the index first")
        else:
            self._shard = qe.EdgeShard.load(str(path))

    def _text_index_params(self):
        """`text_index(config)` as qdrant-edge's TextIndexParams."""
        qe, settings = self._qe, text_index(self._config)
        stopwords = {
            "lucene": qe.StopwordsSet(custom=set(LUCENE_STOPWORDS)),
            "english": qe.Language.English,
            "none": None,
        }[settings["stopwords"]]
        stemmer = qe.SnowballParams(qe.SnowballLanguage.English) if settings["stemmer"] == "english" else None
        return qe.TextIndexParams(
            tokenizer=qe.TokenizerType.Word, lowercase=True, stopwords=stopwords, stemmer=stemmer, scoring=True
        )

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        qe = self._qe
        points = [qe.Point(int(i), {DENSE: v}, p) for i, v, p in zip(ids, vectors, payloads, strict=True)]
        self._shard.update(qe.UpdateOperation.upsert_points(points))

    def flush(self) -> None:
        try:
            self._shard.flush()
        except Exception:
            # qdrant-edge-py 0.9.0 once failed a flush of the text index here ("Tracker journal ... is shorter than
            # expected"); a second flush went through. If it fails again the batch stays unrecorded and a rerun
            # redoes it.
            time.sleep(0.5)
            self._shard.flush()

    def count(self) -> int:
        return self._shard.count(self._qe.CountRequest(exact=True))

    def search(self, texts, vectors, mode, k, sources=None) -> list[list[dict]]:
        requests = [
            self._request(t, None if vectors is None else vectors[i], mode, k, sources) for i, t in enumerate(texts)
        ]
        if not requests:
            return []
        results = self._shard.query_batch(self._qe.QueryBatchRequest(requests))
        return [[hit(p.payload, p.score) for p in points] for points in results]

    def _request(self, text: str, vector, mode: str, k: int, sources):
        qe = self._qe
        flt = qe.Filter(must=[qe.FieldCondition("source", match=qe.MatchAny(list(sources)))]) if sources else None
        exact = qe.SearchParams(exact=True)

        def dense():
            return qe.Query.Nearest(vector, using=DENSE)

        def bm25():
            return qe.TextQuery(SEARCH_FIELD, text, qe.Bm25Params(k=BM25_K1, b=BM25_B))

        if mode == "dense":
            return qe.QueryRequest(limit=k, query=dense(), params=exact, filter=flt, with_payload=RESULT_FIELDS)
        if mode == "bm25":
            return qe.QueryRequest(limit=k, query=bm25(), filter=flt, with_payload=RESULT_FIELDS)
        depth = max(self._config.prefetch, k)
        return qe.QueryRequest(
            limit=k,
            query=qe.Fusion.Rrf(k=self._config.rrf_k),
            prefetches=[
                qe.Prefetch(limit=depth, query=dense(), params=exact, filter=flt),
                qe.Prefetch(limit=depth, query=bm25(), filter=flt),
            ],
            with_payload=RESULT_FIELDS,
        )

    def close(self) -> None:
        self._shard.close()
