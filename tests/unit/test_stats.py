"""The intervals every rate carries: Wilson for independent items, a cluster bootstrap for correlated ones."""

import math

import numpy as np
import pytest

from pbt_ray.stats import (across_seeds, cluster_bootstrap, cluster_mean, cluster_rate, paired_difference, proportion,
                           separated)


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


def test_cluster_mean_singletons_are_wilson_and_clusters_widen():
    values = [True] * 9 + [False] * 51
    for clusters in (None, list(range(60))):
        m = cluster_mean(values, clusters)
        assert (m["mean"], m["n"], m["clusters"], m["method"]) == (0.15, 60, 60, "wilson")
        assert m["ci95"] == proportion(9, 60)["ci95"]
    assert cluster_mean([]) == {"mean": None, "n": 0, "clusters": 0, "ci95": None, "method": None}
    # the same 50% item mean: 20 independent items vs 10 clusters of 2 that are all-0 or all-1
    alone = cluster_mean([1, 0] * 10, list(range(20)))
    together = cluster_mean([1, 1, 0, 0] * 5, [i // 2 for i in range(20)])
    assert together["method"] == "cluster bootstrap" and (together["n"], together["clusters"]) == (20, 10)
    assert alone["mean"] == together["mean"] == 0.5
    assert together["ci95"][0] <= 0.5 <= together["ci95"][1]
    assert together["ci95"][1] - together["ci95"][0] > 1.3 * (alone["ci95"][1] - alone["ci95"][0])
    # floats are bootstrapped even without clusters; one cluster gives no interval
    f = cluster_mean([0.5, 0.25, 1.0, 0.75])
    assert (f["mean"], f["method"], f["clusters"]) == (0.625, "cluster bootstrap", 4) and f["ci95"][0] < 0.625 < f["ci95"][1]
    assert cluster_mean([1, 0, 1], ["a", "a", "a"])["ci95"] is None


def test_cluster_bootstrap_generic_matches_fast_mean_and_is_deterministic():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(30), rng.integers(1, 6, size=30))
    values = (rng.random(len(clusters)) < 0.3 + 0.4 * (clusters % 2)).astype(float)
    point, ci = cluster_bootstrap(list(clusters), np.mean, values, seed=5)
    assert point == round(values.mean(), 4) and ci[0] < point < ci[1]
    assert cluster_mean(values, clusters, seed=5)["ci95"] == ci  # same draws, per-cluster sums
    assert cluster_bootstrap(list(clusters), np.mean, values, seed=5) == (point, ci)
    assert cluster_bootstrap(list(clusters), np.mean, values, seed=6)[1] != ci
    assert cluster_bootstrap(["x"] * 4, np.mean, np.ones(4)) == (1.0, None)


def test_cluster_bootstrap_drops_nan_resamples():
    # balanced accuracy: mean of the two class recalls; class 1 sits in one cluster of 5, so ~1/e of resamples miss it
    labels = np.array([1, 1, 0, 0, 0, 0])
    right = np.array([1, 0, 1, 1, 0, 1])

    def balanced(y, r):
        return np.mean([r[y == c].mean() if np.any(y == c) else np.nan for c in (0, 1)])

    point, ci = cluster_bootstrap(["a", "a", "b", "c", "d", "e"], balanced, labels, right, n_resamples=200)
    assert point == 0.625 and ci is not None and all(math.isfinite(x) for x in ci) and ci[0] <= ci[1]
    assert cluster_bootstrap(["a", "b"], lambda y: np.nan, np.ones(2), n_resamples=10) == (pytest.approx(np.nan, nan_ok=True), None)


def test_paired_difference_mcnemar_matches_statsmodels_and_binomial():
    from scipy.stats import binomtest
    from statsmodels.stats.contingency_tables import mcnemar

    # 2x2 table (rows base right/wrong, columns other right/wrong): both 10, base only 2, other only 9, neither 4
    base = [1] * 10 + [1] * 2 + [0] * 9 + [0] * 4
    other = [1] * 10 + [0] * 2 + [1] * 9 + [0] * 4
    d = paired_difference(base, other)
    p = mcnemar([[10, 2], [9, 4]], exact=True).pvalue
    assert p == pytest.approx(binomtest(2, 11, 0.5).pvalue) == pytest.approx(2 * 67 / 2048)  # 2 * P(X <= 2), X ~ B(11, 1/2)
    assert d["test"] == "mcnemar" and d["p_value"] == pytest.approx(p, rel=1e-3)
    assert (d["n"], d["diff"], d["discordant"]) == (25, 0.28, {"base_only": 2, "other_only": 9})
    assert d["ci95"][0] < 0.28 < d["ci95"][1]
    assert paired_difference(base, other, clusters=list(range(25)))["p_value"] == d["p_value"]
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert (same["diff"], same["p_value"], same["test"], same["discordant"]) == (0.0, 1.0, "mcnemar", {"base_only": 0, "other_only": 0})
    assert paired_difference([], []) == {"n": 0, "diff": None, "ci95": None, "p_value": None, "test": None}
    with pytest.raises(ValueError):
        paired_difference([1], [1, 0])


def test_paired_difference_cluster_sign_flip():
    # 4 clusters of 2 items, every cluster gains: only all-plus and all-minus reach |sum| = 6 -> p = 2/16
    base = [0, 0, 0, 1, 0, 0, 1, 0]
    other = [1, 1, 1, 1, 1, 0, 1, 1]
    d = paired_difference(base, other, clusters=["a", "a", "b", "b", "c", "c", "d", "d"])
    assert (d["test"], d["p_value"], d["diff"]) == ("cluster sign-flip", 0.125, 0.625)
    assert d["discordant"] == {"base_only": 0, "other_only": 5}
    # cluster sums 2, 1, 1, -1 (observed 3): 2*s1 + (s2 + s3 - s4) with the bracket in {-3, -1, 1, 3} (1, 3, 3, 1
    # ways) reaches |x| >= 3 for bracket 1 or 3 when s1 = +1 (4 ways) and -1 or -3 when s1 = -1 (4 ways) -> 8/16
    d = paired_difference([0, 0, 0, 0, 1], [1, 1, 1, 1, 0], clusters=[1, 1, 2, 3, 4])
    assert d["p_value"] == 0.5 and d["test"] == "cluster sign-flip"
    # floats without clusters: each item its own cluster, a zero difference does not count (3 nonzero -> 2/8)
    d = paired_difference([0.1, 0.2, 0.3, 0.5], [0.4, 0.6, 0.5, 0.5])
    assert (d["test"], d["p_value"], d["diff"]) == ("cluster sign-flip", 0.25, 0.225) and "discordant" not in d
    # more than 12 nonzero clusters: 10000 random flips, (1 + hits) / 10001, deterministic under the seed
    many = paired_difference([0] * 20, [1] * 20, clusters=list(range(20)), seed=3)
    assert many["test"] == "mcnemar"  # singleton 0/1: exact McNemar, 2 * 2**-20
    big = paired_difference([0.0] * 20, [1.0] * 18 + [-1.0] * 2, seed=3)
    assert big["test"] == "cluster sign-flip" and 0 < big["p_value"] < 0.01
    assert paired_difference([0.0] * 20, [1.0] * 18 + [-1.0] * 2, seed=3) == big


def test_across_seeds_t_interval_and_separated():
    s = across_seeds([0.2, None, 0.4, float("nan"), 0.6])
    half = 4.302653 * 0.2 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n) = 0.4968
    assert (s["n_seeds"], s["mean"], s["sd"], s["values"]) == (3, 0.4, 0.2, [0.2, 0.4, 0.6])
    assert s["ci95"] == pytest.approx([0.4 - half, 0.4 + half], abs=1e-4) and s["ci95"] == [-0.0968, 0.8968]
    assert across_seeds([0.7]) == {"n_seeds": 1, "mean": 0.7, "sd": None, "ci95": None, "values": [0.7]}
    assert across_seeds([])["mean"] is None and across_seeds([0.5, 0.5])["ci95"] == [0.5, 0.5]
    assert separated([0.1, 0.2], [0.3, 0.4]) and separated([0.3, 0.4], [0.1, 0.2])
    assert not separated([0.1, 0.3], [0.3, 0.4]) and not separated([0.1, 0.2], None) and not separated(None, None)
