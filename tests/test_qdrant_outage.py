"""A Qdrant server that goes away mid-run (`retriever.backend: server`): searches wait for it, with backoff, for
`retriever.retry_seconds`; past that the job stops with an error naming the URL, and its last checkpoint resumes.

The server is tests/fake_qdrant.py in its own process, killed with SIGKILL (or stopped with SIGSTOP) and started again
on the same port: no package registry here ships the Qdrant server binary (see that file)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from medr3.config import RetrieverConfig, load_config
from medr3.retrieval.manifest import Manifest
from medr3.retrieval.searcher import Searcher
from medr3.retrieval.store import StoreUnavailableError

from .conftest import ROOT
from .fake_qdrant import FakeQdrant
from .fakes import FakeLearner, fake_workers

COLLECTION, POINTS = "outage", 8
QUERIES = ["first-line treatment of hypertension", "lace plant programmed cell death"]
# bm25: no encoder to load; timeout_s bounds one search attempt against a dead server.
SERVER_KEYS = {"backend": "server", "collection": COLLECTION, "mode": "bm25", "timeout_s": 3.0, "num_cpus": 0.25}


def server_config(server: FakeQdrant, index_path: str, **update) -> RetrieverConfig:
    return RetrieverConfig(**SERVER_KEYS, url=server.url, index_path=index_path, **update)


@pytest.fixture(scope="module")
def server():
    server = FakeQdrant(COLLECTION, POINTS)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def running(server) -> FakeQdrant:
    """The module's server, started again if an earlier test left it killed."""
    if server.proc.poll() is not None:
        server.start()
    return server


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, server) -> str:
    """The local half of a server index: a finished manifest for the fake collection."""
    path = tmp_path_factory.mktemp("server_index")
    fingerprint = {"backend": "server", "collection": COLLECTION, "embedder": "minilm", "url": server.url}
    Manifest(fingerprint, batches_total=1, points_total=POINTS, dim=384, batches_done=1, complete=True).save(path)
    return str(path)


def test_retry_seconds_defaults_to_a_minute_and_cannot_be_negative():
    assert RetrieverConfig().retry_seconds == 60.0
    with pytest.raises(ValueError, match="retry_seconds"):
        RetrieverConfig(retry_seconds=-1)


def test_the_searcher_fails_fast_while_the_server_is_down_and_reconnects_when_it_is_back(running, index_path):
    """The fake server speaks what our client asks; a dead one fails one search within timeout_s naming the URL, a
    silent one within 1.25 timeout_s (the client's attempts plus its waits)."""
    searcher = Searcher(server_config(running, index_path))
    try:
        docs = searcher.batch_search(QUERIES, k=3)
        assert [len(d) for d in docs] == [3, 3] and docs[0][0]["doc_id"] == "fake:0"
        assert set(docs[0][0]) == {"id", "doc_id", "title", "text", "score", "source"}
        running.kill()
        start = time.perf_counter()
        with pytest.raises(StoreUnavailableError, match=running.url.replace(".", r"\.")):
            searcher.batch_search(QUERIES, k=3)
        assert time.perf_counter() - start < searcher.config.timeout_s
        running.start()
        assert searcher.batch_search(QUERIES, k=2) == [d[:2] for d in docs]
        running.pause()  # a silent server: each attempt times out; the pool waits 1.5 timeout_s for this error
        start = time.perf_counter()
        try:
            with pytest.raises(StoreUnavailableError, match="timed out"):
                searcher.batch_search(QUERIES, k=3)
        finally:
            running.resume()
        assert time.perf_counter() - start < 1.5 * searcher.config.timeout_s
    finally:
        searcher.close()


def test_the_pool_waits_for_a_server_that_comes_back_within_retry_seconds(ray_cluster, running, index_path, caplog):
    from actors.retriever import SearchPool

    pool = SearchPool(server_config(running, index_path, retry_seconds=30.0))
    try:
        before = pool.batch_search(QUERIES, k=2)
        running.kill()
        back = threading.Timer(3.0, running.start)
        back.start()
        start = time.perf_counter()
        with caplog.at_level("INFO", logger="actors.retriever"):
            assert pool.batch_search(QUERIES, k=2) == before
        back.join()
        assert 3.0 <= time.perf_counter() - start < 15.0
        assert f"Qdrant server at {running.url} unreachable; retrying for up to 30s" in caplog.text
        assert f"Qdrant server at {running.url} is back after" in caplog.text
    finally:
        pool.shutdown()


