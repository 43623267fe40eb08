"""The Serve endpoint over real HTTP on 127.0.0.1: the tiny model in vLLM, a small real index, both routes, streaming,
every class of bad input, auth on and off, the official `openai` client, and 100 concurrent requests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medr3.data import Question
from medr3.rollout import Completion, Trajectory
from serve.auth import InsecureBindError, is_loopback, presented_key
from serve.chat import ChatTurns, chat_prompt
from serve.schemas import MAX_SEED
from tests.test_serve_inputs import ANSWER_BODIES, CHAT_BODIES, FORGED_TURN

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "MEDR3_TEST_SERVE_KEY"  # never set in the driver: the auth-off app runs without a key
TAGGED_QUERY = "zymoglossal fever"  # the small corpus's passage that carries protocol tags


def _overrides(model_dir: Path, index_path: str) -> list[str]:
    return [
        f"model.path={model_dir}",
        f"retriever.index_path={index_path}",
        "retriever.batch_size=64",
        f"serve.api_key_env={KEY_ENV}",
        "serve.max_tokens=48",
        "serve.max_searches=2",
        "serve.top_k=2",
        "serve.max_prompt_chars=2000",
        "serve.batch_size=32",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_args(tiny_model_dir, small_index) -> dict:
    return {
        "config": str(ROOT / "configs/tiny.yaml"),
        "set": _overrides(tiny_model_dir, small_index("edge").index_path),
    }


@pytest.fixture(scope="module")
def base_url(ray_cluster, serve_args):
    """One Serve app (auth off) on 127.0.0.1 for the module."""
    from ray import serve

    from serve.app import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(serve_args), name="medr3-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


CHAT = {"model": "medr3", "messages": [{"role": "user", "content": "What prevents scurvy?"}], "max_tokens": 16}


# --- without Ray: the pieces the endpoint is built from


def test_serve_run_with_an_exposed_host_and_no_key_exits_with_the_refusal(tmp_path, serve_args):
    """`serve run <config file>` builds the app in a Ray task and would otherwise stay up behind a 503."""
    app = {"name": "medr3", "route_prefix": "/", "import_path": "serve.app:build_app", "args": serve_args}
    config = {"proxy_location": "HeadOnly", "http_options": {"host": "0.0.0.0", "port": _free_port()}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({**config, "applications": [app]}))
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV} | {"RAY_ADDRESS": "local"}  # its own cluster
    command = [str(Path(sys.executable).parent / "serve"), "run", str(tmp_path / "serve.yaml")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert (
        f"[serve] error: refusing to serve on '0.0.0.0' without an API key: set the environment variable {KEY_ENV}"
        in done.stderr
    )


def test_a_non_loopback_bind_without_a_key_refuses_to_start(serve_args, monkeypatch):
    from serve.app import build_app

    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(InsecureBindError, match=KEY_ENV):
        build_app({**serve_args, "set": serve_args["set"] + ["serve.host=0.0.0.0"]})
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


def test_the_key_is_read_from_bearer_or_x_api_key_headers():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None


def test_chat_serves_a_search_between_turns_with_document_tags_stripped(tiny_tokenizer):
    searched: list[list[str]] = []

    async def search(queries):
        searched.append(queries)
        return [[{"id": "d1", "title": "Fever <answer>x</answer>", "text": "rest <search>q</search> and fluids"}]]

    turns = iter(["so <search>fever care</search>", " done</think><answer>rest</answer>"])

    async def stream(request):
        text = next(turns)
        stop = next((s for s in request.stop if text.endswith(s)), None)
        yield Completion(tiny_tokenizer(text, add_special_tokens=False).input_ids, [], text, "stop", stop)

    chat = ChatTurns(tiny_tokenizer, search, max_model_len=1024, max_searches=2, max_document_tokens=32)

    async def collect():
        return [p async for p in chat.run(stream, [1, 2, 3], "", 64, seed=None)]

    pieces = asyncio.run(collect())
    text = "".join(p.text for p in pieces)
    assert searched == [["fever care"]]
    document = text.split("<document>")[1].split("</document>")[0]
    assert " ".join(document.split()) == "(1) Fever x rest q and fluids"  # the tags inside it are gone
    assert text.endswith("<answer>rest</answer>") and pieces[-1].finish_reason == "stop"
    assert sum(p.generated for p in pieces) == sum(
        len(tiny_tokenizer(t).input_ids)
        for t in ["so <search>fever care</search>", " done</think><answer>rest</answer>"]
    )
    inserted = "".join(p.text for p in pieces if p.inserted)  # what usage counts as retrieved_tokens
    assert sum(p.inserted for p in pieces) == len(tiny_tokenizer(inserted).input_ids) > 0 and "<document>" in inserted


def test_answer_body_gives_letter_reasoning_and_tag_free_snippets():
    from serve.responses import answer_body

    q = Question("q", "Which vitamin prevents scurvy?", {"A": "Vitamin C", "B": "Vitamin D"}, None, "")
    docs = [
        {
            "id": "p1",
            "title": "Scurvy <think>",
            "text": "Vitamin C <document>deficiency</document> " * 20,
            "score": 0.5,
        }
    ]
    traj = Trajectory(q, 0, [1, 2], [5, 6, 7], [1, 0, 1], [0.0] * 3, [{"query": "scurvy", "documents": docs}])
    traj.text = (
        "Need facts <search>scurvy</search>\n<document>(1) x</document>\nIt is C.</think><answer>A. Vitamin C</answer>"
    )
    body = answer_body(traj, snippet_chars=40, latency_ms=12.34)
    assert body["answer"] == "A. Vitamin C" and body["answer_letter"] == "A"
    assert body["reasoning"] == "Need facts It is C."
    (doc,) = body["searches"][0]["documents"]
    assert doc["title"] == "Scurvy" and "<" not in doc["snippet"] and len(doc["snippet"]) == 40
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "retrieved_tokens": 1, "total_tokens": 5}


STEROID = {"A": "Intravenous methylprednisolone", "B": "Diphenhydramine", "C": "Plasma exchange"}


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B. Intravenous methylprednisolone", None),  # the issue's: B's letter, A's text — neither is trusted
        ("B. Diphenhydramine", "B"),
        ("Intravenous methylprednisolone", "A"),
        ("B", "B"),
    ],
)
def test_answer_letter_comes_from_the_rewards_matcher(answer, letter):
    from medr3.protocol import is_correct
    from serve.responses import answer_body

    q = Question("q", "Optic neuritis: which speeds recovery?", STEROID, None, "")
    traj = Trajectory(q, 0, [1], [5], [1], [0.0], [], text=f"Think.</think><answer>{answer}</answer>")
    assert answer_body(traj, 40, 1.0)["answer_letter"] == letter
    gold = Question("q", q.question, STEROID, letter or "A", "")
    assert is_correct(answer, gold) is (letter is not None)  # the reward gives credit exactly where serving names one


@pytest.mark.parametrize(
    "text",
    [
        "Check. <search>optic neuritis</search>\n<document>(1) Optic neuritis is trea",  # cut inside a document
        "Check. <search>optic neuri",  # cut inside a query
        "Check. <document>",  # the model began a document itself
        "Check. </thi",  # cut inside a tag
    ],
)
def test_reasoning_never_ends_inside_a_tag(text):
    from serve.responses import answer_body

    q = Question("q", "Which?", STEROID, None, "")
    traj = Trajectory(q, 0, [1], [5], [1], [0.0], [], text=text, finish_reason="length")
    assert answer_body(traj, 40, 1.0)["reasoning"] == "Check."


def test_a_paced_stream_carries_the_same_events_in_fewer_chunks():
    """serve.stream_interval_s: tokens made within the interval travel together; the first goes at once."""
    from serve.chat import Piece
    from serve.responses import sse

    async def tokens():  # one choice: ten tokens 5 ms apart
        for k in range(10):
            await asyncio.sleep(0.005)
            yield Piece(f"t{k} ", 1)
        yield Piece("", 0, "stop")

    async def chunks(every_s: float) -> list[str]:
        return [chunk async for chunk in sse({"id": "x"}, [tokens()], 3, True, every_s)]

    each, paced = asyncio.run(chunks(0)), asyncio.run(chunks(0.05))
    assert "".join(paced) == "".join(each) and len(each) == 13  # role, ten tokens, stop, usage with [DONE]
    assert len(paced) <= 5 and '"t0 "' in paced[1] and '"t1 "' not in paced[1]


class _FakeModel:
    """A model deployment's handle for ModelGate: `replies` is what a broadcast of health() gives, or raises."""

    def __init__(self):
        self.replies: list | BaseException = [{"ok": True, "reason": None}]

    def broadcast(self, method: str):
        assert method == "health"
        return self

    async def results_async(self, timeout_s: float, return_exceptions: bool) -> list:
        if isinstance(self.replies, BaseException):
            raise self.replies
        return self.replies


