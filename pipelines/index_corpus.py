"""Index a corpus for retrieval, resumably: chunk, embed (progress bar), upsert in batches, record progress.

    python pipelines/index_corpus.py [--config configs/default.yaml] [--corpus data/corpus] [--index-path DIR]
                                     [--set retriever.batch_size=128 ...] [--force]

Rerunning after an interruption continues at the first unfinished batch; a finished index is left as it is unless
--force. Settings come from the `retriever` section of the config (backend, embedder, chunking, batch size).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medr3.config import ConfigError, load_config  # noqa: E402
from medr3.data import DataError  # noqa: E402
from medr3.retrieval.indexer import build_index  # noqa: E402
from medr3.retrieval.manifest import IndexNotReadyError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=str(ROOT / "configs/default.yaml"), help="Run config: its `retriever` and `data.corpus`."
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Config override.")
    parser.add_argument("--corpus", help="Corpus jsonl file or folder (default: the config's data.corpus).")
    parser.add_argument("--index-path", help="Index folder (default: the config's retriever.index_path).")
    parser.add_argument("--force", action="store_true", help="Rebuild from scratch even if an index is there.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config(args.config, args.set)  # --set retriever.batch_size=128: one override syntax everywhere
        retriever, corpus = config.retriever, config.data.corpus
        if args.index_path:
            retriever = retriever.model_copy(update={"index_path": args.index_path})
        report = build_index(retriever, args.corpus or corpus, force=args.force)
    except (ConfigError, DataError, IndexNotReadyError, ValueError) as err:
        print(f"[index] error: {err}", file=sys.stderr)
        return 2
    print(f"[index] {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
