"""The recipe runner (pbt_ray/recipes.py) on a toy recipe whose stages write files: stages run in order and are
recorded; a rerun skips them; a config change reruns the stage that reads it and what follows; round 2 reruns when
round 1's model changes; --from and --dry-run; and the pieces the red-teaming recipe adds to the platform
(recipe roles, SFT-only training config, the generic tables report)."""

import json
import sys
import types
from contextlib import nullcontext

import pytest

from pbt_ray import recipes
from pbt_ray.config import ConfigError, load_config
from pbt_ray.evaluation.tables import format_cell, write_tables_report
from pbt_ray.recipes import Recipe, RecipeError, run_recipe
from pbt_ray.stages import Stage, files_digest


def toy(ran: list):
    stages = (Stage("make", config=("redteam.rewrites",), writes=("made.txt",)),
              Stage("train", reads=("make",), config=("redteam.judge_sft_steps",), writes=("model.txt",)),
              Stage("report", reads=("train",), writes=("report.txt",)))

    def run_stage(step, name):
        ran.append((step.k, name))
        step.dir.mkdir(parents=True, exist_ok=True)
        text = f"{name} {step.cfg.redteam.rewrites} {step.cfg.redteam.judge_sft_steps}"
        (step.dir / f"{name}.txt").write_text(text)
        return {"wrote": name}

    return Recipe("toy", stages, run_stage, lambda step, name: files_digest([step.dir / f"{name}.txt"]),
                  serving=lambda step: step.cfg, serves=frozenset())


@pytest.fixture
def no_cluster(monkeypatch):
    # The runner's edges (the in-process cluster, the trackers) are Ray's; the logic under test is not.
    fake = types.ModuleType("pbt_ray.runtime")
    fake.ray_cluster = lambda cfg, log=print: nullcontext()
    monkeypatch.setitem(sys.modules, "pbt_ray.runtime", fake)


def cfg_of(tmp_path, *overrides):
    return load_config("redteam-local", [f"runs_dir={tmp_path}", *overrides])


def test_stages_run_in_order_are_recorded_and_skipped_on_a_rerun(tmp_path, no_cluster):
    ran = []
    cfg = cfg_of(tmp_path)
    assert run_recipe(cfg, toy(ran), log=lambda *_: None) == 0
    assert ran == [(1, "make"), (1, "train"), (1, "report"), (2, "make"), (2, "train"), (2, "report")]
    state = json.loads((cfg.run_dir / "loop_state.json").read_text())["stages"]
    assert list(state) == ["make", "train", "report"] and state["make"]["info"] == {"wrote": "make"}
    assert (cfg.run_dir / "round-2" / "loop_state.json").is_file()
    ran.clear()
    assert run_recipe(cfg, toy(ran), log=lambda *_: None) == 0 and ran == []


def test_a_config_change_reruns_its_stage_and_what_follows_in_every_round(tmp_path, no_cluster):
    ran = []
    run_recipe(cfg_of(tmp_path), toy(ran), log=lambda *_: None)
    ran.clear()
    lines = []
    run_recipe(cfg_of(tmp_path, "redteam.judge_sft_steps=7"), toy(ran), log=lines.append)
    assert "[pbt] train is stale (config changed: redteam.judge_sft_steps): it runs again" in "\n".join(lines)
    # round 1's train changed its output, so round 2 starts over from it
    assert ran == [(1, "train"), (1, "report"), (2, "make"), (2, "train"), (2, "report")]


def test_from_and_dry_run(tmp_path, no_cluster):
    ran, lines = [], []
    cfg = cfg_of(tmp_path)
    run_recipe(cfg, toy(ran), log=lambda *_: None)
    ran.clear()
    assert run_recipe(cfg, toy(ran), log=lines.append, from_stage="report", from_round=2, dry_run=True) == 0
    assert ran == [] and "report   to run  asked to rerun (--from)" in "\n".join(lines)
    run_recipe(cfg, toy(ran), log=lambda *_: None, from_stage="report", from_round=2)
    assert ran == [(2, "report")]
    with pytest.raises(RecipeError, match="--from grow: not a stage of recipe toy; stages are make, train, report"):
        run_recipe(cfg, toy(ran), from_stage="grow")
    with pytest.raises(RecipeError, match="--round 3"):
        run_recipe(cfg, toy(ran), from_stage="make", from_round=3)


def test_an_incomplete_stage_stops_the_round_and_reruns(tmp_path, no_cluster):
    ran = []
    recipe = toy(ran)
    flaky = Recipe(recipe.name, recipe.stages, lambda step, name: {"complete": False} if name == "train" and
                   len(ran) < 3 and not ran.append((step.k, name)) else recipe.run_stage(step, name),
                   recipe.output, recipe.serving)
    assert run_recipe(cfg_of(tmp_path), flaky, log=lambda *_: None) == 1
    assert ran[-1] == (1, "train")
    ran.clear()
    assert run_recipe(cfg_of(tmp_path), toy(ran), log=lambda *_: None) == 0
    assert ran[0] == (1, "train")  # make was recorded complete, train was not


def test_recipe_selects_its_roles_and_pbt_keeps_its_own():
    assert load_config("local").recipe == "pbt" and recipes.recipe_of(load_config("local")) is None
    rt = load_config("redteam-local")
    assert recipes.recipe_of(rt).name == "redteam" and {"attacker", "judge"} <= set(rt.serve.roles)
    with pytest.raises(ConfigError, match=r"roles must name a model for \['attacker', 'judge'\] \(recipe redteam\)"):
        load_config("local", ["recipe=redteam"])
    with pytest.raises(ConfigError, match="unknown field|recipe"):
        load_config("local", ["recipe=advisorx"])


def test_sft_only_training_is_a_config_and_nothing_is_refused():
    cfg = load_config("local", ["train.dpo=false", "train.sft=true"])
    assert not cfg.train.dpo and cfg.train.sft
    with pytest.raises(ConfigError, match="train.sft and train.dpo are both off"):
        load_config("local", ["train.dpo=false", "train.sft=false"])


def test_sft_only_prepare_checks_the_records(tmp_path):
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import prepare, sft_file

    cfg = load_config("local", [f"runs_dir={tmp_path}", "train.dpo=false", "train.sft=true"])
    assert sft_file(tmp_path / "preferences" / "pairs") == tmp_path / "preferences" / "sft" / "train.parquet"
    assert sft_file(tmp_path / "data") == tmp_path / "data" / "sft" / "train.parquet"
    with pytest.raises(TrainDataError, match="no SFT records .*sft/train.parquet; train.dpo is off"):
        prepare(cfg, str(tmp_path / "data"), log=lambda *_: None)


def test_tables_report_cells_and_html(tmp_path):
    assert format_cell({"value": 0.5, "ci95": [0.25, 0.75], "n": 8}) == "0.500 [0.250, 0.750] n=8"
    assert format_cell({"value": None, "ci95": None, "n": 0}) == "n/a (n=0)"
    assert format_cell({"value": 1.0, "ci95": None, "n": 1}) == "1.000 (no interval) n=1"
    out = write_tables_report(tmp_path, "T", [{"title": "Judge", "columns": ["accuracy"], "rows": [
        {"label": "base", "cells": {"accuracy": {"value": 0.5, "ci95": [0.3, 0.7], "n": 20}}}]}], ["a note"])
    html = out.read_text()
    assert "0.500 [0.300, 0.700] n=20" in html and "data:image/png;base64," in html and "a note" in html
    assert json.loads((tmp_path / "report" / "report.json").read_text())["sections"][0]["title"] == "Judge"
