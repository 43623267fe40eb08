"""Dense search speed and recall over the same vectors: embedded Qdrant (qdrant-edge-py, exact) vs qdrant-client local
mode vs exact numpy brute force, at batch sizes 1, 16 and 64. Prints queries/s, p50/p99 batch latency, recall@10
against numpy, and the ratios, all from this one run.

    python bench/bench_retrieval.py [--index-path artifacts/index/default] [--n 20000] [--hnsw]

Vectors: the first `--n` chunk embeddings of the built index (all backends get the same ones). Queries: MIRAGE
PubMedQA*/BioASQ questions embedded with the index's embedder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medr3.config import RetrieverConfig  # noqa: E402
from medr3.data import load_mirage  # noqa: E402
from medr3.embedder import load_embedder  # noqa: E402
from medr3.retrieval.edge import shard_path  # noqa: E402
from medr3.retrieval.manifest import require_complete  # noqa: E402

K = 10
BATCHES = (1, 16, 64)


def index_vectors(index_path: str, n: int) -> np.ndarray:
    """(n, dim) float32: the dense vectors of points 0..n-1 of a built Edge index."""
    import qdrant_edge as qe

    require_complete(index_path)
    shard = qe.EdgeShard.load(str(shard_path(RetrieverConfig(index_path=index_path))))
    try:
        records = shard.retrieve(list(range(n)), with_payload=False, with_vector=True)
    finally:
        shard.close()
    records = sorted(records, key=lambda r: r.id)
    return np.stack([np.asarray(r.vector["dense"], dtype=np.float32) for r in records])


def run(search, queries: np.ndarray, batch: int, budget_s: float, max_batches: int) -> tuple[list, list[float]]:
    """Call `search(batch_of_queries) -> (B, K) ids` over consecutive batches until the budget is spent."""
    search(queries[:batch])  # warm-up
    ids, lat = [], []
    start = time.perf_counter()
    for i in range(max_batches):
        q = queries[(i * batch) % len(queries) :][:batch]
        if len(q) < batch:
            q = queries[:batch]
        t = time.perf_counter()
        ids.append((q, search(q)))
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and i >= 1:
            break
    return ids, lat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-path", default="artifacts/index/default")
    parser.add_argument("--n", type=int, default=20000, help="Vectors to search (client local mode is slow).")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=8.0, help="Time per backend and batch size.")
    parser.add_argument("--hnsw", action="store_true", help="Also time Edge with an HNSW index (built here).")
    args = parser.parse_args(argv)

    import qdrant_edge as qe
    from qdrant_client import QdrantClient
    from qdrant_client import models as m

    manifest = require_complete(args.index_path)
    n = min(args.n, manifest.points_total)
    X = index_vectors(args.index_path, n)
    questions, _ = load_mirage(ROOT / "data/eval/mirage/benchmark_with_pmid.json.xz", tasks=["pubmedqa", "bioasq"])
    embedder = load_embedder(manifest.fingerprint["embedder"], dtype="auto")
    Q = embedder.encode([q.question for q in questions[: args.queries]])
    print(f"[bench] {n} of {manifest.points_total} index vectors (dim {X.shape[1]}), {len(Q)} queries, top-{K}")

    with tempfile.TemporaryDirectory() as tmp:
        shard = qe.EdgeShard.create(
            f"{tmp}/edge",
            qe.EdgeConfig(
                vectors={"dense": qe.EdgeVectorParams(size=X.shape[1], distance=qe.Distance.Cosine)},
                hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10, max_indexing_threads=1),
                max_search_threads=1,
                wal_enabled=False,
            ),
        )
        t = time.perf_counter()
        for s in range(0, n, 1024):
            pts = [qe.Point(i, {"dense": X[i]}) for i in range(s, min(s + 1024, n))]
            shard.update(qe.UpdateOperation.upsert_points(pts))
        edge_load = time.perf_counter() - t

        client = QdrantClient(":memory:")
        client.create_collection(
            "b", vectors_config={"dense": m.VectorParams(size=X.shape[1], distance=m.Distance.COSINE)}
        )
        t = time.perf_counter()
        for s in range(0, n, 1024):
            pts = [m.PointStruct(id=i, vector={"dense": X[i].tolist()}) for i in range(s, min(s + 1024, n))]
            client.upsert("b", pts, wait=True)
        client_load = time.perf_counter() - t
        print(f"[bench] load: edge {edge_load:.2f}s, qdrant-client local {client_load:.2f}s")

        def numpy_search(q):
            scores = q @ X.T
            top = np.argpartition(-scores, K, axis=1)[:, :K]
            return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)

        def edge_search(params):
            def search(q):
                reqs = [qe.QueryRequest(limit=K, query=qe.Query.Nearest(v, using="dense"), params=params) for v in q]
                return [[p.id for p in r] for r in shard.query_batch(qe.QueryBatchRequest(reqs))]

            return search

        def client_search(q):
            reqs = [m.QueryRequest(query=v.tolist(), using="dense", limit=K) for v in q]
            return [[p.id for p in r.points] for r in client.query_batch_points("b", reqs)]

        backends = {
            "numpy exact": (numpy_search, 200),
            "edge exact": (edge_search(qe.SearchParams(exact=True)), 200),
            "client local": (client_search, 64),
        }
        if args.hnsw:
            t = time.perf_counter()
            shard.optimize()
            print(f"[bench] edge HNSW build (m=16, ef_construct=100, 1 thread): {time.perf_counter() - t:.1f}s")
            backends["edge hnsw ef=128"] = (edge_search(qe.SearchParams(hnsw_ef=128)), 200)

        exact = {i: set(row.tolist()) for i, row in enumerate(numpy_search(Q))}
        row_of = {v.tobytes(): i for i, v in enumerate(Q)}
        table = {}
        print(f"{'backend':<18}{'batch':>6}{'q/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'recall@10':>11}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for name, (search, max_batches) in backends.items():
                for batch in BATCHES:
                    calls, lat = run(search, Q, batch, args.budget_s, max_batches)
                    hits = [len(set(map(int, ids)) & exact[row_of[v.tobytes()]]) / K
                            for q, res in calls for v, ids in zip(q, res)]  # fmt: skip
                    qps = batch * len(lat) / sum(lat)
                    p50, p99 = (1000 * np.percentile(lat, p) for p in (50, 99))
                    table[name, batch] = qps
                    print(f"{name:<18}{batch:>6}{qps:>10.0f}{p50:>10.2f}{p99:>10.2f}{np.mean(hits):>11.3f}")
        shard.close()
        client.close()
    print("[bench] ratios (queries/s):")
    for batch in BATCHES:
        edge, client_qps, numpy_qps = (
            table["edge exact", batch],
            table["client local", batch],
            table["numpy exact", batch],
        )
        print(f"  batch {batch:>2}: edge/client-local {edge / client_qps:6.1f}x   edge/numpy {edge / numpy_qps:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
