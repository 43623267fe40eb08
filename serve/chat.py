"""Chat generation that serves the model's searches, turn by turn, as the training rollout does (medr3.rollout).

A turn streams tokens until ``</answer>``, ``<document>`` (the model imitating the system: stop, as training does),
EOS, the token budget, or ``</search>``; after ``</search>`` the query is searched, the top documents are appended
as ``<document>`` spans (tags stripped, each truncated to the rollout's document budget) and the next turn starts.
Token ids are appended, never re-decoded text. The client sees generated text and inserted documents in order, so
the transcript is exactly what the model read.

Message content is the client's text, never markup: special-token strings in any message are broken so they stay
text, and system and user messages lose protocol tags (`medr3.protocol.plain_text`). Assistant messages keep their
tags: they are the model's own turns (history, or a prefill ending in a search), which the client may write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from medr3.protocol import SEARCH_STOP, documents_text, escape_special_tokens, plain_text, search_query, turn_stops
from medr3.rollout import Completion, GenRequest

StreamFn = Callable[[GenRequest], AsyncIterator[Completion]]
AsyncSearchFn = Callable[[list[str]], Awaitable[list[list[dict]]]]


@dataclass
class Piece:
    """A span of one choice's output: `generated` tokens of model text, or `inserted` tokens of documents; the last
    piece of a choice has `finish_reason` ("stop" or "length") and no text."""

    text: str
    generated: int
    finish_reason: str | None = None
    inserted: int = 0


def chat_prompt(tokenizer, messages: list[dict], continue_final: bool) -> tuple[list[int], str]:
    """Prompt token ids through the chat template, and the assistant prefill text being continued ("" if none).
    Message content and names are made plain first (see the module docstring)."""
    messages = [_plain_message(m, tokenizer) for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not continue_final, continue_final_message=continue_final
        )
    else:  # a base model: a plain transcript
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        text = text.rstrip("\n") if continue_final else text + "assistant: "
    prefill = messages[-1]["content"] if continue_final else ""
    return tokenizer(text, add_special_tokens=False).input_ids, prefill


def _plain_message(message: dict, tokenizer) -> dict:
    plain = escape_special_tokens if message["role"] == "assistant" else plain_text
    out = {**message, "content": plain(message["content"], tokenizer)}
    if out.get("name") is not None:
        out["name"] = plain_text(out["name"], tokenizer)
    return out


@dataclass
class ChatTurns:
    """Runs one choice of a chat request; `search_fn` None = no retrieval (``</search>`` is then plain text)."""

    tokenizer: object
    search_fn: AsyncSearchFn | None
    max_model_len: int
    max_searches: int
    max_document_tokens: int

    async def run(
        self, stream_fn: StreamFn, prompt_ids: list[int], prefill: str, max_tokens: int, seed: int | None
    ) -> AsyncIterator[Piece]:
        ids, generated, searches, turn = list(prompt_ids), 0, 0, 0
        # A prefill that ends in a search is answered first, as if the model had just written it.
        query = search_query(prefill) if self._can_search(0) else None
        carry = "" if query is not None else prefill  # text of the open turn that generation continues
        while True:
            if query is not None:
                text = await self._documents(query)
                inserted = self.tokenizer(text, add_special_tokens=False).input_ids
                kept = inserted[: max(self.max_model_len - len(ids), 0)]
                ids += kept
                searches += 1
                yield Piece(text if len(kept) == len(inserted) else self.tokenizer.decode(kept), 0, inserted=len(kept))
            budget = min(max_tokens - generated, self.max_model_len - len(ids))
            if budget <= 0:
                yield Piece("", 0, "length")
                return
            stops = turn_stops(self._can_search(searches))
            request = GenRequest(ids, budget, stops, None if seed is None else seed + turn)
            turn_text, carry, last = carry, "", None
            async for delta in stream_fn(request):
                ids += delta.token_ids
                generated += len(delta.token_ids)
                turn_text += delta.text
                if delta.text or delta.token_ids:
                    yield Piece(delta.text, len(delta.token_ids))
                last = delta
            if last is None or last.stop_reason != SEARCH_STOP:
                yield Piece("", 0, "length" if last is not None and last.finish_reason == "length" else "stop")
                return
            query = search_query(turn_text) or ""  # an empty query is answered with no documents, as in training
            turn += 1

    def _can_search(self, done: int) -> bool:
        return self.search_fn is not None and done < self.max_searches

    async def _documents(self, query: str) -> str:
        docs = (await self.search_fn([query]))[0] if query else []
        return documents_text(docs, self.tokenizer, self.max_document_tokens)