def test_the_pool_waits_for_a_silent_server_that_answers_again(ray_cluster, running, index_path, caplog):
    from actors.retriever import SearchPool

    pool = SearchPool(server_config(running, index_path, retry_seconds=30.0))
    try:
        before = pool.batch_search(QUERIES, k=2)
        running.pause()
        back = threading.Timer(5.0, running.resume)
        back.start()
        start = time.perf_counter()
        with caplog.at_level("INFO", logger="actors.retriever"):
            assert pool.batch_search(QUERIES, k=2) == before
        back.join()
        assert 5.0 <= time.perf_counter() - start < 15.0
        assert "unreachable; retrying" in caplog.text and "is back after" in caplog.text
    finally:
        pool.shutdown()


def test_the_pool_gives_up_after_retry_seconds_naming_the_url_and_what_to_do(ray_cluster, running, index_path):
    from actors.retriever import RetrievalError, SearchPool

    config = server_config(running, index_path, retry_seconds=4.0)
    pool = SearchPool(config)
    try:
        pool.batch_search(QUERIES, k=2)
        running.kill()
        start = time.perf_counter()
        with pytest.raises(RetrievalError) as err:
            pool.batch_search(QUERIES, k=2)
        took = time.perf_counter() - start
    finally:
        pool.shutdown()
    # Retried until retry_seconds had passed; the last wait (at most 5 s) and attempt may run past it.
    assert config.retry_seconds <= took < config.retry_seconds + 5.0 + 2 * config.timeout_s
    message = str(err.value)
    assert message.startswith(f"Qdrant server at {running.url} unreachable: searches retried for ")
    assert "retriever.retry_seconds = 4" in message and "Connection refused" in message
    assert "rerun the same command" in message and "resumes from its last checkpoint" in message


class KillsTheServer(FakeLearner):
    """A fake learner that kills the Qdrant server right after training step `at`."""

    def __init__(self, server: FakeQdrant, at: int):
        super().__init__()
        self.server, self.at = server, at

    def train(self, samples: list, seed: int = 0) -> dict:
        stats = super().train(samples, seed)
        if self.steps == self.at:
            self.server.kill()
        return stats


def test_a_job_whose_server_stays_down_stops_with_the_error_and_resumes_from_its_last_checkpoint(
    ray_cluster, running, index_path, tmp_path, tiny_model_dir, tiny_tokenizer
):
    """The trainer's loop on fake workers, but searching through a real SearchPool: the server dies after step 3
    (the retrieval stage's first, which searched), so step 4's search waits retry_seconds and the job stops, as
    `main` does: with the error, its checkpoint of step 3 committed. Once the server is back, a rerun resumes there."""
    from actors.retriever import RetrievalError, SearchPool
    from medr3.checkpoint import CheckpointDir
    from pipelines.progressive import ProgressiveTrainer

    reward = "{gain: {answer: 1.0}, penalty: {format: 0.1}}"
    sets = [
        f"model.path={tiny_model_dir}",
        f"run.output_dir={tmp_path}",
        "run.final_eval=false",
        "run.checkpoint_every=1",
        "stages.warmup.steps=0",
        *(f"stages.{s}.steps=2" for s in ("reasoning", "retrieval", "joint")),
        *(f"stages.{s}.reward={reward}" for s in ("reasoning", "retrieval", "joint")),
        *(f"retriever.{key}={value}" for key, value in SERVER_KEYS.items()),
        f"retriever.url={running.url}",
        f"retriever.index_path={index_path}",
        "retriever.retry_seconds=3",
    ]
    config = load_config(ROOT / "configs/tiny.yaml", sets)
    pool = SearchPool(config.retriever)
    try:
        workers = dataclasses.replace(fake_workers(config, tiny_tokenizer, KillsTheServer(running, at=3)), search=pool)
        trainer = ProgressiveTrainer(config, workers=workers)
        try:
            with pytest.raises(RetrievalError, match=f"Qdrant server at {running.url} unreachable") as err:
                trainer.run()
        finally:
            trainer.close()  # as main() does after an error: the last checkpoint is committed
        assert "retriever.retry_seconds = 3" in str(err.value)
        assert workers.learner.steps == 3
        path, meta = CheckpointDir(tmp_path / "checkpoints").latest()
        assert path.name == "step-000003" and meta["global_step"] == 3 and meta["stage"] == "retrieval"

        running.start()
        workers = dataclasses.replace(fake_workers(config, tiny_tokenizer), search=pool)
        trainer = ProgressiveTrainer(config, workers=workers)
        try:
            trainer.run()
        finally:
            trainer.close()
    finally:
        pool.shutdown()
    assert workers.learner.steps == 6  # loaded 3 from step-000003, trained 4, 5, 6
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["rollout/searches_per_traj"] > 0  # step 3 searched before the server died
