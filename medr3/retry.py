"""One retry loop for every call that may fail for a while: the judge, Qdrant, search replicas, restarting workers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry(
    fn: Callable[[], T],
    attempts: int | None = None,
    *,
    deadline_s: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff_s: float = 0.0,
    max_backoff_s: float = math.inf,
    on_failure: Callable[[int, BaseException], None] | None = None,
) -> T:
    """`fn()`, called again after an exception in `retry_on` until it returns; the last error propagates.

    Stops after `attempts` calls or, with `deadline_s`, at the first failure `deadline_s` seconds or more after the
    start, whichever comes first (at least one of them is required). Before call i + 1 it sleeps
    `min(backoff_s * 2**(i - 1), max_backoff_s)` (equal values: a fixed wait). `on_failure(i, err)` sees every failed
    call i (1-based), the last one included, so a caller can log or collect each error.
    """
    if attempts is None and deadline_s is None:
        raise ValueError("retry needs attempts or deadline_s")
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except retry_on as err:
            if on_failure is not None:
                on_failure(attempt, err)
            out_of_attempts = attempts is not None and attempt >= attempts
            out_of_time = deadline_s is not None and time.monotonic() - start >= deadline_s
            if out_of_attempts or out_of_time:
                raise
            time.sleep(min(backoff_s * 2 ** (attempt - 1), max_backoff_s))
