"""Issue 16 (6), bad input through the API: requests the debater app must answer without a 500, a hang or a
crash, and keep answering a normal request afterwards (docs/reliability.md lists them).

Shares the session's app (tests/integration/conftest.py: one cluster, one app); each request has a timeout, so a
hang fails the test instead of stalling the session. tests/integration/test_serve_app.py covers the other
malformed bodies (not JSON, no messages, a bad temperature or max_tokens, too long a prompt, an unknown model).

What Ray Serve LLM (2.60, vLLM) answers is pinned where it is an error by any reading of the OpenAI API (a body of
megabytes, an adapter that does not exist). Streaming and n > 1 are valid OpenAI requests that vLLM may serve, and
an empty message list is accepted by some servers: for those the test asks "answered, not crashed": 200 with a
valid body, or a 4xx with an OpenAI error object.
"""

import json

import httpx
import pytest

from pbt_ray.serving.auth import auth_headers

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "Say hello."}]


def _post(url: str, body, timeout: float = 120) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{url}/chat/completions", content=body, timeout=timeout,
                          headers={"content-type": "application/json", **auth_headers()})
    return httpx.post(f"{url}/chat/completions", json=body, timeout=timeout, headers=auth_headers())


def _is_error(response: httpx.Response) -> bool:
    """A 4xx with an OpenAI-style error object: {"error": {"message": ..., ...}}."""
    if not 400 <= response.status_code < 500:
        return False
    error = response.json().get("error")
    return isinstance(error, dict) and bool(error.get("message"))


def _still_answers(url: str) -> None:
    ok = _post(url, {"model": "persuadee", "messages": HI, "max_tokens": 8})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"], ok.text


def test_an_oversized_body_is_refused(debater_app):
    """About 4 MB of prompt: the engine's context is 2048 tokens, so 400 (too long) or 413 (too large)."""
    _, url = debater_app
    body = {"model": "persuadee", "messages": [{"role": "user", "content": "word " * 800_000}], "max_tokens": 8}
    response = _post(url, body)
    assert response.status_code in (400, 413) and _is_error(response), response.text[:500]
    _still_answers(url)


def test_an_unknown_adapter_is_refused(debater_app):
    """``<model>:<adapter>`` asks for a LoRA adapter; one that does not exist (the CPU app serves none) is a 4xx with
    an error object, never a 500."""
    _, url = debater_app
    response = _post(url, {"model": "persuadee:no-such-adapter", "messages": HI, "max_tokens": 8})
    assert _is_error(response), (response.status_code, response.text[:500])
    _still_answers(url)


def test_streaming_is_answered_not_crashed(debater_app):
    _, url = debater_app
    response = _post(url, {"model": "persuadee", "messages": HI, "max_tokens": 8, "stream": True})
    if response.status_code == 200:  # server-sent events: data: {chunk} ... data: [DONE]
        events = [line[len("data:"):].strip() for line in response.text.splitlines() if line.startswith("data:")]
        assert events and events[-1] == "[DONE]", response.text[:500]
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks and all(c.get("object") == "chat.completion.chunk" for c in chunks)
    else:
        assert _is_error(response), (response.status_code, response.text[:500])
    _still_answers(url)


def test_several_choices_are_answered_not_crashed(debater_app):
    _, url = debater_app
    response = _post(url, {"model": "persuadee", "messages": HI, "max_tokens": 8, "n": 3, "temperature": 0.8})
    if response.status_code == 200:
        choices = response.json()["choices"]
        assert len(choices) == 3 and all(c["message"]["content"] is not None for c in choices)
    else:
        assert _is_error(response), (response.status_code, response.text[:500])
    _still_answers(url)


@pytest.mark.parametrize("messages", [[], [{"role": "user", "content": ""}]], ids=["no-messages", "empty-content"])
def test_empty_messages_are_answered_not_crashed(debater_app, messages):
    _, url = debater_app
    response = _post(url, {"model": "persuadee", "messages": messages, "max_tokens": 8})
    if response.status_code == 200:
        assert isinstance(response.json()["choices"], list)
    else:
        assert _is_error(response), (response.status_code, response.text[:500])
    _still_answers(url)
