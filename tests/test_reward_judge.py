"""The optional LLM judge against a real HTTP server on 127.0.0.1 that answers with fixed JSON."""

from __future__ import annotations

import json
import threading
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medr3.config import JudgeConfig, RewardComposition, RewardConfig
from medr3.data import Question
from medr3.rewards.inputs import RewardInput
from medr3.rewards.judge import JudgeClient, JudgeError, judge_prompt, parse_grade
from medr3.rewards.scorer import RewardScorer

QUESTION = Question(
    "q1",
    "Which virus causes aplastic crisis in sickle cell disease?",
    {"A": "Parvovirus B19", "B": "Epstein-Barr virus"},
    "A",
    "Parvovirus B19",
)
JUDGE_ONLY = RewardComposition(gain={"judge": 1.0}, floor=None)


class FakeJudge:
    """A chat-completions server whose replies are queued by the test: a reply text, an HTTP status, raw bytes or a
    delay. The last queued reply repeats. Records every request body it receives."""

    def __init__(self):
        self.replies: list = ["2"]
        self.requests: list[dict] = []
        self.headers: list[Message] = []  # header names are case-insensitive (the SDK sends them lower-case)
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append(body)
                judge.headers.append(self.headers)
                reply = judge.replies.pop(0) if len(judge.replies) > 1 else judge.replies[0]
                if isinstance(reply, float):  # a delay longer than the client's timeout
                    time.sleep(reply)
                    reply = "2"
                status, payload = (reply, b"{}") if isinstance(reply, int) else (200, _payload(reply))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _payload(reply) -> bytes:
    if isinstance(reply, bytes):
        return reply
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()


@pytest.fixture
def fake_judge():
    judge = FakeJudge()
    yield judge
    judge.close()


def config(url: str, **kwargs) -> JudgeConfig:
    return JudgeConfig(
        url=url,
        model="tiny-judge",
        timeout_s=kwargs.pop("timeout_s", 2.0),
        retries=kwargs.pop("retries", 1),
        retry_backoff_s=0.0,
        **kwargs,
    )


def trajectory(answer: str | None) -> RewardInput:
    text = "Reasoning about the virus.</think>" + (f"<answer>{answer}</answer>" if answer is not None else "")
    return RewardInput(QUESTION, text)


@pytest.mark.parametrize(
    ("reply", "score"), [("2", 1.0), ("Grade: 1", 0.4), ("0", 0.1), ("<think>hmm</think>\n2", 1.0)]
)
def test_judge_maps_rubric_grades_to_release_scores(fake_judge, reply, score):
    fake_judge.replies = [reply]
    client = JudgeClient(config(fake_judge.url))
    assert client.grade(QUESTION, "A. Parvovirus B19") == score
    assert client.counters == {"judge/requests": 1, "judge/failures": 0}
    sent = fake_judge.requests[0]
    assert sent["model"] == "tiny-judge" and sent["temperature"] == 0.0
    assert "Parvovirus B19" in sent["messages"][0]["content"] and "0, 1 or 2" in sent["messages"][0]["content"]


def test_malformed_judge_output_is_a_counted_failure(fake_judge):
    fake_judge.replies = ["The answer looks right to me."]
    client = JudgeClient(config(fake_judge.url, retries=2))
    assert client.grade(QUESTION, "A") == -1.0
    assert len(fake_judge.requests) == 3  # one try and two retries
    assert client.counters == {"judge/requests": 1, "judge/failures": 1}


@pytest.mark.parametrize("bad", [b"not json", json.dumps({"choices": []}).encode(), 500])
def test_broken_responses_are_counted_failures(fake_judge, bad):
    fake_judge.replies = [bad]
    client = JudgeClient(config(fake_judge.url, retries=0, failure_score=-0.5))
    assert client.grade(QUESTION, "A") == -0.5
    assert client.counters["judge/failures"] == 1
    assert len(fake_judge.requests) == 1  # the SDK's own retries are off: `retries` counts every attempt


