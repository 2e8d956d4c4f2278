"""gpu-paper and gpu-70b are the paper's settings (issue 13; docs/fidelity.md): base = the trained model's base,
the paper's batches and warm-up, the best adapter exported, the 70B served with the tensor parallel it needs,
team seats. Pure: no Ray, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pbt_ray.config import ConfigError, TrainConfig, dump_config, load_config, preset_names
from pbt_ray.evaluation.stage import held_out_questions, role_models
from pbt_ray.loop import seat_model_id, trained_seats
from pbt_ray.serving.memory import ServingMemoryError, check_serving_memory, plan_model, spec_for
from pbt_ray.serving.trained import TRAINED_ID, TRAINED_ROLE, with_trained_model
from pbt_ray.training.launch import TrainError, check_warmup, optimizer_steps
from pbt_ray.training.worker import select_adapter


@pytest.mark.parametrize("preset", [p for p in preset_names() if load_config(p).recipe == "pbt"])
def test_base_evaluated_is_the_trained_models_base_in_every_preset(preset):
    cfg = load_config(preset)
    base = cfg.base_served()
    assert base.source == cfg.train.base_model
    assert role_models(cfg, endpoint_is_ours=True)["model"] == base.id
    trained = with_trained_model(cfg, Path("/tmp/merged")).serve.model(TRAINED_ID)
    for field in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "dtype", "accelerator"):
        assert getattr(trained, field) == getattr(base, field), field


def test_gpu_paper_base_is_llama_not_the_mistral_persuadee():
    cfg = load_config("gpu-paper")
    assert cfg.serve.roles["persuadee"] == "mistral-7b-instruct-v0.2"  # the trees' persuadee, as the paper
    assert role_models(cfg, True)["model"] == "llama-3.1-8b-instruct"  # ... but Llama is what is trained


def test_a_base_model_that_is_not_served_is_refused():
    with pytest.raises(ConfigError, match="train.base_model meta-llama/Llama-3.1-70B-Instruct is not served"):
        load_config("gpu-paper", ["train.base_model=meta-llama/Llama-3.1-70B-Instruct"])
    cfg = load_config("gpu-paper", ["train.base_model=/models/llama-8b", "train.served_as=llama-3.1-8b-instruct"])
    assert cfg.base_served().id == "llama-3.1-8b-instruct"


def test_paper_batches_and_sft_are_configured():
    paper = load_config("gpu-paper").train
    assert paper.sft and paper.sft_max_steps == 240 and paper.global_batch("sft") == 80
    assert paper.global_batch() == 35 and paper.warmup_steps == 100 and paper.epochs == 5
    assert paper.select == "best_dev_balanced"
    big = load_config("gpu-70b").train
    assert big.global_batch() == 35 and big.global_batch("sft") == 78 and big.epochs == 2
    # The reference code's 8 x 7 x 5 = 280 pairs per step cannot be configured by accident.
    with pytest.raises(ConfigError, match="batch_size 35 is not a multiple of per_device_batch_size 5 x num_workers 8"):
        load_config("gpu-paper", ["train.num_workers=8"])
    with pytest.raises(ConfigError, match="gradient_accumulation 5 contradicts batch_size 35"):
        load_config("gpu-paper", ["train.gradient_accumulation=5"])
    assert TrainConfig().global_batch() == 35 and TrainConfig().accumulation() == 5  # defaults: one process


def test_warmup_longer_than_training_is_refused():
    tcfg = load_config("gpu-paper").train
    # 2240 pairs / 35 per step = 64 steps per epoch, x 5 epochs = 320 steps > 100 warm-up
    assert optimizer_steps(tcfg, 2240) == 320
    assert check_warmup(tcfg, 2240) == 320
    # the reference's mistake: 64 steps in all against 100 warm-up steps
    short = tcfg.model_copy(update={"epochs": 1.0})
    with pytest.raises(TrainError, match="warmup_steps 100 is not below the 64 DPO optimizer steps"):
        check_warmup(short, 2240)


def test_best_adapter_by_dev_balanced_accuracy_is_exported(tmp_path):
    final, best = tmp_path / "final", tmp_path / "best"
    final.mkdir(), best.mkdir()
    (final / "adapter_model.safetensors").write_text("last")
    (best / "adapter_model.safetensors").write_text("best")
    (best / "adapter_config.json").write_text("{}")
    chosen = select_adapter(final, {"dir": str(best), "step": 12, "eval_balanced_accuracy": 0.61}, "best_dev_balanced")
    assert (final / "adapter_model.safetensors").read_text() == "best"
    assert chosen == {"selected": "best_dev_balanced", "selected_step": 12, "selected_eval_balanced_accuracy": 0.61}
    (final / "adapter_model.safetensors").write_text("last")
    assert select_adapter(final, None, "best_dev_balanced")["selected"] == "last"
    assert select_adapter(final, {"dir": str(best), "step": 1, "eval_balanced_accuracy": 1.0}, "last")["selected"] == "last"
    assert (final / "adapter_model.safetensors").read_text() == "last"


def test_trained_70b_is_served_with_its_bases_tensor_parallel_and_tp1_is_refused():
    cfg = load_config("gpu-70b")
    trained = with_trained_model(cfg, Path("/tmp/merged")).serve.model(TRAINED_ID)
    assert trained.tensor_parallel_size == 4  # the 70B's, not the first model's (8B, tp 1)
    assert all("FITS" in line for line in check_serving_memory(cfg, with_trained=True))
    with pytest.raises(ServingMemoryError, match=r"llama-3.1-70b-instruct .*tensor parallel 1.*DOES NOT FIT; set "
                                                 r"tensor_parallel_size: 2[\s\S]*pbt-trained .*DOES NOT FIT"):
        check_serving_memory(load_config("gpu-70b", ["serve.models.2.tensor_parallel_size=1"]), with_trained=True)
    # 141 GB of bf16 weights on an 80 GB GPU
    seventy = cfg.serve.model("llama-3.1-70b-instruct")
    assert plan_model(seventy, spec_for(seventy), 1).weights_gib > 80


def test_team_seats_base_and_trained():
    paper = load_config("gpu-paper")
    assert role_models(paper, True)["strong"] == "mistral-7b-instruct-v0.2"
    assert role_models(paper, True)["weak"] == "llama-3.1-8b-instruct"
    big = load_config("gpu-70b")
    assert (big.seat_model("strong"), big.seat_model("weak")) == ("llama-3.1-70b-instruct", "llama-3.1-8b-instruct")
    tcfg = with_trained_model(big, Path("/tmp/merged"))
    team = trained_seats(big, tcfg)
    assert (team.strong.model, team.weak.model) == (TRAINED_ROLE, "llama-3.1-8b-instruct")
    both = load_config("gpu-70b", ["eval.team.weak.trained=runs/gpu-paper"])
    team = trained_seats(both, with_trained_model(both, Path("/tmp/merged")))
    assert (team.strong.model, team.weak.model) == (TRAINED_ROLE, seat_model_id("weak"))
    with pytest.raises(ConfigError, match="eval.team.weak.trained is 'this-run' but the seat's model"):
        load_config("gpu-70b", ["eval.team.weak.trained=this-run"])  # the 8B seat cannot hold the trained 70B
    with pytest.raises(ConfigError, match="eval.team.strong.model 'llama-70b' is not a served model id or role"):
        load_config("gpu-70b", ["eval.team.strong.model=llama-70b"])


def test_questions_from_another_split_are_all_held_out():
    cfg = load_config("local", ["grow.questions=bundled:commonsense", "eval.questions=bundled:trivia", "eval.limit=null"])
    test, every = held_out_questions(cfg)
    assert len(test) == len(every)  # validation-like: no tree was grown from them
    same = load_config("local", ["grow.questions=bundled:trivia", "eval.limit=null"])
    test, every = held_out_questions(same)
    assert 0 < len(test) < len(every)  # the hashed test split of the training questions


def test_a_small_demo_evaluates_on_every_question_it_did_not_grow():
    from pbt_ray.preferences.datasets import split_of

    cfg = load_config("local", ["grow.questions=bundled:commonsense", "grow.limit=32", "eval.limit=null",
                                "eval.held_out=not-grown-or-test"])
    test, every = held_out_questions(cfg)
    grown = every[:32]
    trained_on = {q.id for q in grown if split_of(q.id, cfg.mine.seed, tuple(cfg.mine.split_fractions)) != "test"}
    assert {q.id for q in test} == {q.id for q in every} - trained_on
    assert len(test) >= len(every) - 32  # the 68 questions no tree was grown from, and the grown test split


def test_pbt_config_shows_the_papers_values():
    shown = yaml.safe_load(dump_config(load_config("gpu-paper")))
    assert shown["grow"]["temperature"] == 0.7 and shown["grow"]["top_p"] == 1.0 and shown["grow"]["top_k"] == 0
    assert shown["grow"]["min_tokens"] == 8 and shown["grow"]["max_tokens"] == 80 and shown["grow"]["depth"] == 4
    assert shown["mine"]["stance_check"] is True and shown["mine"]["balance"] == "balanced"
    t = shown["train"]
    assert (t["sft"], t["sft_max_steps"], t["batch_size"], t["epochs"], t["learning_rate"], t["warmup_steps"]) == \
        (True, 240, 35, 5.0, 5e-4, 100)
    assert (t["lora_r"], t["lora_alpha"], t["lora_dropout"], t["lora_targets"], t["beta"]) == \
        (16, 32, 0.05, ["q_proj", "k_proj", "v_proj"], 0.1)
    e = shown["eval"]
    assert e["limit"] == 1000 and e["balanced_limit"] is None and e["balanced_temperature"] == 0.7
    assert e["questions"].endswith(":validation")
    assert json.dumps(shown)  # plain data
