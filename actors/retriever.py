"""SearchActor: the Ray shell over `medr3.retrieval.searcher.Searcher`, and SearchPool, several replicas behind one
handle.

A replica serves `config.max_concurrency` concurrent batch searches (a threaded actor: the Qdrant engine and torch
release the GIL in their kernels). The pool round-robins over replicas; a call that times out or hits a dead replica
is retried on the next one (up to `config.retries` times), and Ray restarts dead replicas in the background. A Qdrant
server that goes away is waited for: the search is retried with backoff for `config.retry_seconds`, then fails with
RetrievalError naming the URL.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.cluster import actor_env
from medr3.config import RetrieverConfig
from medr3.retrieval.store import StoreUnavailableError
from medr3.retry import retry

log = logging.getLogger(__name__)


class RetrievalError(RuntimeError):
    """Search failed on every replica tried, or the replicas could not start (the cause is in the message)."""


@ray.remote
class SearchActor:
    """One replica: opens the index (or connects to the server) once, then answers batched searches."""

    def __init__(self, config: dict):
        from medr3.retrieval.searcher import Searcher

        self._searcher = Searcher(RetrieverConfig.model_validate(config))

    def ready(self) -> bool:
        return True

    def batch_search(
        self,
        queries: Sequence[str],
        k: int | None = None,
        sources: Sequence[str] | None = None,
        mode: str | None = None,
    ) -> list[list[dict]]:
        """See `Searcher.batch_search`: per query a list of `{id, doc_id, title, text, score, source}`."""
        return self._searcher.batch_search(queries, k=k, sources=sources, mode=mode)


class SearchPool:
    """`config.replicas` SearchActors behind one `batch_search`. Construction waits until all replicas have opened
    the store, so a missing index or an unreachable server fails here, with its reason, not at the first search."""

    def __init__(self, config: RetrieverConfig, startup_timeout_s: float = 120.0):
        self.config = config
        self._replicas = [
            SearchActor.options(
                num_cpus=config.num_cpus,
                num_gpus=config.num_gpus,
                resources=config.resources,
                max_concurrency=config.max_concurrency,
                max_restarts=-1,  # a replica that dies comes back; the pool retries its calls elsewhere meanwhile
                runtime_env=actor_env(f"search-{i}"),
            ).remote(config.model_dump())
            for i in range(config.replicas)
        ]
        self._next = itertools.cycle(range(len(self._replicas)))
        try:
            # Loading the embedder (torch import) takes seconds; the store check itself is bounded by timeout_s.
            ray.get([r.ready.remote() for r in self._replicas], timeout=startup_timeout_s + config.timeout_s)
        except (RayActorError, GetTimeoutError) as err:
            self.shutdown()
            raise RetrievalError(f"search replicas failed to start: {_cause(err)}") from None

    @property
    def replicas(self) -> list:
        return list(self._replicas)

    def batch_search(
        self,
        queries: Sequence[str],
        k: int | None = None,
        sources: Sequence[str] | None = None,
        mode: str | None = None,
    ) -> list[list[dict]]:
        """`_search_replicas`, retried with backoff for `config.retry_seconds` while the Qdrant server is unreachable
        (a replica's client gives up on it within timeout_s); then RetrievalError naming the URL and what to do."""
        url, limit, start, failures = self.config.url, self.config.retry_seconds, time.monotonic(), []

        def on_outage(attempt: int, err: BaseException) -> None:
            failures.append(err)
            if attempt == 1:  # our loggers' warnings reach the console: the user sees why the job pauses
                log.warning("Qdrant server at %s unreachable; retrying for up to %gs", url, limit)
            else:
                log.info("Qdrant server at %s unreachable for %.1fs: %s", url, time.monotonic() - start, _cause(err))

        try:
            results = retry(
                lambda: self._search_replicas(queries, k, sources, mode),
                deadline_s=limit,
                retry_on=(StoreUnavailableError,),
                backoff_s=0.5,
                max_backoff_s=5.0,
                on_failure=on_outage,
            )
        except StoreUnavailableError as err:
            raise RetrievalError(
                f"Qdrant server at {url} unreachable: searches retried for {time.monotonic() - start:.0f}s "
                f"({len(failures)} attempt(s); retriever.retry_seconds = {limit:g}); last error: {_cause(err)}. "
                "Check that the server runs and retriever.url reaches it, then rerun the same command: a training "
                "job resumes from its last checkpoint (a larger retriever.retry_seconds rides out longer outages)."
            ) from err
        if failures:
            log.warning("Qdrant server at %s is back after %.1fs", url, time.monotonic() - start)
        return results

    def _search_replicas(
        self,
        queries: Sequence[str],
        k: int | None = None,
        sources: Sequence[str] | None = None,
        mode: str | None = None,
    ) -> list[list[dict]]:
        """One batched search on the next replica; on a timeout or dead replica, retry on the following ones."""
        errors: list[str] = []

        def on_next_replica() -> list[list[dict]]:
            i, start = next(self._next), time.perf_counter()
            try:
                ref = self._replicas[i].batch_search.remote(list(queries), k, sources, mode)
                # A replica's client gives up on a silent server within ~1.25 timeout_s (attempts plus waits): wait
                # past that, so that its StoreUnavailableError, not our timeout, reports the outage.
                return ray.get(ref, timeout=1.5 * self.config.timeout_s)
            except (RayActorError, GetTimeoutError) as err:
                errors.append(f"replica {i} after {time.perf_counter() - start:.1f}s: {_cause(err)}")
                raise

        try:
            return retry(on_next_replica, self.config.retries + 1, retry_on=(RayActorError, GetTimeoutError))
        except (RayActorError, GetTimeoutError):
            raise RetrievalError(f"search failed on {len(errors)} attempt(s): " + "; ".join(errors)) from None

    def shutdown(self) -> None:
        for replica in self._replicas:
            ray.kill(replica, no_restart=True)


def _cause(err: BaseException) -> str:
    """The useful line of a Ray error: the original exception of a failed actor constructor or search, not Ray's
    preamble."""
    text = str(err)
    for marker in ("StoreUnavailableError: ", "IndexNotReadyError: "):
        if marker in text:
            return marker.rstrip(": ") + ": " + text.split(marker, 1)[1].strip().splitlines()[0]
    return text.strip().splitlines()[-1] if text.strip() else type(err).__name__