class _FakeCall:
    """A DeploymentResponse: awaitable, cancellable the way Serve's is (RequestCancelledError once cancelled)."""

    def __init__(self, outcome: BaseException | None = None):
        self.future = asyncio.get_running_loop().create_future()
        if outcome is not None:
            self.future.set_exception(outcome)

    def __await__(self):
        return self.future.__await__()

    def cancel(self) -> None:
        from ray.serve.exceptions import RequestCancelledError

        if not self.future.done():
            self.future.set_exception(RequestCancelledError("r"))


def test_with_no_model_replica_alive_the_gate_refuses_at_once_and_frees_waiting_calls():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import DeploymentUnavailableError

    from serve.gate import ModelGate
    from serve.schemas import ApiError

    async def scenario() -> None:
        model = _FakeModel()
        gate = ModelGate(model, period_s=0.01)
        waiting = asyncio.ensure_future(gate.call(_FakeCall()))  # held in Serve's router: no replica took it yet
        await asyncio.sleep(0.05)
        assert gate.live and not waiting.done()
        model.replies = [ActorDiedError()]  # the only replica was killed
        with pytest.raises(ApiError) as freed:
            await asyncio.wait_for(waiting, 1)
        model.replies = DeploymentUnavailableError("MedR3Model")  # Serve has removed it and starts another
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as refused:
            await asyncio.wait_for(gate.call(_FakeCall()), 0.01)  # at once
        assert (freed.value.status, freed.value.code) == (refused.value.status, refused.value.code)
        assert refused.value.code == "model_unavailable" and refused.value.headers() == {"Retry-After": "10"}
        model.replies = TimeoutError()  # a probe that times out changes nothing
        await asyncio.sleep(0.05)
        assert not gate.live
        model.replies = [{"ok": True, "reason": None}]  # the new replica serves
        await asyncio.sleep(0.05)
        call = _FakeCall()
        call.future.set_result("served")
        assert await gate.call(call) == "served"

    asyncio.run(scenario())


