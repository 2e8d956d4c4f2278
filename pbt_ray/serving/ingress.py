"""OpenAI ingress that also answers to role names ("persuader", "persuadee", "extractor").

The loop addresses models by role, so the same dialogue code runs whether the roles are three
engines, two (the paper: Llama-3.1-8B and Mistral-7B, with Mistral also extracting answers) or one
(the embedded SmolLM2 on a laptop). ``ray.serve.llm`` routes by model id and vLLM only accepts its own
served name, so the alias is rewritten to the served id before the request leaves the ingress; the
response then names the served model, which tells the caller what actually answered.

Plugged in through ``build_openai_app``'s ``ingress_cls_config`` (Ray 2.60), so everything else about
the app (autoscaling, LoRA multiplexing, error mapping) is Ray's own.
"""

from __future__ import annotations

from typing import Any

from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress

from pbt_ray.serving.auth import DEFAULT_API_KEY_ENV, AuthError, BearerAuth, read_token


def resolve_alias(model: str | None, aliases: dict[str, str]) -> str | None:
    """Map a role alias (or ``alias:adapter`` for LoRA) to the served model id; other names pass through."""
    if model is None:
        return None
    base, sep, adapter = model.partition(":")
    if base in aliases:
        return aliases[base] + sep + adapter
    return model


class RoleAliasIngress(OpenAiIngress):
    """``api_key_env`` / ``api_key_file`` / ``require_api_key``: where this replica finds its bearer token
    (:mod:`pbt_ray.serving.auth`); with one, every HTTP request must carry it."""

    def __init__(self, llm_deployments, model_cards, *, model_aliases: dict[str, str] | None = None,
                 api_key_env: str | None = DEFAULT_API_KEY_ENV, api_key_file: str | None = None,
                 require_api_key: bool = False, **kwargs: Any):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._aliases = dict(model_aliases or {})
        self._known_adapters: set[str] = set()
        unknown = {alias: target for alias, target in self._aliases.items() if target not in model_cards}
        if unknown:
            raise ValueError(f"model_aliases point at models this app does not serve: {unknown}; served: {sorted(model_cards)}")
        self._token = read_token(api_key_env, api_key_file)
        if self._token is None and require_api_key:
            raise AuthError(f"serve.require_api_key is set but this ingress found no token (${api_key_env} is unset"
                            f"{'' if not api_key_file else f' and {api_key_file} is absent'}): set it on every node "
                            "(KubeRay: a secretKeyRef env var), or unset serve.require_api_key")
        if self._token is not None and not any("_set_asgi_app" in vars(k) for k in type(self).__mro__[1:]
                                               if k is not RoleAliasIngress):
            # The token is installed through Serve's ASGI wrapper (below); a Ray that renamed that hook would
            # leave the endpoint open while the user believes it is protected. Refuse instead.
            raise AuthError("this Ray version's Serve ingress has no _set_asgi_app hook: the bearer token cannot be "
                            "enforced. Pin ray to the version in requirements/, or unset the token")

    def _set_asgi_app(self, app) -> None:
        """Serve's ``ASGIAppReplicaWrapper`` hands the replica its FastAPI app here (Ray 2.60, after our
        ``__init__``): wrap it so the token is checked before any route, including ones Ray adds later."""
        if getattr(self, "_token", None):
            app = BearerAuth(app, self._token)
        setter = getattr(super(), "_set_asgi_app", None)
        if setter is not None:
            setter(app)

    async def _get_response(self, *, body, call_method, raw_request=None):
        target = resolve_alias(body.model, self._aliases)
        await self._check_adapter(body.model, target)
        if target != body.model:
            body = body.model_copy(update={"model": target})
        async for response in super()._get_response(body=body, call_method=call_method, raw_request=raw_request):
            yield response

    async def _check_adapter(self, requested: str | None, target: str | None) -> None:
        """``<model>:<adapter>`` names a LoRA adapter. Ray sends it to the engine as it is, and an engine without
        LoRA, or an adapter that does not exist, fails there with a 500 (issue 16.6): answer 404 here instead,
        naming what exists. An adapter found once is remembered, so its metadata is not fetched per request."""
        base, sep, adapter = (target or "").partition(":")
        if not sep or base not in self._model_cards or target in self._known_adapters:
            return
        path = self._lora_paths.get(base)
        if path is None:
            raise OpenAIHTTPException(status_code=404, type="InvalidModel", message=(
                f"'{requested}' asks for adapter '{adapter}' of '{base}', which serves no LoRA adapters "
                f"(no serve.models[].lora_path); served models: {sorted(self._model_cards) + sorted(self._aliases)}"))
        if await super().model(target) is None:
            raise OpenAIHTTPException(status_code=404, type="InvalidModel", message=(
                f"'{requested}': no adapter '{adapter}' for '{base}' under {path} (each adapter is a folder there "
                "holding adapter_config.json)"))
        self._known_adapters.add(target)

    async def model(self, model_id: str):
        target = resolve_alias(model_id, self._aliases)
        card = await super().model(target)
        if card is None or target == model_id:
            return card
        return card.model_copy(update={"id": model_id, "metadata": {**(card.metadata or {}), "alias_of": target}})

    async def models(self):
        listing = await super().models()
        for alias in self._aliases:
            card = await self.model(alias)
            if card is not None:
                listing.data.append(card)
        return listing
