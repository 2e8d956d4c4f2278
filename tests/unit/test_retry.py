"""Issue 16.1: clients wait through a replica restart with jittered backoff inside a window, and a request that
never answers ends at its deadline. Time is simulated (a fake clock and sleep), so nothing here waits."""

import asyncio
import random

import pytest

from pbt_ray.serving.client import EndpointError
from pbt_ray.serving.retry import RetryingClient, RetryPolicy, with_deadline


class Outage:
    """An endpoint that answers 503 (or ``error``) until ``down_s`` simulated seconds have passed; each request
    takes ``request_s``."""

    def __init__(self, down_s: float, request_s: float = 0.5, error=lambda: EndpointError("replica restarting", status=503)):
        self.now, self.down_s, self.request_s, self.error = 0.0, down_s, request_s, error
        self.attempts, self.sleeps = 0, []

    def policy(self, **kwargs) -> RetryPolicy:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds

        return RetryPolicy(rng=random.Random(0), clock=lambda: self.now, sleep=sleep, **kwargs)

    async def request(self) -> str:
        self.attempts += 1
        self.now += self.request_s
        if self.now < self.down_s:
            raise self.error()
        return "answer"


def test_a_request_waits_through_a_replica_restart_inside_the_window():
    outage = Outage(down_s=75)  # about what the embedded model's replica takes to come back on a CPU
    assert asyncio.run(outage.policy(window_s=180).call(outage.request)) == "answer"
    assert outage.now >= 75 and outage.attempts > 4  # the old 1/2/4 s schedule gave up after 7 s


def test_backoff_is_jittered_exponential_and_capped():
    policy = RetryPolicy(base_s=1.0, cap_s=15.0, rng=random.Random(1))
    for attempt in range(12):
        bound = min(15.0, 2.0 ** attempt)
        draws = [policy.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in draws)
        assert max(draws) - min(draws) > bound / 2  # spread out, so clients do not retry in lockstep


def test_it_gives_up_when_the_window_is_spent_and_says_how_long_it_tried():
    outage = Outage(down_s=10_000)
    with pytest.raises(EndpointError, match=r"replica restarting \(gave up after \d+ attempts over 6\d s; serve.retry_window_s") as caught:
        asyncio.run(outage.policy(window_s=60).call(outage.request))
    assert caught.value.status == 503
    assert outage.now < 60 + 15 + 1  # no sleep runs past the window's end


def test_errors_that_a_retry_cannot_fix_fail_at_once():
    outage = Outage(down_s=10_000, error=lambda: EndpointError("prompt exceeds the context", status=400))
    with pytest.raises(EndpointError, match="exceeds the context$"):
        asyncio.run(outage.policy().call(outage.request))
    assert outage.attempts == 1


def test_max_retries_bounds_the_attempts():
    outage = Outage(down_s=10_000)
    with pytest.raises(EndpointError, match="gave up after 1 attempts"):
        asyncio.run(outage.policy(max_retries=0).call(outage.request))
    outage = Outage(down_s=10_000)
    with pytest.raises(EndpointError, match="gave up after 4 attempts"):
        asyncio.run(outage.policy(max_retries=3).call(outage.request))


def test_a_request_that_never_answers_ends_at_its_deadline_as_a_retryable_error():
    async def wedged():
        await asyncio.Event().wait()  # a SIGSTOPped engine: connected, never answering

    with pytest.raises(EndpointError, match=r"did not answer within 0.05 s") as caught:
        asyncio.run(with_deadline(wedged(), 0.05, "Serve app 'pbt-local'"))
    assert caught.value.retryable


def test_the_retrying_client_retries_chat_and_passes_the_rest_through():
    class Flaky:
        base_url = "http://x/v1"
        calls = 0

        async def chat(self, model, messages, **params):
            Flaky.calls += 1
            if Flaky.calls < 3:
                raise EndpointError("unreachable")
            return (model, params["max_tokens"])

    async def no_sleep(_):
        return None

    client = RetryingClient(Flaky(), RetryPolicy(sleep=no_sleep))
    assert asyncio.run(client.chat("m", [], max_tokens=5)) == ("m", 5) and Flaky.calls == 3
    assert client.base_url == "http://x/v1"


def test_a_503_with_retry_after_is_retried_no_sooner_than_asked():
    outage = Outage(down_s=20, error=lambda: EndpointError("queue full", status=503, retry_after_s=5))
    assert asyncio.run(outage.policy(base_s=0.01).call(outage.request)) == "answer"
    assert outage.sleeps and min(outage.sleeps) >= 5


def test_the_http_client_reads_retry_after_from_the_response():
    import httpx
    import openai

    from pbt_ray.serving.client import _retry_after

    def status_error(headers):
        response = httpx.Response(503, headers=headers, request=httpx.Request("POST", "http://x/v1/chat/completions"))
        return openai.APIStatusError("busy", response=response, body=None)

    assert _retry_after(status_error({"retry-after": "5"})) == 5.0
    assert _retry_after(status_error({})) is None
    assert _retry_after(status_error({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None
