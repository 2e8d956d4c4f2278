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


# --- experiment-report statistics -------------------------------------------------------------------------------
# Every interval is 95%; every bootstrap resamples whole clusters with numpy.random.default_rng(seed), so the same
# inputs and seed give the same interval. Reported floats are rounded to 4 decimals (p-values to 4 significant
# digits, so that a small p does not print as 0).

_SIGN_FLIP_EXACT_MAX = 12  # enumerate all 2**m sign vectors up to this many nonzero clusters
_SIGN_FLIP_RANDOM = 10000  # otherwise this many random sign vectors


def _r4(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _p4(p: float) -> float:
    return float(f"{float(p):.4g}")


def _cluster_index(clusters: Any, n: int):
    """(cluster id of each row as 0..k-1 in order of first appearance, k). ``None``: each row its own cluster."""
    import numpy as np

    if clusters is None:
        return np.arange(n), n
    clusters = list(clusters)
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster keys for {n} rows")
    ids: dict[Any, int] = {}
    inv = np.array([ids.setdefault(c, len(ids)) for c in clusters], dtype=np.int64)
    return inv, len(ids)


def _draws(k: int, seed: int, n_resamples: int):
    """The cluster indices of each resample: an (n_resamples, k) array drawn with replacement."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, k, size=(n_resamples, k))


def _percentile_ci(stats) -> list[float] | None:
    """The 2.5th and 97.5th percentiles (numpy's linear interpolation, as scipy's percentile bootstrap) of the
    finite resampled statistics; None when none is finite."""
    import numpy as np

    stats = np.asarray(stats, dtype=float)
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return None
    low, high = np.percentile(stats, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def _cluster_mean_ci(values, inv, k: int, seed: int, n_resamples: int = 2000) -> list[float] | None:
    """Fast path of ``cluster_bootstrap(clusters, np.mean, values)`` (the same draws) from per-cluster sums."""
    import numpy as np

    if k < 2:
        return None
    sums = np.bincount(inv, weights=values, minlength=k)
    sizes = np.bincount(inv, minlength=k).astype(float)
    draws = _draws(k, seed, n_resamples)
    return _percentile_ci(sums[draws].sum(axis=1) / sizes[draws].sum(axis=1))


def _is_binary(*arrays) -> bool:
    import numpy as np

    return all(bool(np.all((a == 0) | (a == 1))) for a in arrays)


def cluster_bootstrap(clusters: Any, statistic: Any, *arrays: Any, seed: int = 12,
                      n_resamples: int = 2000) -> tuple[float, list[float] | None]:
    """``statistic(*arrays)`` over all rows, and its 95% percentile interval from resampling whole clusters with
    replacement. Rows are the items of the equal-length 1-D ``arrays``; ``clusters[i]`` is row i's cluster key (any
    hashable; ``None``: each row its own cluster). Each resample draws as many clusters as there are and passes
    the concatenated rows (as numpy arrays) to ``statistic``. Resamples whose statistic is NaN or infinite (e.g. a
    group absent from the resample) are dropped from the percentiles. Fewer than two clusters: interval None."""
    import warnings

    import numpy as np

    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("cluster_bootstrap needs at least one array")
    n = len(arrays[0])
    if any(a.ndim != 1 or len(a) != n for a in arrays):
        raise ValueError("cluster_bootstrap needs equal-length 1-D arrays")
    inv, k = _cluster_index(clusters, n)
    point = round(float(statistic(*arrays)), 4)
    if k < 2:
        return point, None
    order = np.argsort(inv, kind="stable")  # rows grouped by cluster
    sizes = np.bincount(inv, minlength=k)
    starts = np.cumsum(sizes) - sizes
    stats = np.empty(n_resamples)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for r, draw in enumerate(_draws(k, seed, n_resamples)):
            lens = sizes[draw]
            # position j of the resample is row (starts[c] + j - first position of c) of the grouping, c its cluster
            rows = order[np.repeat(starts[draw] - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())]
            stats[r] = float(statistic(*(a[rows] for a in arrays)))
    return point, _percentile_ci(stats)


def cluster_mean(values: Any, clusters: Any = None, seed: int = 12) -> dict[str, Any]:
    """The mean of item values (bool or float) with n (items), clusters (distinct clusters) and a 95% interval:
    Wilson (``method`` "wilson") for 0/1 values of independent items (``clusters`` None or every cluster a single
    item), else the cluster bootstrap (``method`` "cluster bootstrap"; None with fewer than two clusters)."""
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if not n:
        return {"mean": None, "n": 0, "clusters": 0, "ci95": None, "method": None}
    inv, k = _cluster_index(clusters, n)
    if k == n and _is_binary(x):
        return {"mean": _r4(x.mean()), "n": n, "clusters": k, "ci95": proportion(int(x.sum()), n)["ci95"],
                "method": "wilson"}
    return {"mean": _r4(x.mean()), "n": n, "clusters": k, "ci95": _cluster_mean_ci(x, inv, k, seed),
            "method": "cluster bootstrap"}


def _sign_flip_p(cluster_diffs, seed: int) -> float:
    """Two-sided randomization p of |sum of cluster differences| under random signs per cluster: exact over all
    2**m sign vectors for m <= 12 nonzero clusters, else (1 + hits) / (1 + 10000) random sign vectors."""
    import numpy as np

    d = np.asarray(cluster_diffs, dtype=float)
    d = d[d != 0]
    m = len(d)
    if not m:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if m <= _SIGN_FLIP_EXACT_MAX:
        signs = ((np.arange(2 ** m)[:, None] >> np.arange(m)) & 1) * 2 - 1
        return float(np.mean(np.abs(signs @ d) >= observed - tol))
    rng, hits, left = np.random.default_rng(seed), 0, _SIGN_FLIP_RANDOM
    while left:
        batch = min(left, 1000)
        signs = rng.integers(0, 2, size=(batch, m)) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
        left -= batch
    return (1 + hits) / (1 + _SIGN_FLIP_RANDOM)


def paired_difference(base: Any, other: Any, clusters: Any = None, seed: int = 12) -> dict[str, Any]:
    """mean(other) - mean(base) over aligned items (row i of both is the same evaluation item; 0/1 or floats).

    ``ci95``: cluster bootstrap of the mean paired difference (``clusters`` None: each item its own cluster; None
    with fewer than two clusters). ``p_value`` (two-sided): for 0/1 values of independent items the exact McNemar
    test (``test`` "mcnemar"); otherwise a sign-flip randomization test over the clusters' summed differences
    (``test`` "cluster sign-flip"). All differences zero: p 1.0. For 0/1 values, ``discordant`` counts the items
    right for base only and for other only."""
    import numpy as np

    b, o = (np.asarray(list(v), dtype=float) for v in (base, other))
    if len(b) != len(o):
        raise ValueError(f"paired_difference needs aligned items, got {len(b)} and {len(o)}")
    n = len(b)
    if not n:
        return {"n": 0, "diff": None, "ci95": None, "p_value": None, "test": None}
    inv, k = _cluster_index(clusters, n)
    d = o - b
    binary = _is_binary(b, o)
    out: dict[str, Any] = {"n": n, "diff": _r4(d.mean()), "ci95": _cluster_mean_ci(d, inv, k, seed)}
    if binary:
        base_only, other_only = int(np.sum((b == 1) & (o == 0))), int(np.sum((b == 0) & (o == 1)))
    if not np.any(d != 0):
        p, test = 1.0, ("mcnemar" if binary and k == n else "cluster sign-flip")
    elif binary and k == n:
        from statsmodels.stats.contingency_tables import mcnemar

        both, neither = int(np.sum((b == 1) & (o == 1))), int(np.sum((b == 0) & (o == 0)))
        p, test = float(mcnemar([[both, base_only], [other_only, neither]], exact=True).pvalue), "mcnemar"
    else:
        p, test = _sign_flip_p(np.bincount(inv, weights=d, minlength=k), seed), "cluster sign-flip"
    out.update(p_value=_p4(min(1.0, p)), test=test)
    if binary:
        out["discordant"] = {"base_only": base_only, "other_only": other_only}
    return out


def across_seeds(values: Any) -> dict[str, Any]:
    """Mean over per-seed values (None and NaN dropped) with the sample sd (ddof=1; None with one seed) and the
    95% t interval of the mean (mean +- t_{0.975, n-1} * sd / sqrt(n); None with fewer than two seeds)."""
    import math

    import numpy as np

    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(kept)
    out: dict[str, Any] = {"n_seeds": n, "mean": None, "sd": None, "ci95": None, "values": kept}
    if not n:
        return out
    x = np.array(kept)
    mean = float(x.mean())
    out["mean"] = _r4(mean)
    if n >= 2:
        from scipy.stats import t

        sd = float(x.std(ddof=1))
        half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(sd=_r4(sd), ci95=[_r4(mean - half), _r4(mean + half)])
    return out


def separated(a: list[float] | None, b: list[float] | None) -> bool:
    """Whether two 95% intervals ([low, high]) do not overlap (touching ends overlap). None on either side: False."""
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]
