"""The experiment's pure parts: cells, each condition's data (one shared test set of both sides), cell reuse,
and the aggregated table with intervals and paired comparisons."""

import json
import random

import pytest

from pbt_ray import experiment as X
from pbt_ray.config import load_config
from pbt_ray.evaluation.experiment_report import collect, table, write_experiment_report
from pbt_ray.preferences.mining import mine
from pbt_ray.preferences.pairs import ACCEPT, RESIST, read_pairs

from .pbt_fixtures import random_tree, write_ours


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    cfg = load_config("local", [f"runs_dir={root}", "name=run", "experiment.seeds=[1,2]"])
    (cfg.run_dir / "trees").mkdir(parents=True)
    write_ours(cfg.run_dir / "trees" / "part-a.parquet", [random_tree(random.Random(s), s) for s in range(300)])
    mine(cfg, trees=str(cfg.run_dir), out=str(cfg.run_dir / "preferences"), use_ray=False, log=lambda *_: None)
    return cfg


def test_cells_are_base_once_and_every_trained_condition_per_seed(run):
    assert [c.name for c in X.cells(run)] == ["base", "accept-only-seed1", "resist-only-seed1", "balanced-seed1",
                                             "accept-only-seed2", "resist-only-seed2", "balanced-seed2"]
    cc = X.cell_config(run, X.Cell("balanced", 2))
    assert cc.train.seed == 2 and cc.run_dir == run.run_dir / "experiment" / "cells" / "balanced-seed2"


def test_conditions_train_on_their_side_and_share_one_test_set_of_both_sides(run):
    data = X.condition_data(run, log=lambda *_: None)
    tests = {c: [p.pair_id for p in read_pairs(d["dir"] / "pairs" / "test.parquet")] for c, d in data.items()}
    assert tests["resist-only"] == tests["accept-only"] == tests["balanced"]  # the paper's balanced test split
    shared = read_pairs(X.shared_test(run))  # what every cell is evaluated on: all of the test split's pairs
    assert {p.type for p in shared} == {RESIST, ACCEPT} and set(tests["balanced"]) <= {p.pair_id for p in shared}
    import pyarrow.parquet as pq

    candidates = pq.read_table(run.run_dir / "preferences" / "candidates.parquet").to_pylist()
    test_split = {r["pair_id"] for r in candidates if r["type"] in (RESIST, ACCEPT) and r["split"] == "test"}
    assert {p.pair_id for p in shared} == test_split
    train = {c: read_pairs(d["dir"] / "pairs" / "train.parquet") for c, d in data.items()}
    n = len(train["resist-only"])
    assert n > 0 and {p.type for p in train["resist-only"]} == {RESIST} and {p.type for p in train["accept-only"]} == {ACCEPT}
    assert len(train["accept-only"]) == n and len(train["balanced"]) == 2 * n  # the paper's sizes: N, N, N + N


def test_a_finished_cell_is_reused_and_a_changed_setting_makes_it_stale(run):
    data = X.condition_data(run, log=lambda *_: None)
    cell = X.Cell("balanced", 1)
    fp = X.cell_fingerprint(run, cell, data, X._test_ids(run))
    X._record_cell(X.cell_config(run, cell), {"cell": cell.name, "condition": "balanced", "seed": 1,
                                             "fingerprint": fp, "complete": True})
    verdicts = dict((c.name, v) for c, v in X.plan(run, data))
    assert verdicts["balanced-seed1"] == "done" and verdicts["balanced-seed2"] == "to run"
    more = load_config("local", [f"runs_dir={run.runs_dir}", "name=run", "experiment.seeds=[1,2,3]"])
    assert dict((c.name, v) for c, v in X.plan(more, data))["balanced-seed1"] == "done"  # a new seed reuses it
    edited = load_config("local", [f"runs_dir={run.runs_dir}", "name=run", "train.epochs=5"])
    assert dict((c.name, v) for c, v in X.plan(edited, data))["balanced-seed1"] == "stale"
    assert dict((c.name, v) for c, v in X.plan(edited, data))["base"] == "to run"
    # the base cell does not train: a training setting never makes it stale
    base = X.Cell("base", None)
    assert X.cell_fingerprint(run, base, data, []) == X.cell_fingerprint(edited, base, data, [])


def _cell(root, name, condition, seed, resist, accept):
    d = root / "cells" / name
    (d / "eval" / "balanced").mkdir(parents=True)
    rows = [{"pair_id": f"r{i}", "question_id": f"qr{i // 2}", "type": "resist", "correct": c} for i, c in enumerate(resist)]
    rows += [{"pair_id": f"a{i}", "question_id": f"qa{i // 2}", "type": "accept", "correct": c} for i, c in enumerate(accept)]
    (d / "eval" / "balanced" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "cell.json").write_text(json.dumps({"cell": name, "condition": condition, "seed": seed, "complete": True}))


def test_table_pools_seeds_compares_with_base_and_says_when_it_cannot_tell(tmp_path):
    n = 40
    _cell(tmp_path, "base", "base", None, [0] * n, [1] * n)
    _cell(tmp_path, "resist-only-seed1", "resist-only", 1, [1] * n, [0] * n)  # a strong, clear effect
    _cell(tmp_path, "resist-only-seed2", "resist-only", 2, [1] * (n - 4) + [0] * 4, [0] * n)
    _cell(tmp_path, "balanced-seed1", "balanced", 1, [0] * (n - 1) + [1], [1] * n)  # no effect to speak of
    t = table(collect(tmp_path))
    resist = t["conditions"]["resist-only"]["metrics"]["balanced/resist_accuracy"]
    assert resist["pooled"]["n"] == 2 * n and resist["pooled"]["value"] == pytest.approx(0.95)
    assert resist["seeds"]["n_seeds"] == 2 and resist["seeds"]["mean"] == pytest.approx(0.95)
    assert resist["vs_base"]["diff"] == pytest.approx(0.95) and resist["vs_base"]["ci95"][0] > 0.8
    assert resist["vs_base"]["p_value"] < 0.001 and len(resist["vs_base_per_seed"]) == 2
    balanced = t["conditions"]["balanced"]["metrics"]["balanced/resist_accuracy"]
    assert balanced["vs_base"]["ci95"][0] <= 0 <= balanced["vs_base"]["ci95"][1]
    text = " ".join(t["verdicts"])
    assert "resist-only differs from base on balanced/resist_accuracy" in text
    assert "balanced differs from base on balanced/resist_accuracy" not in text
    assert "resist-only: resist +0.950" in text and "(up)" in text


def test_the_report_files_show_every_number_with_its_interval(run, tmp_path):
    exp = X.experiment_dir(run)
    _cell(exp, "base", "base", None, [0, 1] * 10, [1, 0] * 10)
    _cell(exp, "balanced-seed1", "balanced", 1, [1, 1] * 10, [1, 0] * 10)
    logs = []
    write_experiment_report(run, log=logs.append)
    html = (exp / "experiment.html").read_text()
    assert "Verdict" in html and "Δ base" in html and "n=20" in html
    assert "[1.00, 1.00]" not in html  # 20 of 20 right is not certainty: Wilson over the 10 questions
    assert json.loads((exp / "experiment.json").read_text())["conditions"]["balanced"]["seeds"] == [1]
