"""Response bodies: OpenAI chat completions (whole, or streamed as server-sent events) and /v1/answer's."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator

from medr3.protocol import PROTOCOL_TAGS, extract_answer, parse, strip_tags
from medr3.rollout import Trajectory
from serve.chat import Piece
from serve.schemas import ApiError

log = logging.getLogger("ray.serve")


async def _collect(run: AsyncIterator[Piece]) -> tuple[str, int, int, str]:
    text, generated, inserted, finish = [], 0, 0, "stop"
    async for piece in run:
        text.append(piece.text)
        generated += piece.generated
        inserted += piece.inserted
        finish = piece.finish_reason or finish
    return "".join(text), generated, inserted, finish


async def complete(head: dict, runs: list[AsyncIterator[Piece]], prompt_tokens: int) -> dict:
    results = await asyncio.gather(*(_collect(r) for r in runs))
    completion, retrieved = sum(r[1] for r in results), sum(r[2] for r in results)
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        for i, (text, _, _, finish) in enumerate(results)
    ]
    usage = _usage(prompt_tokens, completion, retrieved)
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage}


def _usage(prompt_tokens: int, completion_tokens: int, retrieved_tokens: int) -> dict:
    """Token counts of both routes: `retrieved_tokens` are the inserted documents the model read, in the total."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "retrieved_tokens": retrieved_tokens,
        "total_tokens": prompt_tokens + completion_tokens + retrieved_tokens,
    }


async def sse(
    head: dict, runs: list[AsyncIterator[Piece]], prompt_tokens: int, include_usage: bool, every_s: float = 0.0
) -> AsyncIterator[str]:
    """OpenAI's stream: `data: {chunk}` events, one choice delta each, then optional usage, then `data: [DONE]`.

    Events made less than `every_s` after the last item went out wait and go out together, as one item of several
    events (at most `every_s` late): each item the model replica yields costs a message to the ingress and back, and
    the engine makes one event per token."""

    def event(choices: list[dict], **more) -> str:
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': choices, **more})}\n\n"

    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, run: AsyncIterator[Piece]) -> None:
        try:
            async for piece in run:
                await queue.put((i, piece))
        except Exception as err:  # reported in the stream: the status line has already gone out
            await queue.put((i, err))
        await queue.put((i, None))

    yield event(
        [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i in range(len(runs))]
    )
    tasks = [asyncio.create_task(pump(i, run)) for i, run in enumerate(runs)]
    clock = asyncio.get_running_loop().time
    try:
        open_runs, completion, retrieved = len(runs), 0, 0
        pending: list[str] = []
        sent = -math.inf
        while open_runs:
            if pending and clock() - sent >= every_s:
                yield "".join(pending)
                pending, sent = [], clock()
            try:
                i, item = await asyncio.wait_for(queue.get(), sent + every_s - clock() if pending else None)
            except TimeoutError:
                continue
            if item is None:
                open_runs -= 1
            elif isinstance(item, Exception):
                log.error("stream failed: %s: %s", type(item).__name__, item)
                pending.append(error_event(ApiError.from_failure(item)))
                break
            else:
                completion += item.generated
                retrieved += item.inserted
                delta = {"content": item.text} if item.text else {}
                pending.append(event([{"index": i, "delta": delta, "finish_reason": item.finish_reason}]))
        if include_usage:
            pending.append(event([], usage=_usage(prompt_tokens, completion, retrieved)))
        yield "".join(pending) + "data: [DONE]\n\n"
    finally:  # a client that hangs up cancels the pumps, which aborts their engine requests
        for task in tasks:
            task.cancel()


def error_event(err: ApiError) -> str:
    """A failure after a stream's 200: its last event, `data: {"error": {...}}` (the `openai` client raises it)."""
    return f"data: {json.dumps(err.body())}\n\n"


def answer_body(traj: Trajectory, snippet_chars: int, latency_ms: float) -> dict:
    """The /v1/answer response for one trajectory: answer, reasoning (searches and documents removed), the searches
    with their documents as snippets (tags stripped), token usage. The letter comes from `extract_answer`, the
    matcher the reward scores with: an answer whose text names another option than its letter has none."""
    parsed = parse(traj.text)
    letter, _ = extract_answer(parsed.answer, traj.question.options)
    searches = [
        {"query": s["query"], "documents": [_document(d, snippet_chars) for d in s["documents"]]}
        for s in traj.searches
    ]
    return {
        "answer": strip_tags(parsed.answer).strip() if parsed.answer is not None else None,
        "answer_letter": letter,
        "reasoning": _reasoning(parsed.think),
        "searches": searches,
        "finish_reason": traj.finish_reason,
        "usage": _usage(len(traj.prompt_ids), traj.generated_tokens, traj.inserted_tokens),
        "latency_ms": round(latency_ms, 1),
    }


_OPEN_SPAN = re.compile(r"<(?:search|document)>.*", re.DOTALL)  # never closed: the response was cut inside it
_PARTIAL_TAG = re.compile(f"</?(?:{'|'.join(t[:i] for t in PROTOCOL_TAGS for i in range(len(t)))})$")  # "<docu"


def _reasoning(think: str) -> str:
    """The reasoning `parse` found (whole searches and documents already removed) without what a cut-off response
    leaves: an unclosed search or document, a stray tag, a tag cut mid-word. It never ends inside a tag."""
    text = strip_tags(_OPEN_SPAN.sub("", think))
    return " ".join(_PARTIAL_TAG.sub("", text.rstrip()).split())


def _document(doc: dict, snippet_chars: int) -> dict:
    text = " ".join(strip_tags(str(doc.get("text", ""))).split())
    snippet = text if len(text) <= snippet_chars else text[: snippet_chars - 1].rstrip() + "…"
    return {
        "id": str(doc.get("id", doc.get("doc_id", ""))),
        "title": " ".join(strip_tags(str(doc.get("title", ""))).split()),
        "snippet": snippet,
        "score": float(doc.get("score", 0.0)),
    }