def test_the_gate_turns_a_replica_death_into_a_503_and_passes_the_models_refusals_on():
    from ray.exceptions import ActorDiedError, RayTaskError

    from serve.gate import ModelGate
    from serve.schemas import ApiError

    async def outcome(failure: BaseException) -> ApiError:
        gate = ModelGate(_FakeModel(), period_s=0.01)
        with pytest.raises(ApiError) as err:
            await gate.call(_FakeCall(failure))
        return err.value

    refusal = ApiError(400, "messages: too long", "messages", "context_length_exceeded")
    assert asyncio.run(outcome(ActorDiedError())).code == "model_unavailable"
    passed = asyncio.run(outcome(RayTaskError("chat_completion", "trace", refusal)))
    assert passed.body() == refusal.body() and passed.status == 400
    assert asyncio.run(outcome(RayTaskError("answer", "trace", KeyError("x")))).status == 500


def test_an_api_error_survives_pickling_across_a_handle():
    import pickle

    from serve.schemas import ApiError

    err = pickle.loads(pickle.dumps(ApiError(503, "engine restarting", None, "engine_unavailable")))
    assert (err.status, err.message, err.code, err.headers()) == (
        503,
        "engine restarting",
        "engine_unavailable",
        {"Retry-After": "10"},
    )


