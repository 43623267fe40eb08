"""The index manifest: what an index was built from and how far the build got.

It lives at `<index_path>/manifest.json` and is rewritten atomically (temp file + rename) after every finished
batch, so a crash leaves either the previous or the next state, never a torn file. An index is usable only when its
manifest says `complete`; the searcher refuses anything else, so an interrupted build is never a silently partial
index.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medr3.atomic import write_text_atomic
from medr3.config import RetrieverConfig
from medr3.retrieval.store import text_index

MANIFEST_NAME = "manifest.json"
log = logging.getLogger(__name__)

# The fingerprint's "ids": how passage ids were made unique. Indexes built before (issue 16) have no such key: their
# bundled MedQuAD ids repeat across its collections, so a result's doc_id may name two passages.
ID_SCHEME = {"unique": "unique", "dedupe": "unique, repeats renamed <id>~2"}
OLD_IDS = (
    "built before passage ids were made unique (the bundled MedQuAD repeated ids such as medquad:0000004-1 across its "
    "collections, so a search result's doc_id may name two passages)"
)
# The fingerprint's "text_index": the BM25 arm's text processing (`medr3.retrieval.store.text_index`). Indexes built
# before it was configurable have no such key: their text index holds plain lowercased words.
OLD_TEXT_INDEX = (
    "built before the BM25 arm dropped stopwords and stemmed (its text index holds plain words, a weaker BM25 arm: "
    "docs/architecture.md, 'BM25 text processing')"
)
# Keys an older index lacks, and what that means: still searchable, but a resume of its build is refused.
UPGRADES = {"ids": OLD_IDS, "text_index": OLD_TEXT_INDEX}


class IndexNotReadyError(RuntimeError):
    """An index that is missing, still being built, interrupted, or built from something else."""


@dataclass
class Manifest:
    """Build state of one index.

    `fingerprint` pins the inputs (corpus files by name/size/sha256, embedder, chunking, batch size, backend and
    collection, how repeated passage ids were handled: `ID_SCHEME`, the BM25 arm's text processing: `text_index`):
    a rerun resumes only if it matches. Batches are processed in order, so `batches_done` is a prefix.
    """

    fingerprint: dict
    batches_total: int
    points_total: int
    dim: int
    batches_done: int = 0
    complete: bool = False
    sources: dict[str, int] = field(default_factory=dict)  # chunks per corpus source
    skipped_lines: int = 0
    skipped_examples: list[str] = field(default_factory=list)  # first few "file:line: reason"
    build_seconds: float = 0.0
    corpus: str = ""  # the corpus file or folder indexed (absolute), so a hint to resume names it

    def save(self, index_path: str | Path) -> None:
        """Write atomically: a reader sees the old manifest or the new one, never half of one."""
        write_text_atomic(Path(index_path) / MANIFEST_NAME, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, index_path: str | Path) -> Manifest | None:
        """The manifest at `index_path`, or None if there is none."""
        path = Path(index_path) / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as err:
            raise IndexNotReadyError(f"{path}: unreadable manifest ({err}); rebuild the index with --force") from err


def require_complete(index_path: str | Path) -> Manifest:
    """The manifest of a finished index, else IndexNotReadyError saying what is wrong and how to fix it."""
    manifest = Manifest.load(index_path)
    hint = f"build it with: python pipelines/index_corpus.py --index-path {index_path}"
    if manifest is None:
        raise IndexNotReadyError(f"{index_path}: no index manifest, so no finished index here; {hint}")
    if not manifest.complete:
        raise IndexNotReadyError(
            f"{index_path}: index incomplete ({manifest.batches_done}/{manifest.batches_total} batches; interrupted "
            f"or still building); rerun the indexer to finish it: python pipelines/index_corpus.py "
            + (f"--corpus {manifest.corpus} " if manifest.corpus else "")
            + f"--index-path {index_path}"
        )
    return manifest


def check_index(config: RetrieverConfig) -> Manifest:
    """The manifest of the finished index `config` names, built for the same backend, collection and embedder, else
    IndexNotReadyError naming the collection, what differs and what to run. The pipelines call it before any actor
    starts (for the server backend the manifest is all there is to check locally); the Searcher again on opening."""
    manifest = require_complete(config.index_path)
    built = manifest.fingerprint
    wanted = {"backend": config.backend, "collection": config.collection, "embedder": config.embedder}
    differ = [
        f"{key} {built.get(key)!r} (config: {value!r})" for key, value in wanted.items() if built.get(key) != value
    ]
    if differ:
        raise IndexNotReadyError(
            f"{config.index_path}: collection {config.collection!r}: the index was built with {', '.join(differ)}; "
            f"rebuild it with: python pipelines/index_corpus.py --config <this config> --index-path "
            f"{config.index_path} --force"
        )
    corpus = f"--corpus {manifest.corpus} " if manifest.corpus else ""
    rebuild = f"python pipelines/index_corpus.py {corpus}--index-path {config.index_path} --force"
    if "corpus" in built:  # built by the indexer here; an older index still searches: a warning, not a refusal
        for key, why in UPGRADES.items():
            if key not in built:
                log.warning("%s: %s; rebuild it with: %s", config.index_path, why, rebuild)
        wanted_text = text_index(config)
        if "text_index" in built and built["text_index"] != wanted_text:
            log.warning(
                "%s: its BM25 arm was built with text processing %s, the config asks for %s; searching with the "
                "index's own; rebuild it to change it: %s",
                config.index_path,
                built["text_index"],
                wanted_text,
                rebuild,
            )
    return manifest


def is_complete(index_path: str | Path) -> bool:
    """Whether `index_path` holds a finished index (by its manifest)."""
    try:
        manifest = Manifest.load(index_path)
    except IndexNotReadyError:
        return False
    return manifest is not None and manifest.complete


def file_digest(path: str | Path) -> dict:
    """Name, size and sha256 of one corpus file (a few MB; hashing takes milliseconds)."""
    path = Path(path)
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha.hexdigest()}
