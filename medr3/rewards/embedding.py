"""Embeddings for reward terms: any callable `texts -> (N, D) array with unit-norm rows`, so tests inject a
deterministic fake; the scorer uses the project's embedder (`medr3.embedder`, all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def load_embed_fn(name_or_path: str = "minilm") -> EmbedFn:
    """The project's encoder as an `EmbedFn` (loads torch; ~0.1 s after that). Texts past the model's limit (256
    word pieces for MiniLM) are truncated, so only the start of a long reasoning is compared."""
    from medr3.embedder import load_embedder

    return load_embedder(name_or_path).encode


class CachedEmbedder:
    """Memoises an embedder per text: the 16 samples of a prompt share its reference reasoning, embedded once."""

    def __init__(self, embed: EmbedFn, max_entries: int = 4096):
        self._embed, self._max, self._cache = embed, max_entries, {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = dict(zip(missing, self._embed(missing), strict=True)) if missing else {}
        out = np.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])
        if len(self._cache) + len(fresh) > self._max:
            self._cache.clear()  # bounded memory; a miss only costs a re-embedding
        self._cache.update(fresh)
        return out
