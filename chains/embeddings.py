"""Sentence embeddings from WordLlama, whose 256-d weights ship inside the PyPI package.

Loaded once per process (about 0.1 s) and never downloaded: `disable_download=True`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import wordllama

if TYPE_CHECKING:
    from wordllama import WordLlama

EMBEDDING_DIM = 256


@lru_cache(maxsize=1)
def _model() -> WordLlama:
    from wordllama import WordLlama

    return WordLlama.load(
        cache_dir=Path(wordllama.__file__).parent, disable_download=True, dim=EMBEDDING_DIM
    )


def embed(texts: list[str]) -> np.ndarray:
    """Unit-normalised float32 vectors, so a dot product is the cosine similarity."""
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    vectors = np.asarray(_model().embed(texts, norm=True), dtype=np.float32)
    return vectors


def embed_one(text: str) -> np.ndarray:
    return embed([text])[0]