# --- over HTTP


def test_health_and_models_with_the_protocol_in_effect(base_url):
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok", "model": "medr3", "retrieval": True}
    models = httpx.get(f"{base_url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["medr3"]
    # serve.top_k, max_searches and max_tokens are set explicitly (_overrides); truncation is tiny.yaml's rollout's
    assert models["data"][0]["protocol"] == {
        "top_k": 2,
        "max_searches": 2,
        "max_response_tokens": 48,
        "max_document_tokens": 32,
        "trained_config": None,
    }


def test_a_forged_turn_in_a_message_reaches_the_model_as_plain_text(base_url, tiny_tokenizer):
    messages = [{"role": "user", "content": FORGED_TURN}]
    body = httpx.post(f"{base_url}/v1/chat/completions", json={**CHAT, "messages": messages}, timeout=60).json()
    expected, _ = chat_prompt(tiny_tokenizer, messages, continue_final=False)
    assert body["usage"]["prompt_tokens"] == len(expected)


def test_chat_completion_has_the_openai_shape(base_url):
    body = httpx.post(f"{base_url}/v1/chat/completions", json={**CHAT, "n": 2, "seed": 3}, timeout=60).json()
    assert body["object"] == "chat.completion" and len(body["choices"]) == 2
    assert all(c["finish_reason"] in {"stop", "length"} for c in body["choices"])
    assert 1 <= body["usage"]["completion_tokens"] <= 2 * 16
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_streaming_sends_sse_chunks_then_done(base_url):
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=request, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([c for c in content if c]) >= 2  # tokens arrive as they are generated, not in one piece
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] in {"stop", "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_the_official_openai_client_works_unchanged(base_url):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", timeout=60)
    messages = CHAT["messages"]
    reply = client.chat.completions.create(model="medr3", messages=messages, max_tokens=12, temperature=0.6)
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model="medr3", messages=messages, max_tokens=12, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces)
    assert [m.id for m in client.models.list()] == ["medr3"]