def test_judge_retries_after_a_server_error(fake_judge):
    fake_judge.replies = [503, "2"]
    client = JudgeClient(config(fake_judge.url, retries=1))
    assert client.grade(QUESTION, "A") == 1.0
    assert len(fake_judge.requests) == 2 and client.counters["judge/failures"] == 0


def test_judge_timeout_is_a_counted_failure(fake_judge):
    fake_judge.replies = [1.0]
    client = JudgeClient(config(fake_judge.url, retries=0, timeout_s=0.2))
    assert client.grade(QUESTION, "A") == -1.0
    assert client.counters["judge/failures"] == 1


def test_judge_sends_the_api_key_from_the_named_variable(fake_judge, monkeypatch):
    monkeypatch.setenv("MEDR3_TEST_JUDGE_KEY", "secret-token")
    JudgeClient(config(fake_judge.url, api_key_env="MEDR3_TEST_JUDGE_KEY")).grade(QUESTION, "A")
    assert fake_judge.headers[0]["Authorization"] == "Bearer secret-token"


def test_missing_answer_is_not_sent_to_the_judge(fake_judge):
    client = JudgeClient(config(fake_judge.url))
    assert client.grade(QUESTION, None) == 0.0
    assert fake_judge.requests == []


def test_scorer_judges_a_batch_once_per_distinct_answer_and_reports_failures(fake_judge):
    fake_judge.replies = ["2", "2", "oops"]  # the third distinct answer gets a malformed reply, on its retry too
    scorer = RewardScorer(RewardConfig(judge=config(fake_judge.url, concurrency=1)))
    batch = [
        trajectory("A. Parvovirus B19"),
        trajectory("A. Parvovirus B19"),
        trajectory("B"),
        trajectory("maybe"),
        trajectory(None),
    ]
    result = scorer.score(batch, JUDGE_ONLY)
    assert result.totals == [1.0, 1.0, 1.0, -1.0, 0.0]  # one worker judges the distinct answers in batch order
    assert result.counters == {"judge/requests": 3, "judge/failures": 1}
    assert result.metrics()["judge/failures"] == 1.0
    assert len(fake_judge.requests) == 4  # three distinct answers, one retry


def test_scorer_counts_failures_per_batch(fake_judge):
    fake_judge.replies = ["nonsense"]
    scorer = RewardScorer(RewardConfig(judge=config(fake_judge.url, retries=0)))
    assert scorer.score([trajectory("A")], JUDGE_ONLY).counters["judge/failures"] == 1
    assert scorer.score([trajectory("A")], JUDGE_ONLY).counters["judge/failures"] == 1  # not cumulative


def test_a_local_callable_can_judge_instead_of_a_url():
    prompts = []

    def local(prompt: str) -> str:
        prompts.append(prompt)
        return "1"

    scorer = RewardScorer(RewardConfig(), judge=local)
    assert scorer.score([trajectory("Epstein-Barr")], JUDGE_ONLY).totals == [0.4]
    assert prompts == [judge_prompt(QUESTION, "Epstein-Barr")]


def test_a_raising_local_judge_is_a_counted_failure():
    def broken(prompt: str) -> str:
        raise RuntimeError("engine died")

    client = JudgeClient(JudgeConfig(retries=1, retry_backoff_s=0.0), broken)
    assert client.grade(QUESTION, "A") == -1.0 and client.counters["judge/failures"] == 1


def test_judge_term_without_a_judge_fails_loudly():
    with pytest.raises(ValueError, match="judge"):
        RewardScorer(RewardConfig()).score([trajectory("A")], JUDGE_ONLY)


@pytest.mark.parametrize("reply", ["2/2", "Score: 0.", " 1 \n"])
def test_parse_grade_accepts_plain_grades(reply):
    assert parse_grade(reply) in (0, 1, 2)


@pytest.mark.parametrize("reply", ["", "3", "2 because it is right", "grade one"])
def test_parse_grade_rejects_anything_else(reply):
    with pytest.raises(JudgeError):
        parse_grade(reply)
