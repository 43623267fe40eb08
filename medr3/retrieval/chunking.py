"""Split long passages into overlapping word windows, keeping each chunk traceable to its passage."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from medr3.data import Passage


def chunk_passage(passage: Passage, words: int, overlap: int) -> list[Passage]:
    """`passage` as chunks of at most `words` words, consecutive chunks sharing `overlap` words.

    A passage that fits is returned unchanged (same id and text). Otherwise chunk `i` gets id `"{id}#{i}"`; title,
    source and `doc_id` (the id gold evidence refers to, e.g. the PMID) are kept on every chunk.
    """
    if not 0 <= overlap < words:
        raise ValueError(f"need 0 <= overlap < words (got overlap={overlap}, words={words})")
    tokens = passage.text.split()
    if len(tokens) <= words:
        return [passage]
    stride = words - overlap
    chunks = []
    for start in range(0, len(tokens), stride):
        piece = " ".join(tokens[start : start + words])
        chunks.append(Passage(f"{passage.id}#{len(chunks)}", passage.title, piece, passage.source, passage.doc_id))
        if start + words >= len(tokens):
            break
    return chunks


def chunk_corpus(passages: Iterable[Passage], words: int, overlap: int) -> Iterator[Passage]:
    """All chunks of `passages`, in corpus order (the order fixes point ids, so it must be deterministic)."""
    for passage in passages:
        yield from chunk_passage(passage, words, overlap)
