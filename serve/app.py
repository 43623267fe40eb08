"""The Med-R³ Ray Serve application: a trained policy with retrieval, over HTTP.

    serve run serve/config.yaml                                       # the Serve config file in the repo
    serve run serve.app:build_app config=configs/tiny.yaml            # any run config
    python -m serve.app --config configs/default.yaml --checkpoint runs/x/checkpoints/step-40/hf

Routes: `POST /v1/chat/completions` (OpenAI-compatible, SSE streaming), `POST /v1/answer` (the full protocol:
reasoning, searches with their documents, answer), `GET /v1/models`, `GET /healthz`.

Two deployments. `MedR3Server`, the ingress (one light replica), owns HTTP: the API key, body limits, request
validation, the routes; it calls the model deployment through a `serve.gate.ModelGate`, so that while no model
replica is alive (killed, or failed) requests and /healthz get a JSON 503 with Retry-After at once instead of waiting
in Serve's router for a new one, and a request whose replica dies under it gets one too.

`MedR3Model` (`serve.replicas` replicas, or autoscaled) owns a vLLM `AsyncLLM` (continuous batching: every concurrent
request shares the engine's steps) and a SearchPool. Chat streams tokens as the engine makes them and serves
`<search>` calls between turns (serve/chat.py). /v1/answer collects concurrent requests with `@serve.batch` and runs
them as one `medr3.rollout.Rollout` — the training code itself, so one batched search per turn for the whole batch —
in a worker thread that hands generation back to the event loop. A dead engine is replaced inside the replica, which
answers JSON 503s with Retry-After meanwhile. What it raises across the handle is always an ApiError.

Served as trained: the protocol settings (documents per search, searches, response budget, document truncation)
are the training run's, read from the run config saved with the checkpoint (`trained_config_path`), or from the run
config given when the checkpoint has none; a `serve` key overrides one only when set explicitly. `/v1/models` lists
what is in effect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors import vllm_compat
from actors.retriever import RetrievalError
from medr3.checkpoint import META
from medr3.config import Config, ConfigError, ServeConfig, load_config
from medr3.data import Question
from medr3.hardware import resolve_model_dtype
from medr3.protocol import build_prompt
from medr3.rollout import Rollout, RolloutSettings, Trajectory
from serve.auth import InsecureBindError, key_matches, load_key, presented_key, require_key_for_host
from serve.chat import ChatTurns, chat_prompt
from serve.gate import ModelGate
from serve.responses import answer_body, complete, error_event, sse
from serve.schemas import ENGINE_RESTARTING, RETRY_AFTER_S, AnswerRequest, ApiError, ChatRequest, Limits, parse_request

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("ray.serve")  # replica logs go to Serve's log files
api = FastAPI(title="Med-R³", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(ApiError(err.status_code, str(err.detail)).body(), status_code=err.status_code)


@api.exception_handler(Exception)
async def _server_error(request: Request, err: Exception) -> JSONResponse:
    # The ingress's own fault: log the traceback (no headers, no body), answer without internals.
    log.exception("%s %s failed", request.method, request.url.path)
    return await _api_error(request, ApiError.from_failure(err))


@contextmanager
def _as_api_error(what: str) -> Iterator[None]:
    """In the model replica: any failure becomes the ApiError the client gets (it crosses the handle to the ingress;
    a library's exception might not even unpickle there). Our own faults are logged with their traceback."""
    try:
        yield
    except ApiError:
        raise
    except RetrievalError as err:
        log.error("retrieval failed: %s", err)
        raise ApiError(503, "retrieval is unavailable; try again", None, "retrieval_unavailable") from None
    except Exception as err:
        failure = ApiError.from_failure(err)
        if failure.status == 500:
            log.exception("%s failed", what)
        raise failure from None


def _open_search(config: Config):
    from actors.retriever import SearchPool

    # One pool per replica: its actors live and die with the replica.
    return SearchPool(config.retriever.model_copy(update={"top_k": config.serve.top_k}))


def _proxy_host() -> str | None:
    """The address Serve's HTTP proxy really binds (a Serve config file may set it), when Serve is running here."""
    import ray

    if not ray.is_initialized():  # asking Serve would start a Ray cluster
        return None
    try:
        from ray.serve.context import _get_global_client  # private, but the only way to read the proxy's options

        return _get_global_client(raise_if_no_controller_running=False).http_config.host
    except Exception:
        return None


def protocol_in_effect(config: Config, model_path: str) -> dict:
    """What /v1/models reports: the protocol settings served with, and the saved run config they came from."""
    trained = trained_config_path(Path(model_path))
    return {
        "top_k": config.serve.top_k,
        "max_searches": config.serve.max_searches,
        "max_response_tokens": config.serve.max_tokens,
        "max_document_tokens": config.rollout.max_document_tokens,
        "trained_config": str(trained) if trained else None,
    }


async def _relay(first: str, events: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    try:
        yield first
        async for event in events:
            yield event
    except ApiError as err:  # the model replica died mid-stream: the 200 has gone out
        yield error_event(err)
    finally:  # a client that hangs up stops the model's stream (serve/gate.py cancels it)
        await events.aclose()


# Serve pickles the deployment classes by value when they are decorated, with the module globals they use:
# everything they call must be defined above them (or imported).


@serve.deployment
class MedR3Model:
    """One model replica: tokenizer, async vLLM engine, search pool; see the module docstring. Its methods take
    validated requests from the ingress."""

    def __init__(self, config: Config, model_path: str):
        s = config.serve
        self.config, self.model_path = config, model_path
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer or model_path)
        g = config.generator
        self.engine, self._restart = self._new_engine(), None
        self.search = _open_search(config) if s.retrieval else None
        search_fn = self._search_async if self.search is not None else None
        self.chat = ChatTurns(
            self.tokenizer, search_fn, g.max_model_len, s.max_searches, config.rollout.max_document_tokens
        )
        self._answer_batch.set_max_batch_size(s.batch_size)
        self._answer_batch.set_batch_wait_timeout_s(s.batch_wait_s)
        log.info(
            "serving %r from %s; retrieval %s", s.model_name, model_path, "on" if self.search is not None else "off"
        )

    # --- what the ingress calls

    async def health(self) -> dict:
        """The ingress's probe (past the request queue): whether the engine serves. Raises once an engine restart
        has failed, so that the ingress counts this replica out (and Serve replaces it)."""
        ok = await self._engine_ok()
        return {"ok": ok, "reason": None if ok else "engine restarting"}

    async def chat_completion(self, req: ChatRequest) -> dict:
        with _as_api_error("chat"):
            await self._require_engine()
            return await complete(*self._chat_runs(req))

    async def chat_stream(self, req: ChatRequest) -> AsyncIterator[str]:
        """Server-sent events; a refusal comes before the first one."""
        with _as_api_error("chat"):
            await self._require_engine()
            head, runs, prompt_tokens = self._chat_runs(req)
        usage = bool(req.stream_options and req.stream_options.include_usage)
        async for event in sse(head, runs, prompt_tokens, usage, self.config.serve.stream_interval_s):
            yield event

    async def answer(self, req: AnswerRequest) -> dict:
        start = time.perf_counter()
        with _as_api_error("answer"):
            await self._require_engine()
            searches = self.config.serve.max_searches if req.max_searches is None else req.max_searches
            searches = searches if self.search is not None else 0
            question = req.to_question(self.tokenizer)
            prompt = build_prompt(question, self.tokenizer, search=searches > 0, max_searches=searches)
            if len(self.tokenizer(prompt, add_special_tokens=False).input_ids) >= self.config.generator.max_model_len:
                raise ApiError(
                    400, "question: too long for the model's context", "question", "context_length_exceeded"
                )
            traj: Trajectory = await self._answer_batch((question, searches))
            return answer_body(traj, self.config.serve.snippet_chars, (time.perf_counter() - start) * 1000)

    def _chat_runs(self, req: ChatRequest) -> tuple[dict, list[AsyncIterator], int]:
        """The response head, one generation run per choice, and the prompt's length in tokens."""
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        prompt_ids, prefill = chat_prompt(self.tokenizer, messages, req.continue_final_message)
        room = self.config.generator.max_model_len - len(prompt_ids)
        if room <= 0:
            message = f"messages: the prompt is {len(prompt_ids)} tokens; the context holds {len(prompt_ids) + room}"
            raise ApiError(400, message, "messages", "context_length_exceeded")
        max_tokens = min(req.response_tokens or self.config.serve.max_tokens, room)
        extra = {"presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty}

        def stream_fn(r):
            return vllm_compat.stream_async(self.engine, r, req.temperature, req.top_p, **extra)

        runs = [
            self.chat.run(stream_fn, prompt_ids, prefill, max_tokens, None if req.seed is None else req.seed + i)
            for i in range(req.n)
        ]
        head = {"id": f"chatcmpl-{uuid4().hex}", "created": int(time.time()), "model": req.model}
        return head, runs, len(prompt_ids)

    # --- /v1/answer: concurrent requests become one rollout batch

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _answer_batch(self, jobs: list[tuple[Question, int]]) -> list[Trajectory]:
        groups: dict[int, list[int]] = defaultdict(list)  # one rollout per max_searches value in the batch
        for i, (_, searches) in enumerate(jobs):
            groups[searches].append(i)
        out: list[Trajectory | None] = [None] * len(jobs)
        loop = asyncio.get_running_loop()

        async def run(searches: int, idx: list[int]) -> None:
            rollout = Rollout(self.tokenizer, self._generate_fn(loop), self._search_sync, self._settings(searches))
            # Rollout is synchronous: it runs in a thread; its generate calls come back to this event loop.
            trajs = await asyncio.to_thread(rollout.run, [jobs[i][0] for i in idx], 1, searches > 0)
            for i, traj in zip(idx, trajs, strict=True):
                out[i] = traj

        await asyncio.gather(*(run(s, idx) for s, idx in groups.items()))
        return out

    def _settings(self, searches: int) -> RolloutSettings:
        settings = RolloutSettings.from_config(self.config, self.config.serve.max_tokens)
        return dataclasses.replace(settings, max_searches=searches)

    def _generate_fn(self, loop: asyncio.AbstractEventLoop):
        s = self.config.serve

        async def generate_all(requests):
            return await asyncio.gather(
                *(vllm_compat.generate_async(self.engine, r, s.temperature, s.top_p) for r in requests)
            )

        return lambda requests: asyncio.run_coroutine_threadsafe(generate_all(requests), loop).result()

    def _search_sync(self, queries: list[str]) -> list[list[dict]]:
        return self.search.batch_search(queries, self.config.serve.top_k)

    async def _search_async(self, queries: list[str]) -> list[list[dict]]:
        return await asyncio.to_thread(self._search_sync, queries)

    # --- a dead engine is replaced in the replica, which answers 503s meanwhile

    def _new_engine(self):
        c = self.config
        tokenizer = c.model.tokenizer or self.model_path
        return vllm_compat.create_async_engine(
            self.model_path, tokenizer, resolve_model_dtype(c.model.dtype), c.run.seed, c.generator
        )

    async def _engine_ok(self) -> bool:
        """Whether the engine serves. A dead one is replaced at once, in the background: replacing the replica
        would take Serve three failed health checks. Raises once a replacement has failed (check_health passes
        that on: Serve replaces the replica)."""
        if self._restart is not None:
            if not self._restart.done():
                return False
            self._restart.result()
            self._restart = None
        try:
            await vllm_compat.check_engine(self.engine)
        except Exception as err:
            log.error("the engine died (%s): starting a new one", type(err).__name__)
            self._restart = asyncio.create_task(self._restart_engine())
            return False
        return True

    async def _restart_engine(self) -> None:
        started = time.perf_counter()
        try:
            vllm_compat.shutdown_engine(self.engine)
        except Exception as err:  # it is dead already; what is left of it must not keep the new one from starting
            log.warning("shutting the dead engine down: %s", err)
        self.engine = await asyncio.to_thread(self._new_engine)
        log.info("a new engine serves, %.1f s after the old one died", time.perf_counter() - started)

    async def _require_engine(self) -> None:
        try:
            ok = await self._engine_ok()
        except Exception:  # a failed restart: Serve replaces this replica
            ok = False
        if not ok:
            raise ApiError(503, ENGINE_RESTARTING, None, "engine_unavailable")

    async def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`; raising (only a failed engine restart) makes it replace
        the replica."""
        await self._engine_ok()

    def __del__(self) -> None:
        if getattr(self, "engine", None) is not None:
            vllm_compat.shutdown_engine(self.engine)
        if getattr(self, "search", None) is not None:
            self.search.shutdown()


@serve.deployment
@serve.ingress(api)
class MedR3Server:
    """The ingress: HTTP, the API key, validation; the model deployment `model` is called through a ModelGate."""

    def __init__(self, config: Config, model_path: str, model):
        s = config.serve
        self.config, self.model_path = config, model_path
        self.key = load_key(s.api_key_env)
        require_key_for_host(_proxy_host() or s.host, self.key, s.api_key_env)
        self.limits = Limits.from_config(s)
        self.max_body = 12 * s.max_prompt_chars + 65536  # JSON may escape one character into up to 12 bytes
        self.model, self.model_stream = model, model.options(stream=True)
        self.gate = ModelGate(model)  # Serve runs a constructor in the replica's event loop
        key = f"required (from ${s.api_key_env})" if self.key else "off"
        log.info("ingress for %r; API key %s", s.model_name, key)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        healths = await self.gate.probe()
        if healths and any(h["ok"] for h in healths):
            return JSONResponse({"status": "ok", "model": self._model, "retrieval": self.config.serve.retrieval})
        if healths is None:
            reason = f"the model replicas did not answer within {self.gate.timeout_s:g} s"
        else:
            reason = healths[0]["reason"] if healths else "no model replica is alive: Serve is starting one"
        body = {"status": "unavailable", "reason": reason}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        model = {"id": self._model, "object": "model", "created": 0, "owned_by": "medr3"}
        return {"object": "list", "data": [{**model, "protocol": protocol_in_effect(self.config, self.model_path)}]}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._authorize(request)
        req: ChatRequest = parse_request(ChatRequest, await self._body(request), self.limits)
        if req.model != self._model:
            message = f"model {req.model!r} does not exist; this server has {self._model!r}"
            raise ApiError(404, message, "model", "model_not_found")
        if not req.stream:
            return await self.gate.call(self.model.chat_completion.remote(req))
        events = self.gate.stream(self.model_stream.chat_stream.remote(req))
        first = await anext(events)  # a refusal (400, 503) is the response's status, before any 200
        return StreamingResponse(_relay(first, events), media_type="text/event-stream")

    @api.post("/v1/answer")
    async def answer(self, request: Request) -> dict:
        self._authorize(request)
        req: AnswerRequest = parse_request(AnswerRequest, await self._body(request), self.limits)
        return await self.gate.call(self.model.answer.remote(req))

    @property
    def _model(self) -> str:
        return self.config.serve.model_name

    def _authorize(self, request: Request) -> None:
        if self.key is not None and not key_matches(presented_key(request.headers), self.key):
            message = "missing or invalid API key (send 'Authorization: Bearer <key>')"
            raise ApiError(401, message, None, "invalid_api_key")

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise ApiError(413, f"body: larger than {self.max_body} bytes", "body", "request_too_large")
        raw = await request.body()
        if len(raw) > self.max_body:
            raise ApiError(413, f"body: larger than {self.max_body} bytes", "body", "request_too_large")
        return raw


# --- building the application


def model_options(s: ServeConfig) -> dict:
    """The model deployment's replicas (fixed or autoscaled) and per-replica resources from the config."""
    options = {
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        "max_ongoing_requests": s.max_ongoing_requests,
        "health_check_period_s": 2,  # Serve notices a dead replica within 2 s and starts a new one
    }
    if s.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = s.replicas
    return options


def ingress_options(s: ServeConfig) -> dict:
    """The ingress: one replica on no reserved CPU (it only relays), taking every request the model replicas can."""
    model_replicas = s.max_replicas if s.autoscaling else s.replicas
    # It only awaits: its code and its router run on the replica's own event loop, sparing two thread hand-offs per
    # message (what Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED sets; ray/serve/_private/constants.py).
    inline = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
    return {
        "num_replicas": 1,
        "ray_actor_options": {"num_cpus": 0, "runtime_env": {"env_vars": inline}},
        "max_ongoing_requests": s.max_ongoing_requests * model_replicas,
    }


def load_serve_config(args: dict) -> tuple[Config, str]:
    """The run config (`config`, default configs/default.yaml, with `set` overrides) served as trained
    (`as_trained`), and the model folder to serve (`checkpoint`, else serve.checkpoint, else model.path). Raises
    ConfigError on a bad config or override, or a missing model."""
    overrides = args.get("set") or []
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    _check_yaml(overrides)
    # Serve may build the app in a worker whose directory is not the repo: resolve relative paths against the repo.
    os.environ.setdefault("MEDR3_ROOT", str(ROOT))
    config_path = Path(args.get("config") or "configs/default.yaml")
    config = load_config(config_path if config_path.is_absolute() else ROOT / config_path, overrides)
    model_path = Path(args.get("checkpoint") or config.serve.checkpoint or config.model.path)
    model_path = model_path if model_path.is_absolute() else Path(os.environ["MEDR3_ROOT"]) / model_path
    if not (model_path / "config.json").is_file():
        raise ConfigError(f"checkpoint {model_path}: not an HF model folder (no config.json)")
    trained = trained_config_path(model_path)
    return as_trained(config, load_config(trained) if trained else config), str(model_path)


def _check_yaml(overrides: list[str]) -> None:
    # load_config parses each value as YAML and lets a parse error through as a traceback: say which key, in a line.
    for item in overrides:
        key, _, value = item.partition("=")
        try:
            yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"--set {key.strip()}: {value!r} is not valid YAML ({problem}); quote it") from None


# A serve key -> the training run's (section, key) it defaults to.
TRAINED = {
    "top_k": ("retriever", "top_k"),
    "max_searches": ("rollout", "max_searches"),
    "max_tokens": ("grpo", "max_response_tokens"),
}


def trained_config_path(model_path: Path) -> Path | None:
    """The run config a checkpoint's model was trained with: `config.yaml` in its checkpoint folder
    (`step-N/config.yaml` beside `step-N/hf`), else in its run folder (`runs/<run>/config.yaml`); None if neither."""
    step = model_path.parent
    candidates = [step / "config.yaml"] if (step / META).is_file() else []
    if step.parent.name == "checkpoints":
        candidates.append(step.parent.parent / "config.yaml")
    return next((c for c in candidates if c.is_file()), None)


def as_trained(config: Config, trained: Config) -> Config:
    """`config` with the protocol of the training run `trained`: documents per search, searches and the response
    budget unless the `serve` section sets them explicitly, and the documents' truncation."""
    s = config.serve
    update = {key: getattr(getattr(trained, section), name) for key, (section, name) in TRAINED.items()}
    update = {key: value for key, value in update.items() if key not in s.model_fields_set}
    rollout = config.rollout.model_copy(update={"max_document_tokens": trained.rollout.max_document_tokens})
    return config.model_copy(update={"serve": s.model_copy(update=update), "rollout": rollout})


def build_app(args: dict) -> serve.Application:
    """Serve's application builder (`serve run serve.app:build_app config=… checkpoint=…`, or a Serve config file)."""
    config, model_path = load_serve_config(args)
    return _application(config, model_path)


def _application(config: Config, model_path: str) -> serve.Application:
    s = config.serve
    try:  # fail before anything loads; under a Serve config file the proxy's own host counts too
        for host in {s.host, _proxy_host() or s.host}:
            require_key_for_host(host, load_key(s.api_key_env), s.api_key_env)
    except InsecureBindError as err:
        _stop_serve_run(f"[serve] error: {err}")
        raise
    model = MedR3Model.options(**model_options(s)).bind(config, model_path)
    return MedR3Server.options(**ingress_options(s)).bind(config, model_path, model)


def _stop_serve_run(message: str) -> None:
    """`serve run <config file>` builds the app in a Ray task, then only sleeps: it never reads the app's status
    (ray/serve/scripts.py), so a refusal here would leave it up behind a 503. When this is that build task and its
    driver is a `serve run` on this node, write `message` to the driver's stderr and SIGTERM it: Ray's driver handler
    exits with status 15. Anything else (`python -m serve.app`, `serve deploy`, a test) just sees the exception."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return
    try:
        from ray._private.state import jobs  # private: the only record of a job's driver process

        job, here = ray.get_runtime_context().get_job_id(), ray.util.get_node_ip_address()
        pid = next(j["DriverPid"] for j in jobs() if j["JobID"] == job and j["DriverIPAddress"] == here)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if not any(a.endswith(b"serve") for a in argv) or b"run" not in argv:
            return
        with open(f"/proc/{pid}/fd/2", "a", encoding="utf-8") as stderr:
            stderr.write(message + "\n")
        os.kill(pid, signal.SIGTERM)
    except Exception as err:  # another node, another OS, no such driver: the app's status still says why
        log.warning("could not stop the serve run process: %s", err)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a Med-R³ policy over HTTP (blocks until interrupted).")
    parser.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    parser.add_argument("--checkpoint", help="HF folder to serve (default: serve.checkpoint, else model.path).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Config override.")
    args = parser.parse_args(argv)
    try:
        config, model_path = load_serve_config(vars(args))
        app = _application(config, model_path)
    except (ConfigError, RuntimeError) as err:
        print(f"[serve] error: {err}", file=sys.stderr)
        return 2
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    serve.run(app, name="medr3", route_prefix="/", blocking=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
