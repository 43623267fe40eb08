"""The one retry loop (medr3/retry.py) behind the judge, the Qdrant client, the search pool and worker recovery."""

from __future__ import annotations

import pytest

from medr3 import retry as retry_module
from medr3.retry import retry


class Flaky:
    """Fails `failures` times with `error`, then returns "ok"; counts its calls."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "ok"


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits `retry` asks for, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", waits.append)
    return waits


def test_a_call_that_recovers_within_its_attempts_returns_its_result(sleeps):
    fn = Flaky(failures=2)
    assert retry(fn, attempts=3) == "ok" and fn.calls == 3


def test_the_last_error_propagates_and_every_failure_is_reported(sleeps):
    seen = []
    fn = Flaky(failures=5)
    with pytest.raises(ConnectionError, match="failure 3"):
        retry(fn, attempts=3, on_failure=lambda i, err: seen.append((i, str(err))))
    assert fn.calls == 3 and seen == [(1, "failure 1"), (2, "failure 2"), (3, "failure 3")]


def test_an_error_outside_retry_on_is_not_retried(sleeps):
    fn = Flaky(failures=1, error=KeyError)
    with pytest.raises(KeyError):
        retry(fn, attempts=3, retry_on=(ConnectionError,))
    assert fn.calls == 1


def test_waits_double_from_backoff_up_to_the_cap(sleeps):
    retry(Flaky(failures=4), attempts=5, backoff_s=0.5, max_backoff_s=3.0)
    assert sleeps == [0.5, 1.0, 2.0, 3.0]  # none after the last attempt


def test_a_deadline_stops_retrying_at_the_first_failure_past_it(monkeypatch, sleeps):
    clock = iter(range(100))  # each reading of the clock is one second later
    monkeypatch.setattr(retry_module.time, "monotonic", lambda: next(clock))
    fn = Flaky(failures=100)
    with pytest.raises(ConnectionError):
        retry(fn, deadline_s=3, backoff_s=1.0, max_backoff_s=1.0)
    assert fn.calls == 3 and sleeps == [1.0, 1.0]


def test_retry_needs_a_limit():
    with pytest.raises(ValueError, match="attempts or deadline_s"):
        retry(Flaky(failures=0))
