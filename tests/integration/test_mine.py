"""`pbt mine` as a user runs it (Ray Data over tree files), and TRL's DPOTrainer on its output."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from tests.unit.pbt_fixtures import fixture_tree, random_tree, write_ours

pytestmark = pytest.mark.integration


def test_pbt_mine_cli_then_dpo_steps_on_the_pairs(tmp_path):
    trees = [random_tree(random.Random(s), s) for s in range(80)] + [fixture_tree("F1"), fixture_tree("F2")]
    (tmp_path / "trees").mkdir()
    for i in range(4):  # several files: one Ray Data task each
        write_ours(tmp_path / "trees" / f"part-{i}.parquet", trees[i::4])
    out = tmp_path / "prefs"
    proc = subprocess.run(
        [sys.executable, "-m", "pbt_ray", "mine", "--trees", str(tmp_path), "--out", str(out), "--balance", "balanced",
         "mine.split_fractions=[0.8,0.2,0.0]"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pairs by type:" in proc.stdout and "no pair, by reason:" in proc.stdout
    stats = json.loads((out / "mine_stats.json").read_text())
    assert stats["files"] == 4 and stats["trees"] == len(trees)
    assert stats["selected"]["train"]["resist"] == stats["selected"]["train"]["accept"] > 0

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from pbt_ray.models import prepare_embedded_model

    data = load_dataset("parquet", data_files={"train": str(out / "pairs" / "train.parquet"),
                                               "dev": str(out / "pairs" / "dev.parquet")})
    assert Counter(data["train"]["type"]) == Counter(resist=stats["selected"]["train"]["resist"],
                                                     accept=stats["selected"]["train"]["accept"])
    assert not set(data["train"]["question_id"]) & set(data["dev"]["question_id"])
    model_dir = prepare_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The model's chat template is applied by TRL at training time; the pairs carry plain messages.
    rendered = tokenizer.apply_chat_template(data["train"][0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in rendered
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4,
                     logging_steps=1, report_to=[], use_cpu=True, max_length=512, save_strategy="no")
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=data["train"],
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)


def test_stance_check_against_the_served_extractor(debater_app, tmp_path):
    """The optional stance check asks the real extractor about every reply; each pair is kept or counted."""
    from pbt_ray.config import load_config
    from pbt_ray.preferences.mining import mine
    from pbt_ray.preferences.stance import endpoint_stance_check

    base, url = debater_app
    (tmp_path / "trees").mkdir()
    write_ours(tmp_path / "trees" / "part-0.parquet", [fixture_tree("F1"), fixture_tree("F2")])
    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=stance", "mine.balance=none",
                                "mine.split_fractions=[1.0,0.0,0.0]", f"serve.port={base.serve.port}"])
    stats = mine(cfg, trees=str(tmp_path), stance_check=endpoint_stance_check(url, "extractor"), use_ray=False,
                 log=lambda *_: None)
    kept = sum(stats["pairs_by_type"].values())
    checked = stats["drops_by_reason"].get("stance_unconfirmed", 0) + stats["drops_by_reason"].get("stance_unreadable", 0)
    assert kept + checked == 12  # 6 resist (F1) + 6 accept (F2), each confirmed or dropped with a reason
