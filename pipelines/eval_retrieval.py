"""Retrieval quality on MIRAGE's PubMedQA* and BioASQ-Y/N: hit@k, recall@k and MRR of the gold PMIDs, for dense,
BM25 and hybrid search over the built index. Prints a table and writes JSON.

    python pipelines/eval_retrieval.py [--index-path artifacts/index/default] [--out runs/eval_retrieval.json]

The bundled corpus holds these questions' gold abstracts (data/README.md, "Leakage warning"): this measures
retrieval, not answer accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medr3.config import RetrieverConfig  # noqa: E402
from medr3.data import load_mirage  # noqa: E402
from medr3.retrieval.quality import evaluate_questions  # noqa: E402
from medr3.retrieval.searcher import Searcher  # noqa: E402

TASKS = {"pubmedqa": "PubMedQA*", "bioasq": "BioASQ-Y/N"}
MODES = ("dense", "bm25", "hybrid")
KS = (1, 5, 10)


def evaluate(searcher: Searcher, mirage_path: str | Path) -> dict:
    """`{task: {mode: metrics}}`, metrics as `medr3.retrieval.quality.summarize` gives them plus `seconds`."""
    return {task: evaluate_questions(searcher, load_mirage(mirage_path, tasks=[task])[0], MODES, KS) for task in TASKS}


def table(results: dict) -> str:
    cols = [f"hit@{k}" for k in KS] + [f"recall@{max(KS)}", f"mrr@{max(KS)}"]
    lines = [f"{'task':<12}{'mode':<8}{'n':>5}" + "".join(f"{c:>11}" for c in cols) + f"{'q/s':>8}"]
    for task, by_mode in results.items():
        for mode, m in by_mode.items():
            qps = m["n"] / m["seconds"] if m["seconds"] else 0.0
            row = f"{TASKS[task]:<12}{mode:<8}{int(m['n']):>5}" + "".join(f"{m[c]:>11.3f}" for c in cols)
            lines.append(row + f"{qps:>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-path", default="artifacts/index/default")
    parser.add_argument("--backend", default="edge", choices=["edge", "local", "server"])
    parser.add_argument("--url", help="Qdrant server URL (backend server).")
    parser.add_argument("--mirage", default=str(ROOT / "data/eval/mirage/benchmark_with_pmid.json.xz"))
    parser.add_argument("--out", default="runs/eval_retrieval.json")
    args = parser.parse_args(argv)
    config = RetrieverConfig(backend=args.backend, url=args.url, index_path=args.index_path)
    searcher = Searcher(config)
    try:
        results = evaluate(searcher, args.mirage)
    finally:
        searcher.close()
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"index_path": args.index_path, "rrf_k": config.rrf_k, "prefetch": config.prefetch, "results": results}
    out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    print(f"[eval] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
