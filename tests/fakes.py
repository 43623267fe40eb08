"""Stand-ins for the generator, the search engine and the trainer's other workers, for tests without Ray or vLLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

from medr3.protocol import ANSWER_STOP, SEARCH_STOP
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
    """Returns `k` documents per query and records each batched call; `batch_search` stands in for a SearchPool."""

    def __init__(self, k: int = 2):
        self.k = k
        self.calls: list[list[str]] = []

    def batch_search(self, queries: list[str], k: int | None = None) -> list[list[dict]]:
        return self(queries)

    def __call__(self, queries: list[str]) -> list[list[dict]]:
        self.calls.append(list(queries))
        return [
            [
                {"id": f"{q}:{j}", "doc_id": f"{q}:{j}", "title": f"About {q}", "text": f"Facts {j} on {q}."}
                for j in range(self.k)
            ]
            for q in queries
        ]


class FakeGeneratorPool:
    """Stands in for GeneratorPool: a well-formed response to every request, searching once first wherever a search
    is allowed; `version` is the weights version last pushed to it."""

    def __init__(self, tokenizer):
        self.tok, self.version, self.calls = tokenizer, 0, 0

    def generate(self, requests: list[GenRequest], temperature: float, top_p: float) -> list[Completion]:
        self.calls += 1
        return [self._one(r) for r in requests]

    def _one(self, r: GenRequest) -> Completion:
        searched = "</document>" in self.tok.decode(r.prompt_ids).split("<think>")[-1]
        if SEARCH_STOP in r.stop and not searched:
            text, stop = "I should check the literature. <search>first-line treatment</search>", SEARCH_STOP
        else:
            text, stop = "The evidence points one way.</think>\n<answer>yes</answer>", ANSWER_STOP
        ids = self.tok(text, add_special_tokens=False).input_ids[: r.max_tokens]
        return Completion(ids, [-1.0] * len(ids), self.tok.decode(ids), "stop", stop)


class FakeLearner:
    """Stands in for LearnerGroup: counts optimizer steps and checkpoints the count; the training call that would
    make step `crash_at` raises instead, as a killed job stops, and the one that would make step `die_at` raises what
    Ray raises when a rank has died."""

    def __init__(self, crash_at: int | None = None, die_at: int | None = None):
        self.steps, self.crash_at, self.die_at, self.seeds = 0, crash_at, die_at, []

    def train(self, samples: list, seed: int = 0) -> dict:
        if self.steps + 1 == self.crash_at:
            raise RuntimeError(f"killed at training call {self.crash_at}")
        if self.steps + 1 == self.die_at:
            from ray.exceptions import RayActorError

            raise RayActorError(error_msg="The actor died unexpectedly.\n\tclass_name: LearnerRank")  # as Ray says
        self.steps += 1
        self.seeds.append(seed)
        return {"loss": 0.0, "tokens_per_s": 1.0}

    def train_sft(self, samples: list, batch_size: int, lr: float, seed: int = 0) -> dict:
        self.steps += 1
        return {"loss": 0.0}

    def save(self, folder: str, export_hf: str | None = None, background: bool = True) -> None:
        Path(folder).mkdir(parents=True)
        (Path(folder) / "steps.json").write_text(json.dumps(self.steps))

    def save_done(self, wait: bool = False) -> bool:
        return True

    def load(self, folder: str) -> None:
        self.steps = json.loads((Path(folder) / "steps.json").read_text())


class Recorder:
    """Records what it is asked to log (stands in for RayMetrics)."""

    def __init__(self):
        self.records: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(dict(record))


def fake_workers(config, tokenizer, learner: FakeLearner | None = None):
    """The trainer's workers without Ray: scripted generators, fake search, the real rule-based reward scorer."""
    from medr3.rewards.scorer import RewardScorer
    from pipelines.progressive import Workers

    generators = FakeGeneratorPool(tokenizer)
    return Workers(
        generators=generators,
        search=FakeSearch(),
        score=RewardScorer(config.reward, corpus=config.data.corpus).score,
        learner=learner or FakeLearner(),
        push_weights=lambda version: setattr(generators, "version", version),
        ray_metrics=Recorder(),
    )
