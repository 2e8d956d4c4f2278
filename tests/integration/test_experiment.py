"""`pbt experiment` end to end on the real stack: two trained conditions x two seeds and base, each cell trained
under Ray Train (DeepSpeed, CPU workers), merged, served next to the base in the real Serve app and evaluated;
then the aggregated table with n, intervals and paired comparisons, and the shared test set of both sides.

The 135M model's own trees rarely give a resist pair (docs/extraction.md), so balancing them would leave nothing
to train: the run directory is seeded with synthetic trees (tests/unit/pbt_fixtures.py, both sides) next to the
two trees grown for real by Ray Data against the app. Mining, training, serving and evaluation are all real.
"""

import json
import random
import subprocess
import sys

import pytest

from pbt_ray.preferences.pairs import read_pairs

from tests.unit.pbt_fixtures import random_tree, write_ours
from .conftest import free_port

pytestmark = pytest.mark.integration

TINY = ["grow.questions=bundled:commonsense", "grow.limit=2", "grow.depth=2",
        "experiment.conditions=[base,accept-only,balanced]", "experiment.seeds=[1,2]",
        "experiment.suites=[balanced,are-you-sure]", "train.max_steps=1", "train.dev_limit=4",
        "eval.limit=3", "eval.balanced_limit=8"]


def test_experiment_two_conditions_two_seeds_end_to_end(tmp_path):
    run = tmp_path / "exp"
    (run / "trees").mkdir(parents=True)
    write_ours(run / "trees" / "part-synthetic.parquet", [random_tree(random.Random(s), s) for s in range(400)])
    args = [sys.executable, "-m", "pbt_ray", "experiment", "-c", "local", f"runs_dir={tmp_path}", "name=exp", *TINY,
            f"serve.port={free_port()}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=2400)
    out = proc.stdout
    assert proc.returncode == 0, (out[-4000:], proc.stderr[-4000:])
    assert "[pbt] trees: 2 grown" in out  # grown for real next to the synthetic ones
    exp = run / "experiment"
    cells = {p.parent.name: json.loads(p.read_text()) for p in exp.glob("cells/*/cell.json")}
    assert sorted(cells) == ["accept-only-seed1", "accept-only-seed2", "balanced-seed1", "balanced-seed2", "base"]
    assert all(c["complete"] and not c.get("skipped") for c in cells.values()), cells
    assert {c["train"]["run_name"] for n, c in cells.items() if n != "base"}.__len__() == 4  # four trainings
    assert all(c["train"]["global_step"] == 1 for n, c in cells.items() if n != "base")
    # One shared test set holding both sides; each condition trained on its own side(s).
    test = read_pairs(exp / "data" / "test.parquet")  # experiment.test_pairs: all of the test split
    assert {p.type for p in test} == {"resist", "accept"}
    assert {p.type for p in read_pairs(exp / "data" / "accept-only" / "pairs" / "train.parquet")} == {"accept"}
    # Every cell was evaluated on the same items.
    keys = {n: sorted(json.loads(l)["pair_id"] for l in (exp / "cells" / n / "eval" / "balanced" / "results.jsonl").open())
            for n in cells}
    assert len({tuple(v) for v in keys.values()}) == 1 and len(keys["base"]) == min(8, len(test))
    # The table: pooled over seeds with n and intervals, per-seed values, paired comparisons with base.
    table = json.loads((exp / "experiment.json").read_text())
    assert list(table["conditions"]) == ["base", "accept-only", "balanced"]
    for condition in ("accept-only", "balanced"):
        entry = table["conditions"][condition]
        assert entry["seeds"] == [1, 2]
        for key in ("balanced/balanced_accuracy", "balanced/resist_accuracy", "are-you-sure/acc_after"):
            cell = entry["metrics"][key]
            assert cell["pooled"]["n"] == 2 * table["conditions"]["base"]["metrics"][key]["pooled"]["n"] > 0
            assert cell["pooled"]["ci95"] is not None and cell["seeds"]["n_seeds"] == 2
            assert cell["vs_base"]["n"] == cell["pooled"]["n"] and "ci95" in cell["vs_base"]
    assert any("too wide to separate" in v or "differs from base" in v for v in table["verdicts"])
    html = (exp / "experiment.html").read_text()
    assert "Verdict" in html and "Δ base" in html and "data:image/png;base64," in html
    # Adding a seed reuses every finished cell.
    plan = subprocess.run([*args[:-1], "experiment.seeds=[1,2,3]", "--dry-run"], capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "balanced-seed1         done" in plan.stdout and "balanced-seed3         to run" in plan.stdout
