"""Intervals for the project's numbers (pure; statsmodels and scipy do the statistics).

Every rate pbt-ray prints comes with its n and a 95% interval: Wilson for a proportion of independent
items (:func:`proportion`); a bootstrap over clusters where the counted units are correlated within a
cluster, such as the turns of one tree or the replies of one evaluation item (:func:`cluster_rate`).
"""

from __future__ import annotations

from typing import Any


def proportion(right: int, n: int) -> dict[str, Any]:
    """A proportion with its n and Wilson 95% interval."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return {"n": 0, "right": 0, "accuracy": None, "ci95": None}
    low, high = proportion_confint(right, n, alpha=0.05, method="wilson")
    return {"n": n, "right": right, "accuracy": right / n, "ci95": [round(float(low), 4), round(float(high), 4)]}


def cluster_rate(hits: list[int], totals: list[int], seed: int = 12) -> dict[str, Any]:
    """sum(hits) / sum(totals) with a 95% percentile bootstrap interval that resamples whole clusters
    (``hits[i]`` of ``totals[i]`` units in cluster i). Fewer than two clusters: no interval."""
    import numpy as np

    pairs = [(h, t) for h, t in zip(hits, totals) if t > 0]
    units, count = sum(t for _, t in pairs), sum(h for h, _ in pairs)
    if not units:
        return {"rate": None, "n": 0, "clusters": 0, "ci95": None}
    out = {"rate": count / units, "n": units, "clusters": len(pairs), "ci95": None}
    if len(pairs) >= 2:
        from scipy.stats import bootstrap

        h, t = (np.array(x, dtype=float) for x in zip(*pairs))
        result = bootstrap((h, t), lambda a, b, axis=-1: a.sum(axis=axis) / b.sum(axis=axis), paired=True,
                           vectorized=True, n_resamples=2000, method="percentile", rng=np.random.default_rng(seed))
        out["ci95"] = [round(float(result.confidence_interval.low), 4), round(float(result.confidence_interval.high), 4)]
    return out
