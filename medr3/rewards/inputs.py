"""What a reward term sees: one scored trajectory (`RewardInput`) and the shared scoring tools (`RewardContext`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from medr3.config import RewardConfig
from medr3.data import Question
from medr3.embedder import EmbedFn
from medr3.protocol import Parsed, parse
from medr3.rewards.vocabulary import Vocabulary

if TYPE_CHECKING:
    from medr3.rewards.judge import JudgeClient


@dataclass
class RewardInput:
    """One finished trajectory with everything its reward depends on.

    `response` is the full response text: generated text with the inserted ``<document>`` spans. `searches` holds one
    dict per search made, in order: ``{query, doc_ids: [str], documents: [{id, doc_id, title, text, source, score}]}``.
    `self_document` marks a model that wrote a document tag itself; `search_allowed` whether the stage let it search;
    `require_search` whether the stage demands at least one search. `response_tokens` counts generated + inserted
    tokens, against `max_response_tokens` and the DAPO `overlong_buffer`. `finish_reason` is the generator's
    ("stop", "length", …), kept for metrics.
    """

    question: Question
    response: str
    searches: list[dict] = field(default_factory=list)
    self_document: bool = False
    search_allowed: bool = False
    require_search: bool = False
    response_tokens: int = 0
    max_response_tokens: int = 14336
    overlong_buffer: int = 3072
    finish_reason: str = "stop"

    @cached_property
    def parsed(self) -> Parsed:
        """The response split by tag (parsed once; several terms read it)."""
        return parse(self.response)

    @property
    def documents(self) -> list[dict]:
        """Every retrieved document of every search, in order."""
        return [doc for search in self.searches for doc in search.get("documents", [])]


@dataclass
class RewardContext:
    """Tools shared by the terms of one scorer: settings, the embedder, the entity vocabulary, the optional judge.

    Terms that need a missing tool raise ValueError naming it, so a stage whose composition uses them fails loudly
    instead of scoring on a degraded rule.
    """

    config: RewardConfig = field(default_factory=RewardConfig)
    embedder: EmbedFn | None = None
    vocabulary: Vocabulary | None = None
    judge: JudgeClient | None = None

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.embedder is None:
            raise ValueError("this reward term needs an embedder (RewardContext.embedder)")
        return self.embedder(texts)

    def entities(self, text: str) -> list[str]:
        if self.vocabulary is None:
            raise ValueError("this reward term needs a medical vocabulary (RewardContext.vocabulary)")
        return self.vocabulary.entities(text)