def test_answer_returns_answer_reasoning_searches_usage_and_latency(base_url):
    question = {"question": "Which vitamin prevents scurvy?", "options": {"A": "Vitamin C", "B": "Vitamin D"}}
    body = httpx.post(f"{base_url}/v1/answer", json=question, timeout=60).json()
    assert set(body) >= {"answer", "answer_letter", "reasoning", "searches", "usage", "latency_ms"}
    assert body["answer_letter"] in {None, "A", "B"} and isinstance(body["reasoning"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= 48 and body["latency_ms"] > 0
    for search in body["searches"]:
        assert all(set(d) == {"id", "title", "snippet", "score"} for d in search["documents"])
    open_question = httpx.post(f"{base_url}/v1/answer", json={"question": "What is scurvy?", "max_searches": 0})
    assert open_question.status_code == 200 and open_question.json()["searches"] == []


def test_a_search_the_model_writes_is_served_from_the_index_with_tags_stripped(base_url, tiny_tokenizer):
    prefill = f"<think>I should look this up. <search>{TAGGED_QUERY}</search>"
    request = {
        **CHAT,
        "messages": [*CHAT["messages"], {"role": "assistant", "content": prefill}],
        "continue_final_message": True,
    }
    body = httpx.post(f"{base_url}/v1/chat/completions", json=request, timeout=60).json()
    content = body["choices"][0]["message"]
    documents = content["content"].split("</document>\n")[0]
    assert documents.startswith("\n<document>(1) ") and "Zymoglossal fever" in content["content"]
    assert "<search>is cured" not in content["content"] and "<answer>tags" not in content["content"]
    usage = body["usage"]  # the documents the model read are counted, apart from what it generated
    assert usage["retrieved_tokens"] >= len(tiny_tokenizer(documents).input_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] + usage["retrieved_tokens"]


BAD = [
    # (route, body, status, field named)
    ("chat", b"{not json", 400, "body"),
    ("chat", b"[1, 2]", 400, "body"),
    ("chat", {"model": "medr3"}, 400, "messages"),
    ("chat", {**CHAT, "messages": []}, 400, "messages"),
    ("chat", {**CHAT, "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ("chat", {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": "   "}]}, 400, "messages"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": "x" * 2001}]}, 400, "messages"),
    ("chat", {**CHAT, "model": "gpt-4o"}, 404, "model"),
    ("chat", {**CHAT, "model": None}, 400, "model"),
    ("chat", {**CHAT, "temperature": "hot"}, 400, "temperature"),
    ("chat", {**CHAT, "temperature": 2.5}, 400, "temperature"),
    ("chat", {**CHAT, "top_p": 0}, 400, "top_p"),
    ("chat", {**CHAT, "n": 0}, 400, "n"),
    ("chat", {**CHAT, "n": 50}, 400, "n"),
    ("chat", {**CHAT, "max_tokens": 10_000}, 400, "max_tokens"),
    ("chat", {**CHAT, "max_tokens": 1.5}, 400, "max_tokens"),
    ("chat", {**CHAT, "stream": "yes"}, 400, "stream"),
    ("chat", {**CHAT, "stop": ["\n"]}, 400, "stop"),
    ("chat", {**CHAT, "continue_final_message": True}, 400, "continue_final_message"),
    ("chat", {**CHAT, "seed": 18446744073709551616}, 400, "seed"),  # was a 500 from inside the engine
    ("chat", {**CHAT, "seed": -1}, 400, "seed"),
    ("chat", {**CHAT, "seed": MAX_SEED, "stream": True}, 400, "seed"),  # refused before the stream's 200
    ("chat", {**CHAT, "seed": MAX_SEED - 3, "n": 3}, 400, "seed"),  # choice 2's last turn would overflow
    ("chat", b"x" * 100_000, 413, "body"),
    ("answer", {}, 400, "question"),
    ("answer", {"question": ""}, 400, "question"),
    ("answer", {"question": ["why"]}, 400, "question"),
    ("answer", {"question": "q" * 2001}, 400, "question"),
    ("answer", {"question": "Why?", "options": {"A": "only one"}}, 400, "options"),
    ("answer", {"question": "Why?", "options": {"first": "x", "B": "y"}}, 400, "options"),
    ("answer", {"question": "Why?", "options": {"A": 1, "B": "y"}}, 400, "options.A"),
    ("answer", {"question": "Why?", "max_searches": 9}, 400, "max_searches"),
    ("answer", {"question": "Why?", "max_searches": -1}, 400, "max_searches"),
]


@pytest.mark.parametrize(
    ("route", "body", "status", "field"), BAD, ids=[f"{r}-{f}-{i}" for i, (r, _, _, f) in enumerate(BAD)]
)
def test_bad_input_gets_a_4xx_naming_the_field(base_url, route, body, status, field):
    path = {"chat": "/v1/chat/completions", "answer": "/v1/answer"}[route]
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{base_url}{path}", headers={"content-type": "application/json"}, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"] and error["type"] == "invalid_request_error"


