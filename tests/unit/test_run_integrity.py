"""A run directory that never lies (issue 14): exactly-once trees, pairs written into the run the trees came from,
a record of what ran, one writer at a time. Pure or single-process: no Ray."""

from __future__ import annotations

import json

import pytest

from pbt_ray.config import load_config
from pbt_ray.dialogue.pipeline import FAILED_DIR, TREES_DIR, read_trees, write_trees
from pbt_ray.preferences.mining import mine, output_dir
from pbt_ray.record import RECORD_CONFIG, RECORD_LOG, RunBusyError, run_lock, write_record

from .pbt_fixtures import fixture_tree, write_ours


def tree(name: str, tree_id: str, complete: bool = True):
    t = fixture_tree(name)
    t.tree_id = t.question_id = tree_id
    t.status = "complete" if complete else "failed"
    return t


def test_a_retried_batch_replaces_its_part_file_whatever_finished(tmp_path):
    """Issue 14.4: part files were named by the trees that finished in that attempt, so a retry in which
    another subset finished wrote tree A into a second file."""
    write_trees([tree("F1", "a"), tree("F2", "b", complete=False)], tmp_path)
    write_trees([tree("F1", "a"), tree("F2", "b")], tmp_path)  # the retry: both finish
    assert len(list((tmp_path / TREES_DIR).glob("part-*.parquet"))) == 1
    assert not list((tmp_path / FAILED_DIR).glob("part-*.parquet"))  # b's failure is not kept beside its tree
    assert sorted(t.tree_id for t in read_trees(tmp_path, include_failed=True)) == ["a", "b"]


def test_duplicate_tree_ids_never_reach_pairs(tmp_path):
    run = tmp_path / "run"
    (run / "trees").mkdir(parents=True)
    write_ours(run / "trees" / "part-0.parquet", [fixture_tree("F1")])
    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=run", "mine.split_fractions=[1.0,0.0,0.0]"])
    once = mine(cfg, trees=str(run), use_ray=False, log=lambda *_: None)
    write_ours(run / "trees" / "part-1.parquet", [fixture_tree("F1"), fixture_tree("F1")])  # written twice more
    twice = mine(cfg, trees=str(run), use_ray=False, log=lambda *_: None)
    assert twice["pairs_by_type"] == once["pairs_by_type"] and twice["pairs_by_type"]["resist"] == 6
    assert twice["trees"] == once["trees"] == 1
    assert twice["drops_by_reason"]["duplicate_tree"] == 2
    assert len(list(read_trees(run))) == 1


def test_mining_another_runs_trees_writes_into_that_run(tmp_path):
    """Issue 14.8: `pbt mine --trees runs/other` wrote into runs/local/preferences."""
    cfg = load_config("local", [f"runs_dir={tmp_path}"])
    other = tmp_path / "other"
    (other / "trees").mkdir(parents=True)
    write_ours(other / "trees" / "part-0.parquet", [fixture_tree("F1")])
    assert output_dir(cfg, str(other)) == other / "preferences"
    assert output_dir(cfg, str(other / "trees")) == other / "preferences"
    assert output_dir(cfg, str(other / "trees" / "part-0.parquet")) == other / "preferences"
    assert output_dir(cfg) == cfg.run_dir / "preferences"
    assert output_dir(cfg, str(other), "elsewhere") .name == "elsewhere"
    from pbt_ray.cli import main

    assert main(["mine", "--trees", str(other), "--no-ray", f"runs_dir={tmp_path}"]) == 0
    assert (other / "preferences" / "mine_stats.json").is_file()
    assert not (tmp_path / "local").exists()  # the config's own run is untouched
    record = [json.loads(line) for line in (other / RECORD_LOG).read_text().splitlines()]
    assert record[-1]["command"] == "mine"


def test_every_run_records_its_config_versions_and_commit(tmp_path):
    cfg = load_config("local", [f"runs_dir={tmp_path}", "train.epochs=3"])
    entry = write_record(cfg, "run", ["run", "train.epochs=3"])
    text = (cfg.run_dir / RECORD_CONFIG).read_text()
    assert "epochs: 3.0" in text and text.startswith("# resolved config of `pbt run`")
    assert load_config(str(cfg.run_dir / RECORD_CONFIG)).train.epochs == 3.0  # the record loads as a config
    logged = json.loads((cfg.run_dir / RECORD_LOG).read_text().splitlines()[-1])
    assert logged == entry and logged["argv"] == ["run", "train.epochs=3"]
    assert logged["packages"]["ray"] and logged["packages"]["pbt-ray"] and logged["packages"]["vllm"]
    assert logged["git"] is None or len(logged["git"]["commit"]) == 40


def test_one_writer_per_run(tmp_path):
    with run_lock(tmp_path, "run"):
        with pytest.raises(RunBusyError, match=r"in use by pid \d+ \(`pbt run`\)"):
            with run_lock(tmp_path, "grow"):
                pass
    with run_lock(tmp_path, "grow"):  # released
        pass


def test_a_node_local_runs_dir_is_refused_on_a_multi_node_cluster(tmp_path):
    """Issue 14.5: a local runs_dir on a cluster of several nodes was used silently (each node its own disk)."""
    from pbt_ray.config import ConfigError
    from pbt_ray.runtime import StorageError, check_shared_storage

    cfg = load_config("local", [f"runs_dir={tmp_path}"])
    check_shared_storage(cfg, nodes=1)
    with pytest.raises(StorageError, match="cluster has 2 nodes.*shared_runs_dir=true"):
        check_shared_storage(cfg, nodes=2)
    check_shared_storage(load_config("local", [f"runs_dir={tmp_path}", "shared_runs_dir=true"]), nodes=2)
    assert load_config("local", [f"runs_dir=file://{tmp_path}"]).run_dir == tmp_path / "local"
    s3 = load_config("local", ["runs_dir=s3://bucket/runs"])  # it became a local folder named "s3:"
    assert "s3:" not in s3.run_dir.parts  # now: a working copy mirrored to the URI (tests/unit/test_storage.py)
    with pytest.raises(ConfigError, match="unknown storage protocol"):
        load_config("local", ["runs_dir=nosuch://bucket/runs"])
