"""SearchActor / SearchPool through Ray: batched search from replicas, retries past a dead replica, and a clear,
bounded failure when the Qdrant server is unreachable."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from medr3.retrieval.searcher import Searcher
from tests.test_retrieval import same_ranking

QUERIES = ["symptoms of adult acute lymphoblastic leukemia", "lace plant programmed cell death mitochondria"]


@pytest.fixture(scope="module")
def pool(ray_cluster, small_index):
    from actors.retriever import SearchPool

    config = small_index("edge").model_copy(update={"replicas": 2, "num_cpus": 0.25, "timeout_s": 60.0})
    pool = SearchPool(config)
    yield pool
    pool.shutdown()


def test_search_actor_batch_search_matches_the_plain_searcher(pool, small_index, minilm):
    through_ray = pool.batch_search(QUERIES, k=3)
    searcher = Searcher(small_index("edge"), embedder=minilm)
    try:
        direct = searcher.batch_search(QUERIES, k=3)
    finally:
        searcher.close()
    assert all(same_ranking(a, b) for a, b in zip(through_ray, direct, strict=True))
    assert all(set(d) == {"id", "doc_id", "title", "text", "score", "source"} for r in through_ray for d in r)


def test_replicas_serve_concurrent_callers(pool):
    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(lambda q: pool.batch_search([q], k=2, mode="bm25"), QUERIES * 4))
    assert all(len(r) == 1 and len(r[0]) == 2 for r in results)
    assert results[0] == results[2]  # same query, whichever replica answered


def test_a_dead_replica_is_retried_on_another(pool, ray_cluster):
    ray_cluster.kill(pool.replicas[0], no_restart=False)  # Ray restarts it; meanwhile calls must still succeed
    for _ in range(3):
        assert len(pool.batch_search(QUERIES, k=2, mode="bm25")) == 2


def test_unreachable_qdrant_url_fails_the_pool_within_the_timeout_naming_the_url(ray_cluster, tmp_path):
    from actors.retriever import RetrievalError, SearchPool
    from medr3.config import RetrieverConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    config = RetrieverConfig(backend="server", url=url, index_path=str(tmp_path), timeout_s=3.0, num_cpus=0.25)
    start = time.perf_counter()
    with pytest.raises(RetrievalError, match=url.replace(".", r"\.")) as err:
        SearchPool(config, startup_timeout_s=30.0)
    assert time.perf_counter() - start < 30.0 + config.timeout_s
    assert "StoreUnavailableError" in str(err.value)