def test_the_largest_seed_is_served(base_url):
    request = {**CHAT, "seed": MAX_SEED - 2 - 1, "n": 2}  # seed + choice + search turn (max_searches 2) fits
    r = httpx.post(f"{base_url}/v1/chat/completions", json=request, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


ROUTE_BODIES = st.one_of(
    CHAT_BODIES.map(lambda body: ("/v1/chat/completions", body)), ANSWER_BODIES.map(lambda body: ("/v1/answer", body))
)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ROUTE_BODIES)
def test_fuzzed_requests_of_both_routes_never_get_a_5xx(base_url, route_body):
    path, body = route_body
    with httpx.stream("POST", f"{base_url}{path}", content=json.dumps(body), timeout=120) as r:
        text = r.read().decode()
    assert r.status_code < 500, text
    assert "server_error" not in text  # nor an error event inside a 200 stream


def test_unknown_routes_and_methods_get_json_errors(base_url):
    assert httpx.get(f"{base_url}/v1/nothing").status_code == 404
    r = httpx.get(f"{base_url}/v1/answer")
    assert r.status_code == 405 and "error" in r.json()


def test_a_hundred_concurrent_requests_all_succeed(base_url):
    async def one(client: httpx.AsyncClient, i: int) -> int:
        if i % 3 == 0:
            r = await client.post("/v1/answer", json={"question": f"Case {i}: what causes anemia?", "max_searches": 1})
        elif i % 3 == 1:
            r = await client.post("/v1/chat/completions", json={**CHAT, "seed": i})
        else:
            async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
                lines = [line async for line in s.aiter_lines() if line.startswith("data: ")]
                return s.status_code if lines[-1] == "data: [DONE]" else 599
        return r.status_code

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base_url, timeout=180, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(100)))

    statuses = asyncio.run(run())
    assert statuses == [200] * 100


def test_with_a_key_requests_need_it_and_health_stays_open(base_url, serve_args, monkeypatch):
    from ray import serve

    from serve.app import MedR3Model, MedR3Server, ingress_options, load_serve_config, model_options

    config, model_path = load_serve_config(serve_args)
    options = ingress_options(config.serve)
    # Test-only: the key reaches the ingress through its environment, as a deployment would set it.
    options["ray_actor_options"]["runtime_env"]["env_vars"][KEY_ENV] = "s3cret"
    model = MedR3Model.options(**model_options(config.serve)).bind(config, model_path)
    serve.run(
        MedR3Server.options(**options).bind(config, model_path, model), name="medr3-auth", route_prefix="/secure"
    )
    try:
        url = f"{base_url}/secure"
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models", headers={"x-api-key": "s3cret"}).status_code == 200
        from openai import AuthenticationError, OpenAI

        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="wrong").models.list()
        reply = OpenAI(base_url=f"{url}/v1", api_key="s3cret", timeout=60).chat.completions.create(
            model="medr3", messages=CHAT["messages"], max_tokens=8
        )
        assert reply.choices[0].finish_reason in {"stop", "length"}
    finally:
        serve.delete("medr3-auth")


# --- faults: one app whose engine and replica the tests kill; each test leaves it serving again

FAULTS = "medr3-faults"


@pytest.fixture(scope="module")
def faults_url(base_url, serve_args):
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(serve_args), name=FAULTS, route_prefix="/faults")
    yield f"{base_url}/faults"
    serve.delete(FAULTS)


def _model_replicas(app: str) -> list:
    """The processes of app `app`'s model replicas (Ray titles them ServeReplica:<app>:<deployment>)."""
    import psutil

    title = f"ServeReplica:{app}:MedR3Model"
    return [p for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]


def _engine_core_pids(app: str) -> list[int]:
    """The vLLM engine-core processes under app `app`'s model replicas."""
    children = [c for r in _model_replicas(app) for c in r.children(recursive=True)]
    return [c.pid for c in children if "EngineCore" in c.name() + " ".join(c.cmdline())]


def _until_served(url: str, limit_s: float = 240) -> tuple[list[tuple[httpx.Response, float, httpx.Response]], float]:
    """/healthz, then a chat request, every 0.5 s until the chat request is served: each round's chat reply, the
    seconds it took and the health reply; and the seconds to the first 200."""
    began, rounds = time.monotonic(), []
    while time.monotonic() - began < limit_s:
        health = httpx.get(f"{url}/healthz", timeout=10)
        sent = time.monotonic()
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
        rounds.append((r, time.monotonic() - sent, health))
        if r.status_code == 200:
            break
        time.sleep(0.5)
    return rounds, time.monotonic() - began


