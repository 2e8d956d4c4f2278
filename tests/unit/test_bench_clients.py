"""The benchmark's client wrappers: recording requests, and keeping reference-style requests out of the prefix cache."""

from __future__ import annotations

import asyncio

from pbt_ray.dialogue.bench import RecordingClient, UncachedClient
from pbt_ray.serving.client import ChatResult


class Echo:
    def __init__(self):
        self.extras = []

    async def chat(self, model, messages, *, temperature, max_tokens, seed=None, extra=None):
        self.extras.append(extra)
        return ChatResult(text="B", model=model, finish_reason="stop", prompt_tokens=len(messages), completion_tokens=3)


def test_every_reference_style_request_gets_its_own_cache_salt():
    echo = Echo()
    client = RecordingClient(UncachedClient(echo))

    async def go():
        for _ in range(3):
            await client.chat("m", [{"role": "user", "content": "q"}], temperature=0.7, max_tokens=8, extra={"stop": ["\n"]})

    asyncio.run(go())
    salts = [e["cache_salt"] for e in echo.extras]
    assert len(set(salts)) == 3 and all(salts)  # no two requests share a prefix-cache key
    assert all(e["stop"] == ["\n"] for e in echo.extras)  # the request's own options are kept
    assert [r[-1] for r in client.requests] == [3, 3, 3] and [r[-2] for r in client.requests] == [1, 1, 1]


def test_reference_engine_replays_requests_without_kv_cache():
    """(r) runs the embedded model through HF generate (cache off) and produces exactly the recorded token counts."""
    from pbt_ray.config import load_config
    from pbt_ray.dialogue.bench import _reference_engine

    question = [{"role": "user", "content": "Capital of France? One word."}]
    requests = [("persuadee", question, 0.7, None, None, 0, 3), ("extractor", question, 0.0, None, None, 0, 2)]
    rate = _reference_engine(load_config("local"), requests, 2)
    assert (rate.turns, rate.tokens) == (2, 5) and rate.prompt_tokens > 10 and rate.seconds > 0
