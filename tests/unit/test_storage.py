"""Issue 14 (5): a URI runs_dir used to become a local folder named like the URI. Now every command that writes
works on a local copy pulled from the URI and pushes what it wrote back, through fsspec (memory:// here: a real
fsspec filesystem, no mock of a cloud)."""

import random
import uuid

import fsspec
import pytest

from pbt_ray.cli import main
from pbt_ray.config import ConfigError, load_config
from pbt_ray.runtime import StorageError, check_shared_storage
from pbt_ray.storage import RunStore

from .pbt_fixtures import random_tree, write_ours


@pytest.fixture
def uri(tmp_path, monkeypatch):
    monkeypatch.setenv("PBT_STAGING_DIR", str(tmp_path / "staging"))
    root = f"memory://runs-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root.split("://")[1]):
        fs.rm(root.split("://")[1], recursive=True)


def test_a_uri_runs_dir_is_a_working_copy_not_a_folder_named_like_the_uri(uri, tmp_path):
    cfg = load_config("local", [f"runs_dir={uri}", "name=r"])
    assert cfg.run_dir.is_relative_to(tmp_path / "staging") and "memory:" not in cfg.run_dir.parts
    with pytest.raises(ConfigError, match="unknown storage protocol 'nosuch'"):
        load_config("local", ["runs_dir=nosuch://bucket/runs"])
    with pytest.raises(StorageError, match="mirrored through a working copy on the driver"):
        check_shared_storage(cfg, nodes=2)  # the other nodes could not see the working copy


def test_pbt_mine_reads_and_writes_a_memory_uri_run(uri, tmp_path, capsys):
    fs = fsspec.filesystem("memory")
    local_trees = tmp_path / "trees.parquet"
    write_ours(local_trees, [random_tree(random.Random(s), s) for s in range(80)])
    root = uri.split("://")[1]
    fs.makedirs(f"{root}/r/trees", exist_ok=True)
    fs.put_file(str(local_trees), f"{root}/r/trees/part-a.parquet")

    assert main(["mine", "-c", "local", f"runs_dir={uri}", "name=r", "--no-ray"]) == 0
    out = capsys.readouterr().out
    assert "(1 file(s) pulled)" in out and "pushed to " + uri in out
    stored = {p.split(f"{root}/r/", 1)[1] for p in fs.find(f"{root}/r")}
    assert {"preferences/pairs/train.parquet", "preferences/candidates.parquet", "run.yaml", "runs.jsonl"} <= stored
    assert ".pbt.lock" not in stored and not any(p.endswith(".tmp") for p in stored)

    # Another machine (a fresh working copy) resumes from the URI alone.
    cfg = load_config("local", [f"runs_dir={uri}", "name=r"])
    fresh = RunStore(f"{uri}/r", tmp_path / "elsewhere")
    assert fresh.pull() == len(stored - {'.pbt-pushed'}) and (tmp_path / "elsewhere" / "preferences" / "mine_stats.json").is_file()
    assert fresh.pull() == 0 and fresh.push() == 0  # in sync: nothing to copy either way
    assert RunStore.of(cfg).uri == f"{uri}/r"
    assert RunStore.of(load_config("local", [f"runs_dir={tmp_path}"])) is None  # a local runs_dir: used in place
