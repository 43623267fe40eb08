"""Retrieval quality on MIRAGE's PubMedQA* and BioASQ-Y/N: hit@k, recall@k, MRR and nDCG@10 of the gold PMIDs, for
dense, BM25 and hybrid search over the built index, and for a plain `bm25s` BM25 over the same chunks as the reference
the index's BM25 arm should match (Lucene BM25, k1 1.5, b 0.75, its English stopwords, no stemming). Prints a table
and writes JSON.

    python pipelines/eval_retrieval.py [--index-path artifacts/index/default] [--out runs/eval_retrieval.json]

The bundled corpus holds these questions' gold abstracts (data/README.md, "Leakage warning"): this measures
retrieval, not answer accuracy. Figures: docs/architecture.md, "BM25 text processing".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bm25s  # noqa: E402

from medr3.config import RetrieverConfig  # noqa: E402
from medr3.data import iter_corpus, load_mirage  # noqa: E402
from medr3.retrieval.chunking import chunk_corpus  # noqa: E402
from medr3.retrieval.manifest import ID_SCHEME  # noqa: E402
from medr3.retrieval.quality import evaluate_questions  # noqa: E402
from medr3.retrieval.searcher import Searcher  # noqa: E402
from medr3.retrieval.store import SEARCH_FIELD, chunk_payload  # noqa: E402

TASKS = {"pubmedqa": "PubMedQA*", "bioasq": "BioASQ-Y/N"}
MODES = ("dense", "bm25", "hybrid")
REFERENCE = "bm25s"
KS = (1, 5, 10)


class PlainBM25:
    """`bm25s` over the index's chunks (title + text, as the BM25 arm indexes them), searched like a Searcher."""

    def __init__(self, corpus: str | Path, chunk_words: int, chunk_overlap: int, dedupe_ids: bool = False):
        passages = iter_corpus(corpus, dedupe_ids=dedupe_ids)
        chunks = [chunk_payload(c) for c in chunk_corpus(passages, chunk_words, chunk_overlap)]
        self._doc_ids = [c["doc_id"] for c in chunks]
        self._retriever = bm25s.BM25()  # method "lucene", k1 1.5, b 0.75
        self._retriever.index(self._tokenize([c[SEARCH_FIELD] for c in chunks]), show_progress=False)

    def _tokenize(self, texts: list[str]):
        return bm25s.tokenize(texts, stopwords="en", show_progress=False)

    def batch_search(self, queries: list[str], k: int, mode: str | None = None) -> list[list[dict]]:
        queries = [" ".join(q.split()) for q in queries]  # as the Searcher normalizes them
        k = min(k, len(self._doc_ids))
        rows, _ = self._retriever.retrieve(self._tokenize(queries), k=k, show_progress=False, n_threads=1)
        return [[{"doc_id": self._doc_ids[i]} for i in row] for row in rows]


def evaluate(searcher: Searcher, mirage_path: str | Path, reference: PlainBM25 | None = None) -> dict:
    """`{task: {mode: metrics}}` for the index's three modes and, given, the plain-BM25 `reference` (as mode
    "bm25s"); metrics as `medr3.retrieval.quality.summarize` gives them plus `seconds`."""
    results = {}
    for task in TASKS:
        questions = load_mirage(mirage_path, tasks=[task])[0]
        results[task] = evaluate_questions(searcher, questions, MODES, KS)
        if reference is not None:
            results[task] |= evaluate_questions(reference, questions, [REFERENCE], KS)
    return results


def table(results: dict) -> str:
    cols = [f"hit@{k}" for k in KS] + [f"recall@{max(KS)}", f"mrr@{max(KS)}", f"ndcg@{max(KS)}"]
    lines = [f"{'task':<12}{'mode':<8}{'n':>5}" + "".join(f"{c:>11}" for c in cols) + f"{'q/s':>8}"]
    for task, by_mode in results.items():
        for mode, m in by_mode.items():
            qps = m["n"] / m["seconds"] if m["seconds"] else 0.0
            row = f"{TASKS[task]:<12}{mode:<8}{int(m['n']):>5}" + "".join(f"{m[c]:>11.3f}" for c in cols)
            lines.append(row + f"{qps:>8.0f}")
    return "\n".join(lines)


def plain_bm25(manifest, corpus: str | None) -> PlainBM25:
    """The reference over the corpus the index was built from (or `corpus`)."""
    built = manifest.fingerprint
    corpus = corpus or manifest.corpus or str(ROOT / "data/corpus")
    return PlainBM25(corpus, built["chunk_words"], built["chunk_overlap"], built.get("ids") == ID_SCHEME["dedupe"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-path", default="artifacts/index/default")
    parser.add_argument("--backend", default="edge", choices=["edge", "local", "server"])
    parser.add_argument("--url", help="Qdrant server URL (backend server).")
    parser.add_argument("--mirage", default=str(ROOT / "data/eval/mirage/benchmark_with_pmid.json.xz"))
    parser.add_argument(
        "--corpus", help="Corpus of the plain-BM25 reference (default: the one the index was built from)."
    )
    parser.add_argument("--no-reference", action="store_true", help="Leave out the plain-BM25 reference.")
    parser.add_argument("--out", default="runs/eval_retrieval.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # an index built with older settings says so
    config = RetrieverConfig(backend=args.backend, url=args.url, index_path=args.index_path)
    searcher = Searcher(config)
    try:
        text_index = searcher.manifest.fingerprint.get("text_index", "plain words (built before it was recorded)")
        print(f"[eval] {args.index_path}: BM25 text processing {text_index}")
        reference = None if args.no_reference else plain_bm25(searcher.manifest, args.corpus)
        results = evaluate(searcher, args.mirage, reference)
    finally:
        searcher.close()
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "index_path": args.index_path,
        "text_index": text_index,
        "rrf_k": config.rrf_k,
        "prefetch": config.prefetch,
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    print(f"[eval] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
