"""The qdrant-client backend: a Qdrant server or cluster by URL (backend `server`), or the client's pure-Python local
mode persisted at `<index_path>/qdrant_local` (backend `local`, for tests and as the benchmark's baseline).

Server calls are retried `retries` times; the per-attempt timeout is `timeout_s / (retries + 1)`, so an unreachable
server fails within `timeout_s` with StoreUnavailableError naming the URL instead of hanging.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

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
    StoreUnavailableError,
    hit,
    text_index,
)
from medr3.retry import retry

T = TypeVar("T")


def local_path(config: RetrieverConfig) -> Path:
    return Path(config.index_path) / "qdrant_local"


class ClientStore(Store):
    def __init__(self, config: RetrieverConfig, dim: int | None = None):
        from qdrant_client import QdrantClient
        from qdrant_client import models as m

        self._m, self._config, self._name = m, config, config.collection
        if config.backend == "server":
            self._where = config.url
            attempt_s = config.timeout_s / (config.retries + 1)
            self._client = QdrantClient(url=config.url, timeout=attempt_s, check_compatibility=False)
        else:
            path = local_path(config)
            self._where = str(path)
            if dim is not None:
                shutil.rmtree(path, ignore_errors=True)
            elif not path.is_dir():
                raise IndexNotReadyError(f"{path}: no qdrant-client local index here; build the index first")
            self._client = QdrantClient(path=str(path))
        if dim is not None:
            self._create(dim)
        elif not self._call(lambda: self._client.collection_exists(self._name)):
            raise IndexNotReadyError(f"{self._where}: no collection {self._name!r}; build the index first")

    def _create(self, dim: int) -> None:
        m, client = self._m, self._client
        if self._call(lambda: client.collection_exists(self._name)):
            self._call(lambda: client.delete_collection(self._name))
        self._call(
            lambda: client.create_collection(
                self._name, vectors_config={DENSE: m.VectorParams(size=dim, distance=m.Distance.COSINE)}
            )
        )
        with warnings.catch_warnings():  # local mode warns that payload indexes are no-ops; TextQuery still uses it
            warnings.simplefilter("ignore", UserWarning)
            self._call(lambda: client.create_payload_index(self._name, "source", m.PayloadSchemaType.KEYWORD))
            params = self._text_index_params()
            self._call(lambda: client.create_payload_index(self._name, SEARCH_FIELD, params))

    def _text_index_params(self):
        """`text_index(config)` as qdrant-client's TextIndexParams (local mode: always the plain word tokenizer)."""
        m, settings = self._m, text_index(self._config)
        stopwords = {
            "lucene": m.StopwordsSet(custom=sorted(LUCENE_STOPWORDS)),
            "english": m.Language.ENGLISH,
            "none": None,
        }[settings["stopwords"]]
        stemmer = None
        if settings["stemmer"] == "english":
            stemmer = m.SnowballParams(type=m.Snowball.SNOWBALL, language=m.SnowballLanguage.ENGLISH)
        return m.TextIndexParams(
            type=m.TextIndexType.TEXT,
            tokenizer=m.TokenizerType.WORD,
            lowercase=True,
            stopwords=stopwords,
            stemmer=stemmer,
            scoring=True,
        )

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one client call; retry transport failures, then fail naming the URL (server) or path (local)."""
        from qdrant_client.http.exceptions import ResponseHandlingException

        transport = (ResponseHandlingException, ConnectionError, TimeoutError)
        attempts = self._config.retries + 1 if self._config.backend == "server" else 1
        start = time.perf_counter()
        try:
            # Waits of 0.2 s, 0.4 s, … capped so that all of them together stay under a quarter of timeout_s.
            return retry(
                fn, attempts, retry_on=transport, backoff_s=0.2, max_backoff_s=self._config.timeout_s / (4 * attempts)
            )
        except transport as err:
            raise StoreUnavailableError(
                f"Qdrant at {self._where} unreachable ({attempts} attempt(s) in "
                f"{time.perf_counter() - start:.1f}s): {err}"
            ) from err

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        m = self._m
        points = [
            m.PointStruct(id=int(i), vector={DENSE: v.tolist()}, payload=p)
            for i, v, p in zip(ids, vectors, payloads, strict=True)
        ]
        self._call(lambda: self._client.upsert(self._name, points, wait=True))

    def flush(self) -> None:
        pass  # the server persists on `wait=True`; local mode writes each upsert through to its sqlite file

    def count(self) -> int:
        return self._call(lambda: self._client.count(self._name, exact=True).count)

    def search(self, texts, vectors, mode, k, sources=None) -> list[list[dict]]:
        requests = [
            self._request(t, None if vectors is None else vectors[i], mode, k, sources) for i, t in enumerate(texts)
        ]
        if not requests:
            return []
        with warnings.catch_warnings():  # local mode: "search params are ignored" (it is always exact)
            warnings.simplefilter("ignore", UserWarning)
            results = self._call(lambda: self._client.query_batch_points(self._name, requests))
        return [[hit(p.payload or {}, p.score) for p in r.points] for r in results]

    def _request(self, text: str, vector, mode: str, k: int, sources):
        m = self._m
        flt = m.Filter(must=[m.FieldCondition(key="source", match=m.MatchAny(any=list(sources)))]) if sources else None
        exact = m.SearchParams(exact=True)
        bm25 = m.TextQuery(
            text=m.TextQueryInput(query=text, scoring=m.Bm25Scoring(bm25=m.Bm25Params(k=BM25_K1, b=BM25_B)))
        )
        dense = None if vector is None else np.asarray(vector, dtype=np.float32).tolist()
        if mode == "dense":
            return m.QueryRequest(
                query=dense, using=DENSE, limit=k, filter=flt, params=exact, with_payload=RESULT_FIELDS
            )
        if mode == "bm25":
            return m.QueryRequest(query=bm25, using=SEARCH_FIELD, limit=k, filter=flt, with_payload=RESULT_FIELDS)
        depth = max(self._config.prefetch, k)
        return m.QueryRequest(
            prefetch=[
                m.Prefetch(query=dense, using=DENSE, limit=depth, filter=flt, params=exact),
                m.Prefetch(query=bm25, using=SEARCH_FIELD, limit=depth, filter=flt),
            ],
            query=m.RrfQuery(rrf=m.Rrf(k=self._config.rrf_k)),
            limit=k,
            with_payload=RESULT_FIELDS,
        )

    def close(self) -> None:
        self._client.close()
