"""Serving a trained model: adapter lookup, merging once, the app config with the trained model, LoRA paths."""

from __future__ import annotations

import json

import pytest

from pbt_ray.config import ConfigError, load_config
from pbt_ray.models import ModelError
from pbt_ray.serving.app import llm_config_dict
from pbt_ray.serving.trained import TRAINED_ID, adapter_base, find_adapter, with_trained_model


def make_adapter(root, base="some/base"):
    adapter = root / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "peft/base"}))
    (adapter / "pbt_base_model.txt").write_text(base + "\n")
    return adapter


def test_adapter_lookup(tmp_path):
    with pytest.raises(ModelError, match="the output of `pbt train`"):
        find_adapter(tmp_path)
    adapter = make_adapter(tmp_path / "run")
    assert find_adapter(tmp_path / "run") == adapter == find_adapter(adapter)
    assert adapter_base(adapter) == "some/base"
    (adapter / "pbt_base_model.txt").unlink()
    assert adapter_base(adapter) == "peft/base"


def test_trained_model_joins_the_app_with_its_role(tmp_path):
    merged = tmp_path / "merged"
    cfg = with_trained_model(load_config("local"), merged)
    ids = [m.id for m in cfg.serve.models]
    assert ids == ["smollm2-135m-instruct", TRAINED_ID] and cfg.serve.roles["trained"] == TRAINED_ID
    trained = cfg.serve.models[1]
    assert trained.source == str(merged) and trained.dtype == "float32" and trained.accelerator == "cpu"
    again = with_trained_model(cfg, merged)
    assert [m.id for m in again.serve.models] == ids  # idempotent


def test_lora_multiplexing_needs_object_storage_and_validates_with_ray():
    from ray.serve.llm import LLMConfig

    with pytest.raises(ConfigError, match="lora_path must be an s3://"):
        load_config("gpu-paper", ["serve.models.0.lora_path=/tmp/adapters"])
    cfg = load_config("gpu-paper", ["serve.models.0.lora_path=s3://bucket/adapters/", "serve.models.0.max_lora_rank=32"])
    config = llm_config_dict(cfg.serve.models[0], "meta-llama/Llama-3.1-8B-Instruct", {})
    assert config["lora_config"] == {"dynamic_lora_loading_path": "s3://bucket/adapters", "max_num_adapters_per_replica": 4}
    assert config["engine_kwargs"]["enable_lora"] and config["engine_kwargs"]["max_lora_rank"] == 32
    LLMConfig.model_validate(config)  # ray.serve.llm accepts it
