"""One OpenAI-style chat interface for everything that generates text (ARCHITECTURE.md "Contracts").

Works against the debater app's HTTP ingress or any OpenAI-compatible URL. Dialogue code takes a
``ChatClient`` and never imports vLLM or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import openai

from pbt_ray.serving.chat_format import conform, format_for


class EndpointError(RuntimeError):
    """The endpoint is unreachable or rejected a request; the message says which and why."""

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s  # the server's Retry-After (a 503 from Serve's bounded queue)

    @property
    def retryable(self) -> bool:
        """Unreachable, timed out, overloaded or a server error: worth retrying. Other 4xx: not."""
        return self.status is None or self.status >= 500 or self.status in (408, 409, 429)


@dataclass(frozen=True)
class ChatResult:
    text: str
    model: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class ChatClient:
    """``formats`` (model id or role -> ``native`` | ``fold_system``, :func:`pbt_ray.serving.chat_format.chat_formats`)
    says how each model's chat template wants the messages; a model it does not name gets them as built."""

    def __init__(self, base_url: str, timeout_s: float = 300.0, max_retries: int = 2, api_key: str | None = None,
                 formats: dict[str, str] | None = None):
        from pbt_ray.serving.auth import client_key

        self.base_url = base_url.rstrip("/")
        self.formats = dict(formats or {})
        self.timeout_s = timeout_s
        api_key = api_key or client_key()  # None: $PBT_API_KEY, or no token
        # The SDK retries connection errors, 408/409/429 and 5xx with exponential backoff.
        self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)

    async def chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 80,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatResult:
        try:
            response = await self._client.chat.completions.create(
                model=model,
                messages=conform(messages, format_for(self.formats, model)),
                temperature=temperature,
                max_tokens=max_tokens,
                seed=seed,
                extra_body=extra or None,
            )
        except openai.APITimeoutError as exc:
            raise EndpointError(f"{self.base_url} did not answer a request to '{model}' within {self.timeout_s:g} s "
                                "(serve.request_timeout_s)") from exc
        except openai.APIConnectionError as exc:
            raise EndpointError(
                f"Cannot reach the OpenAI endpoint at {self.base_url} ({exc.__class__.__name__}). "
                "Is the debater app running (`pbt serve`) and is the URL right?"
            ) from exc
        except openai.APIStatusError as exc:
            raise EndpointError(
                f"{self.base_url} rejected a request to '{model}' (HTTP {exc.status_code}): {_message(exc)}"
                + (_UNAUTHORIZED_HINT if exc.status_code == 401 else ""),
                status=exc.status_code, retry_after_s=_retry_after(exc),
            ) from exc
        choice = response.choices[0]
        usage = response.usage
        return ChatResult(
            text=choice.message.content or "",
            model=response.model,
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    async def models(self) -> list[str]:
        try:
            return [m.id async for m in self._client.models.list()]
        except (openai.APIConnectionError, httpx.HTTPError) as exc:
            raise EndpointError(
                f"Cannot reach the OpenAI endpoint at {self.base_url} ({exc.__class__.__name__}). "
                "Is the debater app running (`pbt serve`) and is the URL right?"
            ) from exc
        except openai.APIStatusError as exc:
            raise EndpointError(f"{self.base_url}/models answered HTTP {exc.status_code}"
                                + (_UNAUTHORIZED_HINT if exc.status_code == 401 else ""), status=exc.status_code) from exc

    async def close(self) -> None:
        await self._client.close()


_UNAUTHORIZED_HINT = (" — the endpoint wants a bearer token: export it as $PBT_API_KEY (or the config's "
                      "serve.api_key_env / serve.api_key_file) where pbt runs")


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):  # absent, or an HTTP date (Serve sends seconds)
        return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    text = error.get("message") if isinstance(error, dict) else None
    return (text or str(exc)).split(" (Request ID")[0][:500]


async def preflight(base_url: str, needed: list[str], timeout_s: float = 10.0, api_key: str | None = None) -> None:
    """Fail fast, before any work starts, if the endpoint is unreachable or lacks a model the run needs."""
    client = ChatClient(base_url, timeout_s=timeout_s, max_retries=0, api_key=api_key)
    try:
        served = await client.models()
    finally:
        await client.close()
    missing = sorted(set(needed) - set(served))
    if missing:
        raise EndpointError(
            f"{base_url} does not serve {missing} (it serves {sorted(served)}). Point the config's serve.roles "
            "at model ids the endpoint serves, or use the pbt debater app."
        )


class HandleChatClient:
    """The same interface as :class:`ChatClient`, through Serve deployment handles inside the cluster.

    Requests go straight to the ``LLMServer:<model id>`` deployments of the debater app (Ray's routing and
    autoscaling still apply), skipping the HTTP proxy and the ingress: fewer hops and less CPU per request
    than HTTP. Role aliases are resolved here, as the ingress would; ``formats`` as in :class:`ChatClient`.
    """

    def __init__(self, app_name: str, aliases: dict[str, str], served: list[str], formats: dict[str, str] | None = None,
                 timeout_s: float | None = 300.0):
        self.app_name, self.aliases, self.served = app_name, dict(aliases), set(served)
        self.timeout_s = timeout_s  # a handle call has no deadline of its own: a wedged replica would hold it forever
        self.formats = dict(formats or {})
        self.base_url = f"serve://{app_name}"
        self._handles: dict[str, Any] = {}

    def _handle(self, model_id: str):
        from ray import serve

        if model_id not in self._handles:
            handle = serve.get_deployment_handle(f"LLMServer:{model_id}", app_name=self.app_name)
            self._handles[model_id] = handle.options(stream=True)
        return self._handles[model_id]

    async def chat(self, model, messages, *, temperature=0.0, max_tokens=80, seed=None, extra=None) -> ChatResult:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, ErrorResponse

        target = self.aliases.get(model, model)
        if target not in self.served:
            raise EndpointError(f"'{model}' is not a model of the Serve app '{self.app_name}' (serves {sorted(self.served)})", status=404)
        messages = conform(messages, format_for(self.formats, model if model in self.formats else target))
        try:
            request = ChatCompletionRequest(model=target, messages=messages, temperature=temperature,
                                            max_tokens=max_tokens, seed=seed, **(extra or {}))
        except ValueError as exc:  # pydantic validation: the request itself is bad
            raise EndpointError(f"invalid request to '{model}': {exc}", status=400) from exc
        async def first_response():
            async for item in self._handle(target).chat.remote(request, None):
                return item
            return None

        from pbt_ray.serving.retry import with_deadline

        try:
            response = await with_deadline(first_response(), self.timeout_s, f"Serve app '{self.app_name}' ('{model}')")
        except EndpointError:
            raise
        except Exception as exc:  # the replica died, the app was deleted, ...: worth a retry
            raise EndpointError(f"Serve app '{self.app_name}' failed a request to '{model}': {exc!r}"[:600]) from exc
        if isinstance(response, ErrorResponse):
            raise EndpointError(f"'{model}' rejected a request: {response.error.message}"[:600], status=response.error.code)
        if response is None:
            raise EndpointError(f"'{model}' returned nothing")
        choice = response.choices[0]
        return ChatResult(
            text=choice.message.content or "", model=response.model, finish_reason=choice.finish_reason,
            prompt_tokens=response.usage.prompt_tokens if response.usage else 0,
            completion_tokens=response.usage.completion_tokens if response.usage else 0,
        )

    async def close(self) -> None:
        self._handles.clear()
