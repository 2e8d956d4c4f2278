"""Two Ray nodes on this machine (ray.cluster_utils.Cluster: a head that runs no work, like KubeRay's, and a worker
node): a node-local runs_dir is refused up front, and a declared shared one is where a stage on the other node
reads and the driver writes (issue 14.5). The whole loop across nodes is not covered yet."""

from __future__ import annotations

import os
import random

import pytest

from pbt_ray.config import load_config
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
    worker = cluster.add_node(num_cpus=2, resources={"second_node": 1})
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
