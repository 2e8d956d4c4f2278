"""The intervals every rate carries: Wilson for independent items, a cluster bootstrap for correlated ones."""

import pytest

from pbt_ray.stats import cluster_rate, proportion


def test_wilson_proportion():
    p = proportion(9, 60)
    assert (p["n"], p["right"], p["accuracy"]) == (60, 9, 0.15) and p["ci95"] == pytest.approx([0.081, 0.2611], abs=1e-3)
    assert proportion(0, 0)["ci95"] is None


def test_cluster_bootstrap_is_wider_when_clusters_disagree():
    same = cluster_rate([5] * 10, [10] * 10)
    split = cluster_rate([10, 0] * 5, [10] * 10)  # the same 50% rate, but whole trees all-NONE or none-NONE
    assert same["rate"] == split["rate"] == 0.5 and (same["n"], same["clusters"]) == (100, 10)
    assert same["ci95"] == [0.5, 0.5] and split["ci95"][0] < 0.35 and split["ci95"][1] > 0.65
    assert cluster_rate([1], [3])["ci95"] is None and cluster_rate([], [])["rate"] is None
    assert cluster_rate([1, 2, 0], [4, 4, 0]) == cluster_rate([1, 2], [4, 4])  # empty clusters count for nothing
