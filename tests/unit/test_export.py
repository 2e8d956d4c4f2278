"""`pbt export`: the adapter with its base recorded as a hub id (never a cache path) and a model card holding the
evaluation table; the pairs with a data set card; loaded back with PEFT and datasets. (Uploading to the Hub
needs the network and a token: not tested here.)"""

from __future__ import annotations

import json
import shutil

import pytest

from pbt_ray.cli import main
from pbt_ray.export import EMBEDDED_HUB_ID

from .test_report import planted_run


def trained_run(run):
    """A run directory as `pbt run -c local` leaves it: run.yaml, a real LoRA adapter on the embedded model, pairs,
    a report."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pbt_ray.config import dump_config, load_config
    from pbt_ray.evaluation.report import write_report
    from pbt_ray.training.data import resolve_model_path

    planted_run(run)
    shutil.rmtree(run / "round-2")
    cfg = load_config("local", [f"runs_dir={run.parent}", f"name={run.name}"])
    (run / "run.yaml").write_text(dump_config(cfg))
    (run / "runs.jsonl").write_text(json.dumps({"command": "run", "argv": ["run", "-c", "local"],
                                                "packages": {"pbt-ray": "0.1.0"}}) + "\n"
                                    + json.dumps({"command": "report", "argv": ["report"]}) + "\n"
                                    + '{"command": "ru')  # a later command, and a line a crash cut short
    base = resolve_model_path("embedded")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(run / "adapter")  # records the cache path as its base, as training does
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "adapter")
    (run / "adapter" / "pbt_base_model.txt").write_text(base + "\n")
    pairs = run / "preferences" / "pairs"
    pairs.mkdir(parents=True)
    from pbt_ray.preferences.canonical import mine_tree
    from pbt_ray.preferences.pairs import write_pairs
    from tests.unit.pbt_fixtures import fixture_tree

    write_pairs(mine_tree(fixture_tree("F1")).pairs + mine_tree(fixture_tree("F2")).pairs, pairs / "train.parquet")
    write_report(run, log=lambda *_: None)
    return run, base


def test_export_writes_a_hub_ready_adapter_and_dataset_that_load_back(tmp_path, capsys):
    import torch
    from datasets import load_dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, base = trained_run(tmp_path / "run")
    out = tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_HUB_ID  # never the cache path it trained from
    assert not (out / "adapter" / "pbt_base_model.txt").exists()
    card = (out / "adapter" / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {EMBEDDED_HUB_ID}\nlibrary_name: peft")
    assert "| are-you-sure | accuracy before | 0.500 [0.188, 0.812] n=6 |" in card  # the table, with intervals and n
    assert "`pbt run -c local`" in card and "Q4_1 GGUF" in card

    # The adapter loads with PEFT on the base the card names (offline here: its local build, `pbt model prepare`).
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out / "adapter"))
    assert any("lora_A" in name for name, _ in tuned.named_parameters())
    with torch.no_grad():
        assert tuned(torch.tensor([[1, 2, 3]])).logits.shape[-1] > 1000

    data = load_dataset(str(out / "dataset"))  # the data set card's configs name the split files
    assert set(data) == {"train"} and {"chosen", "rejected", "type"} <= set(data["train"].column_names)
    assert "config_name: default" in (out / "dataset" / "README.md").read_text()


def test_export_refuses_what_it_cannot_write_and_writes_nothing(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert "no run.yaml: not a pbt run directory" in capsys.readouterr().err
    run, _ = trained_run(tmp_path / "run")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert main(["export", str(run), str(tmp_path / "busy")]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    shutil.rmtree(run / "adapter")
    assert main(["export", str(run), str(tmp_path / "out")]) == 1
    assert "has no trained adapter" in capsys.readouterr().err and not (tmp_path / "out").exists()