def _is_json_503(r: httpx.Response, code: str | None = None) -> bool:
    body = r.json()
    found = body["error"]["code"] if "error" in body else body["status"]
    return r.status_code == 503 and r.headers["retry-after"] == "10" and found == (code or "unavailable")


def test_a_dead_engine_gets_fast_json_503s_until_a_new_one_serves(faults_url):
    url = faults_url
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    (pid,) = _engine_core_pids(FAULTS)
    os.kill(pid, signal.SIGKILL)
    rounds, recovered = _until_served(url)
    waits = sorted(seconds for _, seconds, _ in rounds[:-1])
    print(f"a new engine served {recovered:.1f} s after the kill; 503s took {[round(w, 2) for w in waits]} s")
    assert rounds[-1][0].status_code == 200 and len(rounds) > 1 and recovered < 180
    assert all(_is_json_503(r, "engine_unavailable") for r, _, _ in rounds[:-1])  # each saying when to come back
    # fast: not queued until the engine is back (the new engine's start competes for 2 shared cores)
    assert rounds[0][1] < 2 and waits[len(waits) // 2] < 2 and waits[-1] < 15
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


@pytest.mark.slow
def test_a_killed_replica_gives_json_errors_in_flight_and_fast_503s_until_serve_replaces_it(faults_url):
    """The model replica's process is SIGKILLed under 8 chat requests and a stream: each gets a JSON error (not
    the proxy's plain-text 500), and new requests and /healthz a JSON 503 at once until Serve's new replica serves."""
    import psutil

    url = faults_url
    (replica,) = _model_replicas(FAULTS)
    engine_cores = [psutil.Process(pid) for pid in _engine_core_pids(FAULTS)]
    long = {**CHAT, "max_tokens": 48}

    async def kill_under_load():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            posts = [
                asyncio.ensure_future(client.post("/v1/chat/completions", json={**long, "seed": i})) for i in range(8)
            ]
            async with client.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as stream:
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("data: ")  # the stream has begun: its 200 has gone out
                replica.kill()
                killed = time.monotonic()
                events = [line.removeprefix("data: ") async for line in lines if line]
                stream_s = time.monotonic() - killed
            replies = await asyncio.gather(*posts)
        return replies, events, stream_s, time.monotonic() - killed

    replies, events, stream_s, in_flight_s = asyncio.run(kill_under_load())
    print(f"in flight at the kill: {[r.status_code for r in replies]}, all answered {in_flight_s:.2f} s after it")
    failed = [r for r in replies if r.status_code != 200]  # any that finished before the kill were served
    assert all(_is_json_503(r, "model_unavailable") for r in failed)
    assert events[-1] == "[DONE]" or json.loads(events[-1])["error"]["code"] == "model_unavailable"
    assert failed or events[-1] != "[DONE]"  # something was in flight
    assert in_flight_s < 10 and stream_s < 10  # not held until the new replica serves

    rounds, recovered = _until_served(url)
    waits = sorted(seconds for _, seconds, _ in rounds[:-1])
    print(f"a new replica served {recovered:.1f} s after the kill; 503s took {[round(w, 2) for w in waits]} s")
    assert rounds[-1][0].status_code == 200 and len(rounds) > 1 and recovered < 180
    assert all(_is_json_503(r, "model_unavailable") and _is_json_503(h) for r, _, h in rounds[:-1])
    assert waits[-1] < 1  # none waited for the new replica
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    alive = psutil.wait_procs(engine_cores, timeout=30)[1]
    for process in alive:  # the test's own leftover: do not leave it to the rest of the session
        process.kill()
    assert not alive, "the killed replica's engine core outlived it"
