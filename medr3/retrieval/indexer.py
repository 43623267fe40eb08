"""Build an index from a corpus, resumably: chunk, embed in batches, upsert, record each finished batch.

Chunks are numbered in corpus order and the number is the point id, so batch `b` always holds the same points and
re-upserting it is harmless. After each batch the store is flushed and then the manifest is rewritten atomically with
`batches_done = b + 1`; a rerun with the same inputs skips those batches, and one with different inputs refuses
(or starts over with `force`). Only a finished run whose point count matches marks the manifest `complete`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medr3.config import RetrieverConfig
from medr3.console import console
from medr3.data import LoadReport, corpus_files, iter_corpus
from medr3.embedder import Embedder, load_embedder
from medr3.retrieval.chunking import chunk_corpus
from medr3.retrieval.manifest import ID_SCHEME, UPGRADES, IndexNotReadyError, Manifest, file_digest
from medr3.retrieval.store import SEARCH_FIELD, chunk_payload, open_store, text_index

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What one indexer run did."""

    index_path: str
    points: int
    batches_total: int
    batches_built: int  # by this run
    batches_resumed: int  # skipped because a previous run finished them
    skipped_lines: int  # malformed corpus lines, skipped and counted
    seconds: float
    renamed_ids: int = 0  # repeated passage ids renamed <id>~2, … (dedupe_ids, or the bundled MedQuAD's own)

    def summary(self) -> str:
        renamed = f"; {self.renamed_ids} repeated id(s) renamed" if self.renamed_ids else ""
        return (
            f"{self.index_path}: complete, {self.points} points; {self.batches_built} batches built, "
            f"{self.batches_resumed} resumed of {self.batches_total}; {self.skipped_lines} malformed corpus "
            f"line(s) skipped{renamed}; {self.seconds:.1f}s"
        )


def build_index(
    config: RetrieverConfig,
    corpus: str | Path,
    *,
    embedder: Embedder | None = None,
    force: bool = False,
    dedupe_ids: bool = False,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Index `corpus` (a jsonl file or folder) into the store `config` names, resuming a matching unfinished build.

    `after_batch(b)` runs after batch `b` is recorded (tests use it to interrupt a build). Raises IndexNotReadyError
    when an existing index was built from other inputs and `force` is not set, and DataError when passage ids repeat
    (unless `dedupe_ids`: see `medr3.data.iter_corpus`).
    """
    start = time.perf_counter()
    index_path = Path(config.index_path)
    reports: list[LoadReport] = []
    chunks = list(chunk_corpus(iter_corpus(corpus, reports, dedupe_ids), config.chunk_words, config.chunk_overlap))
    skipped = [f"{r.path}:{where}: {why}" for r in reports for where, why in r.skipped]
    renamed = sum(len(r.renamed) for r in reports)
    batches = [chunks[i : i + config.batch_size] for i in range(0, len(chunks), config.batch_size)]
    fingerprint = {
        "corpus": [file_digest(f) for f in corpus_files(corpus)],
        "embedder": config.embedder,
        "chunk_words": config.chunk_words,
        "chunk_overlap": config.chunk_overlap,
        "batch_size": config.batch_size,
        "embed_max_tokens": config.embed_max_tokens,
        "backend": config.backend,
        "collection": config.collection,
        "url": config.url,
        "ids": ID_SCHEME["dedupe" if dedupe_ids else "unique"],
        "text_index": text_index(config),
    }
    manifest = Manifest.load(index_path)
    if manifest is not None and manifest.fingerprint != fingerprint and not force:
        older = [key for key in UPGRADES if key not in manifest.fingerprint]
        if older and manifest.fingerprint | {key: fingerprint[key] for key in older} == fingerprint:
            reasons = "; ".join(UPGRADES[key] for key in older)
            raise IndexNotReadyError(f"{index_path}: {reasons}; pass --force to rebuild it")
        raise IndexNotReadyError(
            f"{index_path}: holds an index built from other inputs (corpus, embedder, chunking, batch size, id "
            "handling, BM25 text processing or store); pass --force to rebuild it"
        )
    if manifest is not None and manifest.complete and not force:
        log.info("%s: index already complete (%d points)", index_path, manifest.points_total)
        elapsed = time.perf_counter() - start
        return IndexReport(
            str(index_path), manifest.points_total, len(batches), 0, len(batches), len(skipped), elapsed, renamed
        )

    embedder = embedder or load_embedder(config.embedder, dtype=config.embed_dtype)
    query_max_tokens, embedder.max_tokens = embedder.max_tokens, config.embed_max_tokens  # documents only
    fresh = manifest is None or force
    if fresh:
        manifest = Manifest(fingerprint, len(batches), len(chunks), embedder.dim, corpus=str(Path(corpus).resolve()))
        store = open_store(config, dim=embedder.dim)  # deletes whatever a crashed first batch left behind
    else:
        store = open_store(config)
    manifest.sources = dict(Counter(c.source for c in chunks))
    manifest.skipped_lines, manifest.skipped_examples = len(skipped), skipped[:20]
    manifest.save(index_path)  # from here on the folder says "incomplete" until the last batch lands
    resumed = manifest.batches_done
    if resumed:
        log.info("%s: resuming at batch %d of %d", index_path, resumed, len(batches))
    from tqdm import tqdm

    try:
        done = sum(map(len, batches[:resumed]))
        bar = tqdm(total=len(chunks), initial=done, unit="chunk", disable=not progress, file=console(err=True))
        for b in range(resumed, len(batches)):
            batch = batches[b]
            first = b * config.batch_size
            payloads = [chunk_payload(c) for c in batch]
            vectors = embedder.encode([p[SEARCH_FIELD] for p in payloads])  # title + text, as BM25 sees it
            store.upsert(range(first, first + len(batch)), vectors, payloads)
            store.flush()
            manifest.batches_done = b + 1
            manifest.save(index_path)
            bar.update(len(batch))
            if after_batch is not None:
                after_batch(b)
        bar.close()
        points = store.count()
        if points != len(chunks):
            raise IndexNotReadyError(f"{index_path}: store holds {points} points, expected {len(chunks)}")
        manifest.complete = True
        manifest.build_seconds = time.perf_counter() - start
        manifest.save(index_path)
    finally:
        store.close()
        embedder.max_tokens = query_max_tokens
    built = len(batches) - resumed
    elapsed = time.perf_counter() - start
    return IndexReport(str(index_path), points, len(batches), built, resumed, len(skipped), elapsed, renamed)
