"""Optional LLM judge for the answer (the release's 0/1/2 rubric), behind an OpenAI-compatible URL or a local callable.

A judgement that fails — HTTP error, timeout, or a reply that is not a grade — after all retries scores
`JudgeConfig.failure_score` (the release: -1.0) and is counted, so a broken judge shows in the metrics instead of
silently training on a constant.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from medr3.config import JudgeConfig
from medr3.data import Question
from medr3.protocol import question_text
from medr3.retry import retry
from medr3.rewards.answer import FULL, MISSING, PARTIAL, WRONG
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.registry import register_reward

log = logging.getLogger(__name__)

GRADE_SCORES = {2: FULL, 1: PARTIAL, 0: WRONG}
RUBRIC = """You are grading a candidate's answer to a medical question against the reference answer.

Question:
{question}

Reference answer: {gold}
Candidate answer: {answer}

Grade the candidate answer:
2 = fully correct: it gives the same diagnosis, treatment or choice as the reference (wording may differ);
1 = partially correct: it is on the right track but incomplete, too vague, or mixes the right answer with a wrong one;
0 = wrong: it contradicts the reference, is irrelevant, or gives no answer.

Reply with the grade only: a single digit, 0, 1 or 2."""

_GRADE = re.compile(r"^(?:(?:grade|score)\s*[:=]?\s*)?([012])(?:\s*/\s*2)?\s*\.?$", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


class JudgeError(RuntimeError):
    """One failed judging attempt (transport error, bad HTTP status, or an unparsable reply)."""


def judge_prompt(question: Question, answer: str) -> str:
    gold = f"{question.answer_letter}. {question.answer_text}" if question.answer_letter else question.answer_text
    return RUBRIC.format(question=question_text(question), gold=gold, answer=answer)


def parse_grade(reply: str) -> int:
    """The grade 0, 1 or 2 of a judge's reply ("2", "Grade: 1", "2/2"; a leading <think> block is ignored)."""
    match = _GRADE.match(_THINK.sub("", reply).strip())
    if not match:
        raise JudgeError(f"unparsable judge reply {reply[:80]!r}")
    return int(match.group(1))


def http_completion(config: JudgeConfig) -> Callable[[str], str]:
    """A prompt -> reply function over the OpenAI-compatible chat-completions API at `config.url` (…/v1)."""
    import openai

    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    # The SDK's own retries stay off: `JudgeClient` retries every failure (unparsable replies and local judges
    # too) with the config's backoff, so `retries` means one thing and a request is never retried twice over.
    client = openai.OpenAI(
        base_url=config.url.rstrip("/").removesuffix("/chat/completions"),
        api_key=api_key or "none",  # servers without auth (vLLM, llama.cpp) ignore it; the SDK insists on one
        timeout=config.timeout_s,
        max_retries=0,
    )

    def complete(prompt: str) -> str:
        try:
            reply = client.chat.completions.create(
                model=config.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0.0,
                max_tokens=config.max_tokens,
            )
            return reply.choices[0].message.content or ""
        except (openai.OpenAIError, ValueError, IndexError, TypeError, AttributeError) as err:
            raise JudgeError(f"judge request to {client.base_url} failed: {err}") from err

    return complete


class JudgeClient:
    """Grades (question, answer) pairs with the rubric; memoises per batch and counts requests and failures.

    `complete` is a prompt -> reply callable (e.g. a local GeneratorWorker's chat call); without it the client calls
    `config.url`. Each judgement tries 1 + `config.retries` times with exponential backoff.
    """

    def __init__(self, config: JudgeConfig, complete: Callable[[str], str] | None = None):
        if complete is None and not config.url:
            raise ValueError("the judge needs reward.judge.url or a local completion callable")
        self.config = config
        self._complete = complete or http_completion(config)
        self._cache: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self.counters = {"judge/requests": 0, "judge/failures": 0}

    def grade(self, question: Question, answer: str | None) -> float:
        """1.0 / 0.4 / 0.1 for grades 2 / 1 / 0; 0.0 for a missing answer (no call); failure_score on failure."""
        if not answer or not answer.strip():
            return MISSING
        key = (question.id + "\n" + question.question, answer)
        if key not in self._cache:
            self._cache[key] = self._judge(question, answer)
        return self._cache[key]

    def prefetch(self, pairs: list[tuple[Question, str | None]]) -> None:
        """Grade many pairs concurrently (up to `config.concurrency` requests in flight) into the cache."""
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            list(pool.map(lambda pair: self.grade(*pair), _unique(pairs)))

    def reset(self) -> None:
        """Forget memoised grades (the scorer calls this per batch)."""
        self._cache.clear()

    def _judge(self, question: Question, answer: str) -> float:
        prompt = judge_prompt(question, answer)
        with self._lock:
            self.counters["judge/requests"] += 1
        attempts = self.config.retries + 1

        def warn(attempt: int, err: BaseException) -> None:
            log.warning("judge attempt %d/%d failed: %s", attempt, attempts, err)

        try:
            grade = retry(
                lambda: parse_grade(self._complete(prompt)),
                attempts,
                backoff_s=self.config.retry_backoff_s,
                on_failure=warn,
            )
        except Exception:  # noqa: BLE001  a local callable may raise anything; all count as failures
            with self._lock:
                self.counters["judge/failures"] += 1
            return self.config.failure_score
        return GRADE_SCORES[grade]


def _unique(pairs: list[tuple[Question, str | None]]) -> list[tuple[Question, str | None]]:
    return list({(q.id, q.question, a): (q, a) for q, a in pairs}.values())


@register_reward("judge")
def judge_term(item: RewardInput, ctx: RewardContext) -> float:
    """Range {failure_score, 0.0, 0.1, 0.4, 1.0}: the LLM judge's grade of the answer (see `JudgeClient.grade`)."""
    if ctx.judge is None:
        raise ValueError("reward term 'judge' needs reward.judge.url or a local judge")
    return ctx.judge.grade(item.question, item.parsed.answer)
