"""The memory planner's formulas: parameter counts, DeepSpeed's own estimators, verdicts and suggestions."""

from __future__ import annotations

import dataclasses

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from pbt_ray.cli import main
from pbt_ray.training.plan import KNOWN_MODELS, Setting, cheapest, model_spec, model_states, plan


@pytest.mark.parametrize("name,billions", [("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.55), ("mistral-7b", 7.24),
                                           ("llama-3.1-405b", 405.85)])
def test_parameter_counts_match_the_published_sizes(name, billions):
    assert abs(KNOWN_MODELS[name].parameters / 1e9 - billions) / billions < 0.005


def test_embedded_model_counts_match_the_real_modules():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pbt_ray.training.data import resolve_model_path

    path = resolve_model_path("embedded")
    spec = model_spec(path)
    assert spec == dataclasses.replace(KNOWN_MODELS["smollm2-135m"], name=spec.name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert spec.parameters == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]))
    trainable, _ = peft.get_nb_trainable_parameters()
    assert spec.lora_parameters(["q_proj", "k_proj", "v_proj", "down_proj"], 16) == trainable


@pytest.mark.parametrize("gpn,nodes", [(8, 1), (8, 2), (4, 3)])
def test_full_finetuning_model_states_equal_deepspeeds_estimators(gpn, nodes):
    spec = KNOWN_MODELS["llama-3.1-70b"]
    p, largest = spec.parameters, spec.largest_layer
    base = Setting(gpus_per_node=gpn, nodes=nodes, lora=False)
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(p, gpn, nodes, cpu_offload=offload, additional_buffer_factor=1)
        ours = model_states(p, p, dataclasses.replace(base, zero_stage=2, offload_optimizer=offload), largest)
        assert ours == pytest.approx((gpu, cpu), rel=1e-6)
    for opt, params in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(p, largest, gpn, nodes, cpu_offload=opt,
                                                            cpu_offload_params=params, zero_init=True,
                                                            additional_buffer_factor=1)
        setting = dataclasses.replace(base, zero_stage=3, offload_optimizer=opt, offload_params=params)
        assert model_states(p, p, setting, largest) == pytest.approx((gpu, cpu), rel=1e-6)


def test_lora_trains_a_tiny_fraction_and_partitioning_divides_the_states():
    spec = KNOWN_MODELS["llama-3.1-70b"]
    lora = spec.lora_parameters(["q_proj", "k_proj", "v_proj"], 16)
    assert lora == 80 * 16 * ((8192 + 8192) + 2 * (8192 + 1024))
    z3 = plan(spec, Setting(nodes=2, zero_stage=3, micro_batch=5))
    z3_one = plan(spec, Setting(nodes=1, zero_stage=3, micro_batch=5))
    assert z3.gpu["model_states"] < z3_one.gpu["model_states"]
    assert z3.gpu["activations"] == z3_one.gpu["activations"]  # activations do not shard with data parallelism
    no_ckpt = plan(spec, Setting(nodes=2, zero_stage=3, micro_batch=5, gradient_checkpointing=False))
    assert no_ckpt.gpu["activations"] > 10 * z3.gpu["activations"]
    with pytest.raises(ValueError, match="out_proj"):
        spec.lora_parameters(["q_proj", "out_proj"], 16)


def test_70b_verdicts_and_the_cheapest_setting(capsys):
    spec = KNOWN_MODELS["llama-3.1-70b"]
    assert plan(spec, Setting(nodes=2, zero_stage=3, micro_batch=5)).fits
    z2 = plan(spec, Setting(nodes=1, zero_stage=2, micro_batch=5))
    assert not z2.fits and z2.gpu["model_states"] > 80  # a whole bf16 copy of 70B per GPU
    best = cheapest(spec, Setting(nodes=1, zero_stage=2, micro_batch=5))
    assert best is not None and (best.setting.nodes, best.setting.zero_stage) == (1, 3)
    assert main(["plan-train", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--nodes", "2", "--zero", "3",
                 "--micro-batch", "5"]) == 0
    assert "verdict: FITS" in capsys.readouterr().out
    assert main(["plan-train", "--model", "70b", "--zero", "2", "--micro-batch", "5"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "cheapest setting that fits: 1 x 8 GPUs, ZeRO-3" in out
    assert main(["plan-train", "--model", "gpt-17"]) == 2
