"""Waiting through a replica restart: a deadline per request, jittered exponential backoff, a time window.

When a vLLM replica dies, Serve starts a new one, which loads the model again: about a minute for the
embedded model on a CPU, minutes for a 7-8B model on a GPU (issue 16.1 measured a grower's trees finishing
52 s late after a SIGKILL). Three retries 1/2/4 s apart give up long before that, and every client retrying
on the same schedule hits the new replica in lockstep. So a failing request is retried with "full jitter"
(a uniform delay in [0, min(cap, base * 2**attempt)], AWS Architecture Blog, "Exponential Backoff And
Jitter") until ``serve.retry_window_s`` has passed since its first failure; the window is sized from the
replica's start time. A request that never answers (a wedged engine) ends at its deadline
(``serve.request_timeout_s``) and counts as one failure, so a stuck replica cannot stall a client forever.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pbt_ray.serving.client import EndpointError

T = TypeVar("T")


@dataclass
class RetryPolicy:
    window_s: float = 180.0  # no retry starts later than this after the request's first failure
    max_retries: int = 100  # and at most this many (0: fail at once)
    base_s: float = 1.0
    cap_s: float = 15.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** attempt))

    async def call(self, request: Callable[[], Awaitable[T]], on_retry: Callable[[int, EndpointError], None] | None = None) -> T:
        """``request()`` until it succeeds; a non-retryable error (a 4xx other than 408/409/429) is raised at
        once, a retryable one once the window or the retries are spent, its message saying how long it tried."""
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                return await request()
            except EndpointError as exc:
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                waited = now - first_failure
                if not exc.retryable:
                    raise
                if attempt >= self.max_retries or waited >= self.window_s:
                    raise EndpointError(f"{exc} (gave up after {attempt + 1} attempts over {waited:.0f} s; "
                                        "serve.retry_window_s sets how long a request waits for a replica to "
                                        "come back)", status=exc.status) from exc
                if on_retry is not None:
                    on_retry(attempt, exc)
                # Never sooner than the server asked (Retry-After), never past the window's end.
                wait = max(self.delay(attempt), exc.retry_after_s or 0.0)
                await self.sleep(min(wait, max(0.0, self.window_s - waited)))
                attempt += 1


async def with_deadline(awaitable: Awaitable[T], timeout_s: float | None, what: str) -> T:
    """``awaitable``, or an ``EndpointError`` (retryable) once ``timeout_s`` has passed."""
    if timeout_s is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        raise EndpointError(f"{what} did not answer within {timeout_s:g} s (serve.request_timeout_s)") from None


class RetryingClient:
    """A chat client (``ChatClient`` / ``HandleChatClient``) whose ``chat`` calls wait through restarts under
    ``policy``; for callers that make requests themselves (the evaluation suites). Other attributes pass through."""

    def __init__(self, client, policy: RetryPolicy):
        self.client, self.policy = client, policy

    async def chat(self, model: str, messages, **params):
        return await self.policy.call(lambda: self.client.chat(model, messages, **params))

    def __getattr__(self, name: str):
        return getattr(self.client, name)
