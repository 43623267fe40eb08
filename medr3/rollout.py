"""The multi-turn, retrieval-interleaved rollout (docs/method.md §2, docs/architecture.md), with Ray kept at the edge.

For every question × sample: generate until ``</search>``, ``</answer>`` or EOS; make one batched search call per turn
for all samples that stopped at ``</search>``; append the documents as tokens (loss mask 0); continue with each
sample's remaining budget. Tokens are appended, never re-decoded and re-tokenised. `generate_fn` and `search_fn`
are plain callables, so the same loop runs on Ray actor pools, on a Serve replica, or on fakes in unit tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from medr3.config import Config
from medr3.data import Question
from medr3.protocol import (
    ANSWER_STOP,
    DOCUMENT_OPEN,
    SEARCH_STOP,
    ResponseBuilder,
    build_prompt,
    documents_text,
    search_query,
    turn_stops,
)


@dataclass(frozen=True)
class GenRequest:
    """One generation call: continue `prompt_ids` for at most `max_tokens`, stopping at any of `stop`."""

    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None = None


@dataclass
class Completion:
    """One generation result: generated ids (including the token that completed a stop string), each sampled
    token's logprob, the text, and why it stopped (`stop_reason` = the stop string matched; None for EOS/length)."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    stop_reason: str | None = None


GenerateFn = Callable[[list[GenRequest]], list[Completion]]
SearchFn = Callable[[list[str]], list[list[dict]]]


@dataclass
class Trajectory:
    """One sampled response to one question, ready for reward and training.

    `response_ids`, `loss_mask` (1 generated / 0 inserted) and `logprobs` (generator logprobs; 0.0 where inserted)
    have equal length. `searches` lists `{query, doc_ids, documents}` in order. `finish_reason` is one of
    `answer`, `eos`, `length`, `self_document`.
    """

    question: Question
    sample: int
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    searches: list[dict] = field(default_factory=list)
    finish_reason: str = ""
    self_document: bool = False
    text: str = ""
    search_allowed: bool = False

    @property
    def generated_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def inserted_tokens(self) -> int:
        return len(self.loss_mask) - self.generated_tokens


@dataclass
class RolloutSettings:
    max_response_tokens: int
    max_model_len: int
    max_searches: int = 4
    max_document_tokens: int = 256
    seed: int = 0

    @classmethod
    def from_config(cls, config: Config, max_response_tokens: int | None = None) -> RolloutSettings:
        """The run's settings, so that training, evaluation and serving generate under the same budgets."""
        return cls(
            max_response_tokens or config.grpo.max_response_tokens,
            config.generator.max_model_len,
            config.rollout.max_searches,
            config.rollout.max_document_tokens,
            config.run.seed,
        )


@dataclass
class _Sample:
    traj: Trajectory
    builder: ResponseBuilder = field(default_factory=ResponseBuilder)
    pieces: list[str] = field(default_factory=list)
    done: bool = False
    pending_query: str | None = None


class Rollout:
    """Runs the protocol for a batch of questions; see the module docstring."""

    def __init__(self, tokenizer, generate_fn: GenerateFn, search_fn: SearchFn | None, settings: RolloutSettings):
        self.tokenizer = tokenizer
        self.generate_fn = generate_fn
        self.search_fn = search_fn
        self.settings = settings

    def run(self, questions: Sequence[Question], n: int, search: bool, step: int = 0) -> list[Trajectory]:
        """`n` trajectories per question, in question order then sample order."""
        if search and self.search_fn is None:
            raise ValueError("a retrieval stage needs a search function")
        samples = []
        for q in questions:
            prompt = build_prompt(q, self.tokenizer, search=search, max_searches=self.settings.max_searches)
            ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
            samples += [_Sample(Trajectory(q, i, ids, search_allowed=search)) for i in range(n)]
        for turn in range(self.settings.max_searches + 1):
            active = [s for s in samples if not s.done]
            if not active:
                break
            self._generate_turn(active, search, step, turn)
            self._search_turn([s for s in active if s.pending_query is not None])
        for s in samples:
            self._finish(s)
        return [s.traj for s in samples]

    def _generate_turn(self, active: list[_Sample], search: bool, step: int, turn: int) -> None:
        for s in active:
            if self._budget(s) <= 0:  # the prompt alone fills the context
                s.done, s.traj.finish_reason = True, "length"
        active = [s for s in active if not s.done]
        if not active:
            return
        requests = []
        for s in active:
            can_search = search and len(s.traj.searches) < self.settings.max_searches
            ids, seed = s.traj.prompt_ids + s.builder.ids, self._seed(s, step, turn)
            requests.append(GenRequest(ids, self._budget(s), turn_stops(can_search), seed))
        for s, out in zip(active, self.generate_fn(requests), strict=True):
            s.builder.add_generated(out.token_ids, out.logprobs)
            s.pieces.append(self.tokenizer.decode(out.token_ids, skip_special_tokens=True))
            if out.stop_reason == SEARCH_STOP:
                s.pending_query = search_query(out.text) or ""
            elif out.stop_reason == DOCUMENT_OPEN:
                s.done, s.traj.self_document, s.traj.finish_reason = True, True, "self_document"
            elif out.finish_reason == "length" or self._budget(s) <= 0:
                s.done, s.traj.finish_reason = True, "length"
            else:
                s.done, s.traj.finish_reason = True, "answer" if out.stop_reason == ANSWER_STOP else "eos"

    def _search_turn(self, searching: list[_Sample]) -> None:
        if not searching:
            return
        queries = [s.pending_query for s in searching]
        # One batched call for the whole active batch; an empty query is recorded but not sent.
        sent = [q for q in queries if q]
        results = iter(self.search_fn(sent)) if sent else iter(())
        for s, query in zip(searching, queries, strict=True):
            docs = next(results) if query else []
            s.traj.searches.append(
                {"query": query, "doc_ids": [d.get("doc_id", d.get("id")) for d in docs], "documents": docs}
            )
            s.pending_query = None
            self._insert(s, docs)

    def _insert(self, s: _Sample, docs: list[dict]) -> None:
        text = documents_text(docs, self.tokenizer, self.settings.max_document_tokens)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        budget = self._budget(s)
        if len(ids) >= budget:
            ids, s.done, s.traj.finish_reason = ids[: max(budget, 0)], True, "length"
        s.builder.add_inserted(ids)
        s.pieces.append(self.tokenizer.decode(ids) if s.done else text)

    def _budget(self, s: _Sample) -> int:
        by_response = self.settings.max_response_tokens - len(s.builder)
        by_context = self.settings.max_model_len - len(s.traj.prompt_ids) - len(s.builder)
        return min(by_response, by_context)

    def _seed(self, s: _Sample, step: int, turn: int) -> int:
        key = f"{self.settings.seed}/{step}/{s.traj.question.id}/{s.traj.sample}/{turn}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")

    @staticmethod
    def _finish(s: _Sample) -> None:
        s.traj.response_ids, s.traj.loss_mask, s.traj.logprobs = s.builder.ids, s.builder.mask, s.builder.logprobs
        s.traj.text = "".join(s.pieces)
