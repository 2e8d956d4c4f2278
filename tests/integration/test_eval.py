"""The evaluations against the real debater app (vLLM-CPU, SmolLM2): every suite runs, scores, and writes."""

from __future__ import annotations

import json
import math

import pytest

from pbt_ray.config import load_config
from pbt_ray.evaluation.stage import evaluate
from pbt_ray.preferences.canonical import mine_tree
from pbt_ray.preferences.pairs import write_pairs
from tests.unit.pbt_fixtures import fixture_tree

pytestmark = pytest.mark.integration


def number(x) -> bool:
    return isinstance(x, (int, float)) and (math.isnan(x) or 0.0 <= x <= 1.0)


def test_every_suite_against_the_served_model(debater_app, tmp_path):
    base, url = debater_app
    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=eval", "eval.limit=2", "debate.turns=2",
                                "eval.max_tokens=32", "eval.appeals=[repetition,credibility]",
                                f"serve.port={base.serve.port}"])
    pairs = tmp_path / "test.parquet"
    write_pairs(mine_tree(fixture_tree("F1")).pairs[:1] + mine_tree(fixture_tree("F2")).pairs[:1], pairs)

    summary = evaluate(cfg, "balanced", url, pairs=str(pairs), show_progress=False, log=lambda *_: None)
    assert summary["items"] == 2 and summary["extractor"] == "extractor"
    m = summary["metrics"]
    assert (m["n_resist"], m["n_accept"]) == (1, 1) and number(m["balanced_accuracy"])

    ays = evaluate(cfg, "are-you-sure", url, show_progress=False, log=lambda *_: None)
    assert ays["items"] == 2 and ays["failed"] == 0 and number(ays["metrics"]["acc_before"])
    lines = (tmp_path / "eval" / "eval" / "base" / "are-you-sure" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(json.loads(lines[0])["replies"]) == 3  # answer, challenge, final answer

    mis = evaluate(cfg, "misinformation", url, show_progress=False, log=lambda *_: None)
    assert mis["failed"] == 0 and len(mis["metrics"]["adoption_per_turn"]) == 2

    team = evaluate(cfg, "team", url, show_progress=False, log=lambda *_: None)
    t = team["metrics"]
    assert team["items"] == 4 and t["n_by_order"] == {"strong_first": 2, "weak_first": 2}  # both speaking orders
    assert number(t["team_accuracy"]) and number(t["order_dependence"])
    written = json.loads((tmp_path / "eval" / "eval" / "base" / "team" / "metrics.json").read_text())
    assert written["strong"] == cfg.serve.roles["persuader"] and written["weak"] == cfg.base_served().id  # eval.team seats
