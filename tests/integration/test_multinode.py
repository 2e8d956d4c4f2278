"""Two Ray nodes on this machine (ray.cluster_utils.Cluster: a head that runs no work, like KubeRay's, and a worker
node): a node-local runs_dir is refused up front, and a declared shared one is where a stage on the other node
reads and the driver writes (issue 14.5).

Then `pbt experiment` (issue 15) across the two nodes, which runs every stage of the loop there: the loop's grow
(Ray Data growers against the Serve app) and mine, and per cell Ray Train DPO (DeepSpeed, CPU workers), the
merge, the trained model served next to the base, and the evaluations. The head has no CPUs, so the growers, the
Train workers and every replica can only run on the second node, while the driver (on the head) writes the run
directory they read: it must be the declared shared one.

The 135M model's own trees rarely give a resist pair (docs/extraction.md), so balancing them would leave nothing
to train: the run directory is seeded with synthetic trees (tests/unit/pbt_fixtures.py, both sides) next to the
two trees grown for real.
"""

from __future__ import annotations

import json
import os
import random
import re

import pytest

from pbt_ray.config import load_config
from pbt_ray.preferences.pairs import read_pairs
from pbt_ray.preferences.mining import mine
from pbt_ray.runtime import StorageError, ray_cluster
from tests.unit.pbt_fixtures import random_tree, write_ours

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    os.makedirs("/tmp/ray", exist_ok=True)  # cluster_utils records the address there
    temp = tmp_path_factory.mktemp("ray")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "temp_dir": str(temp), "env_vars": {"RAY_AUTH_MODE": "disabled"}})
    # 7 logical CPUs, as the local preset's in-process cluster: the app, a grower and two Train workers at once.
    worker = cluster.add_node(num_cpus=7, resources={"second_node": 1})
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield worker.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_node_local_runs_dir_is_refused_and_a_shared_one_is_used_from_the_other_node(two_nodes, tmp_path):
    import ray

    local = load_config("local", [f"runs_dir={tmp_path}", "name=mn"])
    with pytest.raises(StorageError, match="cluster has 2 nodes"):
        with ray_cluster(local):
            pass
    shared = load_config("local", [f"runs_dir={tmp_path}", "name=mn", "shared_runs_dir=true", "mine.balance=none"])
    (shared.run_dir / "trees").mkdir(parents=True)
    write_ours(shared.run_dir / "trees" / "part-0.parquet", [random_tree(random.Random(s), s) for s in range(12)])
    write_ours(shared.run_dir / "trees" / "part-1.parquet", [random_tree(random.Random(s), s) for s in range(12, 24)])
    with ray_cluster(shared):
        stats = mine(shared, log=lambda *_: None)  # one Ray Data task per tree file; the head runs no work
        cpus = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
    # Two nodes, and only the worker node has CPUs: every mining task ran there, none on the driver's node.
    assert len(cpus) == 2 and {node for node, n in cpus.items() if n > 0} == {two_nodes}
    assert stats["trees"] == 24 and stats["files"] == 2
    assert (shared.run_dir / "preferences" / "pairs" / "train.parquet").is_file()


TINY = ["grow.questions=bundled:commonsense", "grow.limit=2", "grow.depth=2",
        "experiment.conditions=[base,accept-only]", "experiment.seeds=[1,2]",
        "experiment.suites=[balanced,are-you-sure]", "train.max_steps=1", "train.dev_limit=4",
        "eval.limit=3"]


def synthetic_trees(n: int) -> list:
    """Synthetic trees of both sides, one question each, so the shared test set spans enough questions per side
    (five at least) for a bootstrap interval of balanced accuracy."""
    trees = []
    for s in range(n):
        tree = random_tree(random.Random(s), s)
        tree.question_id = f"rq{s}"
        trees.append(tree)
    return trees


def test_experiment_two_conditions_two_seeds_on_the_second_node(two_nodes, tmp_path):
    import ray

    from pbt_ray import experiment

    from .conftest import free_port

    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=exp", "shared_runs_dir=true", *TINY,
                                f"serve.port={free_port()}"])
    run = cfg.run_dir
    (run / "trees").mkdir(parents=True)
    write_ours(run / "trees" / "part-synthetic.parquet", synthetic_trees(400))
    logs: list[str] = []
    try:
        assert experiment.run(cfg, log=logs.append) == 0, "\n".join(logs[-40:])
        # Every stage's workers ran on the second node: replicas (alive), growers and Train workers (finished).
        # (the GCS actor table: the state API needs the dashboard, which this head does not run)
        placed = {(a["ActorClassName"], a["Address"]["NodeID"]) for a in ray._private.state.actors().values()
                  if any(k in a["ActorClassName"] for k in ("LLMServer", "TreeGrower", "RayTrainWorker"))}
    finally:
        from ray import serve

        serve.shutdown()
    out = "\n".join(logs)
    assert "[pbt] trees: 2 grown" in out  # grown for real next to the synthetic ones
    for kind in ("LLMServer", "TreeGrower", "RayTrainWorker"):
        assert any(kind in name for name, _ in placed), (kind, placed)
    assert {node for _, node in placed} == {two_nodes}, placed
    exp = run / "experiment"
    cells = {p.parent.name: json.loads(p.read_text()) for p in exp.glob("cells/*/cell.json")}
    assert sorted(cells) == ["accept-only-seed1", "accept-only-seed2", "base"]
    assert all(c["complete"] and not c.get("skipped") for c in cells.values()), cells
    assert len({c["train"]["run_name"] for n, c in cells.items() if n != "base"}) == 2  # two trainings
    assert all(c["train"]["global_step"] == 1 for n, c in cells.items() if n != "base")
    # One shared test set holding both sides; each condition trained on its own side(s).
    test = read_pairs(exp / "data" / "test.parquet")  # experiment.test_pairs: all of the test split
    assert {p.type for p in test} == {"resist", "accept"}
    assert {p.type for p in read_pairs(exp / "data" / "accept-only" / "pairs" / "train.parquet")} == {"accept"}
    # Every cell was evaluated on the same items.
    keys = {n: sorted(json.loads(line)["pair_id"] for line in (exp / "cells" / n / "eval" / "balanced" / "results.jsonl").open())
            for n in cells}
    assert len({tuple(v) for v in keys.values()}) == 1 and len(keys["base"]) == len(test)
    # The table: pooled over seeds with n and intervals, per-seed values, paired comparisons with base.
    table = json.loads((exp / "experiment.json").read_text())
    assert list(table["conditions"]) == ["base", "accept-only"]
    for condition in ("accept-only",):
        entry = table["conditions"][condition]
        assert entry["seeds"] == [1, 2]
        for key in ("balanced/balanced_accuracy", "are-you-sure/acc_after"):
            cell = entry["metrics"][key]
            assert cell["pooled"]["n"] == 2 * table["conditions"]["base"]["metrics"][key]["pooled"]["n"] > 0
            assert cell["pooled"]["ci95"] is not None and cell["seeds"]["n_seeds"] == 2
            assert cell["vs_base"]["n"] == cell["pooled"]["n"] and "ci95" in cell["vs_base"]
    assert any("too wide to separate" in v or "differs from base" in v for v in table["verdicts"])
    html = (exp / "experiment.html").read_text()
    assert "Verdict" in html and "Δ base" in html and "data:image/png;base64," in html
    # Adding a seed reuses every finished cell.
    more = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(update={"seeds": [1, 2, 3]})})
    plan = experiment.format_plan(more, experiment.plan(more))
    assert re.search(r"accept-only-seed1 +done", plan) and re.search(r"accept-only-seed3 +to run", plan)
