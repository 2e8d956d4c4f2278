"""A trained model served next to the debaters: adapter merged once, deployed through ray.serve.llm,
answering differently from its base."""

from __future__ import annotations

import asyncio

import pytest

from pbt_ray.config import load_config
from pbt_ray.serving.client import ChatClient

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Who wrote Paradise Lost? Answer in one sentence."}]


def make_trained_run(root):
    """A `pbt train`-shaped run directory whose adapter has random (non-zero) LoRA weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pbt_ray.training.data import resolve_model_path

    base = resolve_model_path("embedded")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    (adapter / "pbt_base_model.txt").write_text(base + "\n")
    return root


def ask(url: str, model: str) -> str:
    async def go() -> str:
        client = ChatClient(url, timeout_s=300)
        try:
            return (await client.chat(model, PROMPT, temperature=0.0, max_tokens=24)).text
        finally:
            await client.close()

    return asyncio.run(go())


def test_serve_a_trained_run_next_to_its_base(debater_app, tmp_path):
    from ray import serve

    from pbt_ray.serving.app import deploy, wait_ready
    from pbt_ray.serving.trained import MERGED_MARKER, TRAINED_ID, merged_model, with_trained_model

    base_cfg, base_url = debater_app
    run = make_trained_run(tmp_path / "run")
    merged = merged_model(run, log=lambda *_: None)
    assert (merged / MERGED_MARKER).is_file() and (merged / "config.json").is_file()
    stamp = (merged / MERGED_MARKER).stat().st_mtime
    assert merged_model(run, log=lambda *_: None) == merged and (merged / MERGED_MARKER).stat().st_mtime == stamp

    # Only the trained model in this app (the session app already serves the base), on its own route.
    cfg = load_config("local", ["serve.app_name=pbt-trained-test", "serve.route_prefix=/trained",
                                f"serve.port={base_cfg.serve.port}", "serve.models.0.cpu_kv_cache_gib=1"])
    cfg = with_trained_model(cfg, merged)
    serve_cfg = cfg.serve.model_copy(update={"models": [m for m in cfg.serve.models if m.id == TRAINED_ID],
                                             "roles": {r: TRAINED_ID for r in cfg.serve.roles}})
    cfg = cfg.model_copy(update={"serve": serve_cfg})
    deploy(cfg, log=lambda *_: None)
    try:
        url = wait_ready(cfg, log=lambda *_: None)
        trained_answer = ask(url, "trained")  # the role alias of the trained model
        base_answer = ask(base_url, "smollm2-135m-instruct")
        assert trained_answer.strip() and base_answer.strip()
        assert trained_answer != base_answer  # greedy on both: the merged adapter changes what the model says
    finally:
        serve.delete("pbt-trained-test")
