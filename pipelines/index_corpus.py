"""Index a corpus for retrieval, resumably: chunk, embed (progress bar), upsert in batches, record progress.

    python pipelines/index_corpus.py [--config configs/default.yaml] [--set retriever.batch_size=128 ...] [--force]
    python pipelines/index_corpus.py --corpus my_passages.jsonl [--index-path DIR] [--dedupe-ids]

A corpus is a jsonl file of passages `{id, text, title?, source?}` (or a folder of them); ids must be unique, else the
run stops naming each repeat's file and line (`--dedupe-ids` renames repeats `<id>~2`, `<id>~3`, …). Without
`--corpus` the config's `data.corpus` goes into its `retriever.index_path`; a `--corpus` goes into a new folder,
`artifacts/index/<corpus name>` unless `--index-path` says otherwise (with `retriever.backend: server`, pick its
collection with `--set retriever.collection=NAME`). Rerunning after an interruption continues at the first unfinished
batch; a finished index is left as it is unless --force. Settings come from the `retriever` section of the config
(backend, embedder, chunking, batch size). Search the new index with `--set retriever.index_path=DIR`.
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
from medr3.data import DataError, file_stem  # noqa: E402
from medr3.retrieval.indexer import build_index  # noqa: E402
from medr3.retrieval.manifest import IndexNotReadyError  # noqa: E402


def index_path_for(corpus: str | None, index_path: str | None, configured: str, base: Path) -> str:
    """Where the index goes: `--index-path`, else a new folder named after `--corpus`, else the config's."""
    if index_path:
        return index_path
    if corpus:
        return str(base / "artifacts/index" / file_stem(Path(corpus).resolve()))
    return configured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=str(ROOT / "configs/default.yaml"), help="Run config: its `retriever` and `data.corpus`."
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Config override.")
    parser.add_argument("--corpus", help="Corpus jsonl file or folder (default: the config's data.corpus).")
    parser.add_argument(
        "--index-path", help="Index folder (default: artifacts/index/<corpus name> for --corpus, else the config's)."
    )
    parser.add_argument("--dedupe-ids", action="store_true", help="Rename repeated passage ids <id>~2, … (not stop).")
    parser.add_argument("--force", action="store_true", help="Rebuild from scratch even if an index is there.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = Path(os.environ.get("MEDR3_ROOT") or Path.cwd())
    try:
        config = load_config(args.config, args.set)  # --set retriever.batch_size=128: one override syntax everywhere
        retriever = config.retriever
        index_path = index_path_for(args.corpus, args.index_path, retriever.index_path, base)
        retriever = retriever.model_copy(update={"index_path": index_path})
        corpus = args.corpus or config.data.corpus
        report = build_index(retriever, corpus, force=args.force, dedupe_ids=args.dedupe_ids)
    except (ConfigError, DataError, IndexNotReadyError, ValueError) as err:
        print(f"[index] error: {err}", file=sys.stderr)
        return 2
    print(f"[index] {report.summary()}")
    if args.corpus:
        print(f"[index] search it with: --set retriever.index_path={index_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
