"""Scripted stand-ins for the generator and the search engine, for unit tests of pure rollout logic only."""

from __future__ import annotations

import re

from medr3.rollout import Completion, GenRequest

_INSERTED = re.compile(r"\n(?:<document>.*?</document>\n)*", re.DOTALL)


class ScriptedGenerator:
    """Plays back a fixed response text per question, stopping where the real engine would.

    The text generated so far is recovered from the request by removing the inserted document blocks, so scripts must
    not contain newlines. Each call is recorded.
    """

    def __init__(self, tokenizer, scripts: dict[str, str], prompt_lens: dict[str, int] | None = None):
        self.tok = tokenizer
        self.scripts = scripts
        self.calls: list[list[GenRequest]] = []

    def __call__(self, requests: list[GenRequest]) -> list[Completion]:
        self.calls.append(requests)
        return [self._one(r) for r in requests]

    def _one(self, r: GenRequest) -> Completion:
        full = self.tok.decode(r.prompt_ids)
        qid = re.search(r"QID(\w+)", full).group(1)
        script = self.scripts[qid]
        done = _INSERTED.sub("", full.split("<think>")[-1] if "<think>" in full else "")
        rest = script[len(done) :]
        cut = min([rest.find(s) + len(s) for s in r.stop if s in rest] or [len(rest)])
        text = rest[:cut]
        stop = next((s for s in r.stop if text.endswith(s)), None)
        ids = self.tok(text, add_special_tokens=False).input_ids
        finish = "stop"
        if len(ids) > r.max_tokens:
            ids, stop, finish = ids[: r.max_tokens], None, "length"
        return Completion(ids, [-1.0] * len(ids), self.tok.decode(ids), finish, stop)


class FakeSearch:
    """Returns `k` documents per query and records each batched call."""

    def __init__(self, k: int = 2):
        self.k = k
        self.calls: list[list[str]] = []

    def __call__(self, queries: list[str]) -> list[list[dict]]:
        self.calls.append(list(queries))
        return [
            [
                {"id": f"{q}:{j}", "doc_id": f"{q}:{j}", "title": f"About {q}", "text": f"Facts {j} on {q}."}
                for j in range(self.k)
            ]
            for q in queries
        ]
