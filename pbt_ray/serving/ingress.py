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

from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress


def resolve_alias(model: str | None, aliases: dict[str, str]) -> str | None:
    """Map a role alias (or ``alias:adapter`` for LoRA) to the served model id; other names pass through."""
    if model is None:
        return None
    base, sep, adapter = model.partition(":")
    if base in aliases:
        return aliases[base] + sep + adapter
    return model


class RoleAliasIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, model_aliases: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._aliases = dict(model_aliases or {})
        unknown = {alias: target for alias, target in self._aliases.items() if target not in model_cards}
        if unknown:
            raise ValueError(f"model_aliases point at models this app does not serve: {unknown}; served: {sorted(model_cards)}")

    async def _get_response(self, *, body, call_method, raw_request=None):
        target = resolve_alias(body.model, self._aliases)
        if target != body.model:
            body = body.model_copy(update={"model": target})
        async for response in super()._get_response(body=body, call_method=call_method, raw_request=raw_request):
            yield response

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
