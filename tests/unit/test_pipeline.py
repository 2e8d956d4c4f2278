"""Tree storage (atomic part files, finished ids, failed trees apart), the run lock, and transports."""

import pytest

from pbt_ray.config import load_config
from pbt_ray.dialogue.pipeline import (
    GrowError, _exclusive, finished_tree_ids, read_trees, request_models, transport_for, write_trees,
)
from pbt_ray.dialogue.tree import Node, Tree


def tree(tree_id, status="complete"):
    t = Tree(tree_id=tree_id, question_id=tree_id, question="Q?", gold=["a"], mode="train",
             models={"A": "m", "B": "m", "extractor": "m"}, roles={"persuader": "A", "persuadee": "B"}, seed=1,
             status=status, error=None if status == "complete" else "request failed")
    t.nodes = [Node(id=0, parent=-1, depth=0, speaker="A", role="independent", family="lp", text="a.",
                    raw_answer="a", outcome="answer", answer="a", correct=True)]
    return t


def test_finished_and_failed_trees_are_stored_apart(tmp_path):
    write_trees([tree("q1"), tree("q2", "failed")], tmp_path)
    write_trees([tree("q3")], tmp_path)
    assert finished_tree_ids(tmp_path) == {"q1", "q3"}
    assert sorted(t.tree_id for t in read_trees(tmp_path)) == ["q1", "q3"]
    assert sorted(t.tree_id for t in read_trees(tmp_path, include_failed=True)) == ["q1", "q2", "q3"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    one_file = next((tmp_path / "trees").glob("part-*.parquet"))
    assert [t.tree_id for t in read_trees(one_file)] in (["q1"], ["q3"])
    assert finished_tree_ids(tmp_path / "nothing-here") == set()


def test_one_writer_per_run_dir(tmp_path):
    with _exclusive(tmp_path):
        with pytest.raises(GrowError, match="Another `pbt grow` is writing"):
            with _exclusive(tmp_path):
                pass
    with _exclusive(tmp_path):  # released again
        pass


def test_transport_and_model_ids():
    ours = load_config("local")
    native = {"smollm2-135m-instruct": "native", "persuadee": "native", "persuader": "native", "extractor": "native"}
    assert transport_for(ours, "http://x/v1") == {
        "kind": "handle", "app_name": "pbt-local", "served": ["smollm2-135m-instruct"],
        "aliases": {"persuadee": "smollm2-135m-instruct", "persuader": "smollm2-135m-instruct",
                    "extractor": "smollm2-135m-instruct"}, "formats": native}
    assert request_models(ours) == {"A": "persuader", "B": "persuadee", "extractor": "extractor"}
    external = load_config("local", ["grow.endpoint=http://other:9000/v1"])
    assert transport_for(external, "http://other:9000/v1") == {"kind": "http", "url": "http://other:9000/v1",
                                                               "formats": native, "api_key_env": "PBT_API_KEY",
                                                               "api_key_file": None}
    assert request_models(external) == {"A": "smollm2-135m-instruct", "B": "smollm2-135m-instruct",
                                        "extractor": "smollm2-135m-instruct"}
    assert transport_for(load_config("local", ["grow.client=http"]), "u")["kind"] == "http"
    flipped = load_config("local", ["grow.persuader=B"])
    assert request_models(flipped)["B"] == "persuader" and request_models(flipped)["A"] == "persuadee"


def test_a_retried_batch_replaces_its_part_file(tmp_path):
    write_trees([tree("q1"), tree("q2")], tmp_path)
    write_trees([tree("q2"), tree("q1")], tmp_path)  # the same batch again, e.g. after its grower died
    assert len(list((tmp_path / "trees").glob("part-*.parquet"))) == 1
    assert sorted(t.tree_id for t in read_trees(tmp_path)) == ["q1", "q2"]
