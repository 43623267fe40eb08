"""The ingress's view of the model deployment: while no model replica is alive, requests fail at once with a JSON 503.

Serve's router holds a call to a deployment with no live replica until Serve has started a new one (30-50 s for a
killed replica on 2 cores), and a replica that dies under a request fails it in the HTTP proxy as a plain-text 500.
So the ingress (serve/app.py) calls the model deployment only through a `ModelGate`, which

- probes every model replica (`DeploymentHandle.broadcast`: past their request queues) every `period_s`, and at once
  after a call failed;
- while none is alive (none running, or each dead or failed), refuses calls at once and cancels those still waiting;
- turns a replica's death under a call, or that cancel, into ApiError 503 `model_unavailable` with Retry-After, and
  a model-side ApiError (a bad request, its engine restarting) back into itself.

A probe that times out (a replica too busy to answer) changes nothing: only a death or an empty replica set does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import DeploymentUnavailableError

from serve.schemas import ApiError

log = logging.getLogger("ray.serve")
MODEL_UNAVAILABLE = "the model replica stopped and Serve is starting a new one: retry shortly"


def unavailable() -> ApiError:
    return ApiError(503, MODEL_UNAVAILABLE, None, "model_unavailable")


class ModelGate:
    """Calls to the model deployment `model` (a DeploymentHandle whose replicas have an async `health()` returning a
    dict). Construct it inside the replica's event loop: it starts its watcher there."""

    def __init__(self, model, period_s: float = 0.5, timeout_s: float = 5.0):
        self.model, self.period_s, self.timeout_s = model, period_s, timeout_s
        self.live = True  # Serve starts the ingress alongside the model; the first probe corrects this
        self._down_since = 0.0
        self._calls: set = set()  # DeploymentResponse(Generator)s in flight: cancelled when the model goes away
        self._probe_now = asyncio.Event()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def probe(self) -> list[dict] | None:
        """Every model replica's health() (none: no replica alive), or None when they did not all answer within
        `timeout_s`. Updates `live`."""
        try:
            answers = await self.model.broadcast("health").results_async(
                timeout_s=self.timeout_s, return_exceptions=True
            )
        except DeploymentUnavailableError:  # the router knows no running replica
            answers = []
        except TimeoutError:
            return None
        healths = [a for a in answers if isinstance(a, dict)]  # the rest: a dead replica's error, a failed restart
        self._set_live(bool(healths))
        return healths

    async def call(self, response):
        """The result of `response` (a DeploymentResponse); ApiError when the model refuses it or is gone."""
        with self._watching(response):
            return await response

    async def stream(self, response) -> AsyncIterator:
        """The items of `response` (a DeploymentResponseGenerator); ApiError as in `call`, also mid-stream."""
        with self._watching(response):
            async for item in response:
                yield item

    @contextmanager
    def _watching(self, response) -> Iterator[None]:
        if not self.live:
            raise unavailable()
        self._calls.add(response)
        try:
            yield
        except RayTaskError as err:  # the model's own refusal: serve/app.py raises only ApiError across the handle
            cause = err.cause
            raise cause if isinstance(cause, ApiError) else ApiError.from_failure(cause) from None
        except (RayActorError, TaskCancelledError):  # its replica died under it, or `_set_live` cancelled it
            self._probe_now.set()
            raise unavailable() from None
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: stop the model's work too
            response.cancel()
            raise
        finally:
            self._calls.discard(response)

    def _set_live(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        if live:
            log.info(
                "the model deployment serves again, %.1f s after it went away", time.monotonic() - self._down_since
            )
            return
        self._down_since = time.monotonic()
        log.warning("no model replica is alive: answering 503 until Serve has started one")
        for response in list(self._calls):  # waiting in Serve's router for a replica that is not there yet
            response.cancel()

    async def _watch(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception:  # the watcher must outlive any one probe
                log.exception("probing the model deployment failed")
            try:
                await asyncio.wait_for(self._probe_now.wait(), self.period_s)
            except TimeoutError:
                pass
            self._probe_now.clear()
