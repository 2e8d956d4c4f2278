"""The experiment's table: conditions x metrics in the layout of the paper's Tables 1-3, every number with its
n and a 95% interval, each condition compared with base on the same items, and a plain verdict where the
intervals cannot separate the conditions.

For each condition and metric (definitions: :mod:`pbt_ray.evaluation.items`):

* ``pooled``: the items of all its seeds together, with a bootstrap interval over questions (the same question's
  items across seeds are one cluster);
* ``seeds``: the per-seed values, their mean +- sd and a t interval of the mean (the paper's ± is the sd);
* ``vs_base``: the pooled difference from base on the same items, with its interval and p-value, and each seed's
  own paired test.

Reads ``experiment/cells/*/cell.json`` and their ``eval/<suite>/results.jsonl``; writes ``experiment.json`` and a
self-contained ``experiment.html``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pbt_ray.evaluation import items as I
from pbt_ray.stats import across_seeds, separated

ORDER = ("base", "accept-only", "resist-only", "balanced")
SUITE_ORDER = ("balanced", "are-you-sure", "misinformation", "team")


def _rows(path: Path) -> list[dict]:
    from pbt_ray.evaluation.report import load_jsonl

    return load_jsonl(path, CELL_FIX) if path.is_file() else []


CELL_FIX = "move the cell's directory away and `pbt experiment` runs that cell again"


def collect(exp_dir: Path) -> list[dict[str, Any]]:
    """Every finished cell: its record and its results rows per suite."""
    out = []
    for record_path in sorted(Path(exp_dir).glob("cells/*/cell.json")):
        from pbt_ray.evaluation.report import ReportError, load_json

        record = load_json(record_path, CELL_FIX)
        if not isinstance(record, dict):
            raise ReportError(f"{record_path}: not a cell record (a JSON object); {CELL_FIX}")
        if not record.get("complete"):
            continue
        evals = record_path.parent / "eval"
        record["rows"] = {p.name: _rows(p / "results.jsonl") for p in sorted(evals.iterdir()) if p.is_dir()} \
            if evals.is_dir() else {}
        out.append(record)
    return out


def table(records: list[dict[str, Any]], conditions: list[str] | None = None) -> dict[str, Any]:
    """The aggregated experiment (pure): {"conditions": {condition: {...}}, "metrics": [...], "verdicts": [...]}."""
    by_condition: dict[str, list[dict]] = {}
    for r in records:
        by_condition.setdefault(r["condition"], []).append(r)
    names = [c for c in (conditions or ORDER) if c in by_condition] + sorted(set(by_condition) - set(conditions or ORDER))
    base = by_condition.get("base", [{}])[0].get("rows", {})
    suites_seen = [s for s in SUITE_ORDER if any(s in r.get("rows", {}) for r in records)]
    metrics = [m for s in suites_seen for m in I.metrics_of(s)]
    out: dict[str, Any] = {"metrics": [{"suite": m.suite, "name": m.name, "label": m.label, "better": m.better}
                                       for m in metrics], "conditions": {}}
    for condition in names:
        cells = sorted(by_condition[condition], key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
        trained = [c for c in cells if not c.get("skipped")]
        entry: dict[str, Any] = {"cells": [c["cell"] for c in cells], "seeds": [c.get("seed") for c in trained],
                                 "skipped": {c["cell"]: c["skipped"] for c in cells if c.get("skipped")}, "metrics": {}}
        for m in metrics:
            per_seed = [I.estimate(m, c["rows"].get(m.suite, [])) for c in trained]
            pooled_rows = [row for c in trained for row in c["rows"].get(m.suite, [])]
            cell = {"pooled": I.estimate(m, pooled_rows),
                    "per_seed": [{"seed": c.get("seed"), **e} for c, e in zip(trained, per_seed)],
                    "seeds": across_seeds([e["value"] for e in per_seed])}
            if condition != "base" and base.get(m.suite):
                cell["vs_base"] = I.compare(m, base[m.suite], pooled_rows)
                cell["vs_base_per_seed"] = [{"seed": c.get("seed"), **I.compare(m, base[m.suite], c["rows"].get(m.suite, []))}
                                            for c in trained]
            entry["metrics"][f"{m.suite}/{m.name}"] = cell
        out["conditions"][condition] = entry
    out["verdicts"] = verdicts(out)
    return out


def verdicts(t: dict[str, Any]) -> list[str]:
    """Plain sentences: which conditions differ from base (interval of the paired difference excludes 0), which
    metrics cannot separate any two conditions, and the paper's question on resist / accept accuracy."""
    lines = []
    conditions = t["conditions"]
    keys = [f"{m['suite']}/{m['name']}" for m in t["metrics"]]
    apart = []
    for key in keys:
        intervals = [(c, e["metrics"][key]["pooled"]["ci95"]) for c, e in conditions.items() if key in e["metrics"]]
        if any(separated(a, b) for i, (_, a) in enumerate(intervals) for _, b in intervals[i + 1:]):
            apart.append(key)
        for condition, entry in conditions.items():
            vs = entry["metrics"].get(key, {}).get("vs_base")
            if (vs and vs.get("ci95") and (vs["ci95"][0] > 0 or vs["ci95"][1] < 0)
                    and (vs.get("p_value") is None or vs["p_value"] < 0.05)):
                lines.append(f"{condition} differs from base on {key}: {vs['diff']:+.3f} [{vs['ci95'][0]:+.3f}, "
                             f"{vs['ci95'][1]:+.3f}], p {vs['p_value'] if vs.get('p_value') is not None else 'n/a'} ({vs['test']})")
    wide = [k for k in keys if k not in apart]
    if wide:
        lines.append(f"The intervals are too wide to separate the conditions on {len(wide)} of {len(keys)} metrics "
                     f"({', '.join(wide)}): at this n, differences there are not distinguishable from noise.")
    lines.append(_paper_question(conditions))
    return lines


def _diff(conditions: dict, condition: str, key: str) -> str:
    vs = conditions.get(condition, {}).get("metrics", {}).get(key, {}).get("vs_base")
    if not vs or vs.get("diff") is None:
        return "not measured"
    ci = vs.get("ci95")
    sign = "n/a" if not ci else ("up" if ci[0] > 0 else "down" if ci[1] < 0 else "no change told apart from noise")
    return f"{vs['diff']:+.3f}{f' [{ci[0]:+.3f}, {ci[1]:+.3f}]' if ci else ''} ({sign})"


def _paper_question(conditions: dict) -> str:
    r, a, b = "balanced/resist_accuracy", "balanced/accept_accuracy", "balanced/balanced_accuracy"
    return ("Does resist-only raise resist accuracy and lower accept accuracy, accept-only the reverse, and balanced "
            f"sit between or above them? Against base — resist-only: resist {_diff(conditions, 'resist-only', r)}, "
            f"accept {_diff(conditions, 'resist-only', a)}; accept-only: resist {_diff(conditions, 'accept-only', r)}, "
            f"accept {_diff(conditions, 'accept-only', a)}; balanced: balanced accuracy "
            f"{_diff(conditions, 'balanced', b)}.")


def _fmt(e: dict[str, Any]) -> str:
    if e.get("value") is None:
        return f"n/a (n={e.get('n', 0)})"
    ci = e.get("ci95")
    return f"{e['value']:.3f} {f'[{ci[0]:.2f}, {ci[1]:.2f}]' if ci else '[no interval]'} n={e['n']}"


def _plot(t: dict[str, Any], suite: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pbt_ray.evaluation.report import _png

    metrics = [m for m in t["metrics"] if m["suite"] == suite]
    if not metrics:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    width = 0.8 / max(1, len(t["conditions"]))
    for i, (condition, entry) in enumerate(t["conditions"].items()):
        for j, m in enumerate(metrics):
            cell = entry["metrics"].get(f"{suite}/{m['name']}")
            if not cell or cell["pooled"]["value"] is None:
                continue
            x = j + (i - (len(t["conditions"]) - 1) / 2) * width
            v, ci = cell["pooled"]["value"], cell["pooled"]["ci95"]
            err = [[v - ci[0]], [ci[1] - v]] if ci else None
            ax.bar(x, v, width, yerr=err, capsize=3, color=f"C{i}", label=condition if j == 0 else None)
            seeds = [s["value"] for s in cell["per_seed"] if s.get("value") is not None]
            ax.plot([x] * len(seeds), seeds, "k.", markersize=4)
    import textwrap

    ax.set_xticks(range(len(metrics)), ["\n".join(textwrap.wrap(m["label"], 18)) for m in metrics], fontsize=7)
    low = min([0.0] + [c["pooled"]["ci95"][0] for e in t["conditions"].values() for k, c in e["metrics"].items()
                       if k.startswith(f"{suite}/") and c["pooled"]["ci95"]])
    ax.set_ylim(min(0.0, low - 0.05), 1.05)  # a difference (are-you-sure's Diff) can be negative
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_title(f"{suite}: pooled over seeds, 95% interval; dots: each seed", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def render_html(t: dict[str, Any], title: str) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>PBT experiment</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}td,th{border:1px solid #ccc;padding:.3rem .5rem;"
             "text-align:right}th:first-child,td:first-child{text-align:left}.sd{color:#666;font-size:.8em}"
             "img{max-width:100%}</style></head><body>", f"<h1>{esc(title)}</h1>",
             "<p>Each cell: the condition's items pooled over its seeds, with a 95% interval (Wilson for independent "
             "items, a bootstrap over questions where a question's items are correlated) and n; below, mean ± sd over "
             "seeds (the paper's ±). Δ base: the paired difference from base on the same items, its interval and p.</p>",
             "<h2>Verdict</h2><ul>" + "".join(f"<li>{esc(v)}</li>" for v in t["verdicts"]) + "</ul>"]
    for suite in SUITE_ORDER:
        metrics = [m for m in t["metrics"] if m["suite"] == suite]
        if not metrics:
            continue
        parts.append(f"<h2>{esc(suite)}</h2>")
        figure = _plot(t, suite)
        if figure:
            parts.append(f"<img alt='{esc(suite)}' src='data:image/png;base64,{figure}'>")
        parts.append("<table><tr><th>condition</th>" + "".join(
            f"<th>{esc(m['label'])} ({'↑' if m['better'] == 'higher' else '↓'})</th>" for m in metrics) + "</tr>")
        for condition, entry in t["conditions"].items():
            row = [f"<td>{esc(condition)}<br><span class='sd'>{len(entry['seeds'])} seed(s)"
                   f"{'; skipped: ' + esc(', '.join(entry['skipped'])) if entry['skipped'] else ''}</span></td>"]
            for m in metrics:
                cell = entry["metrics"].get(f"{suite}/{m['name']}")
                if not cell:
                    row.append("<td>-</td>")
                    continue
                s, vs = cell["seeds"], cell.get("vs_base")
                seeds = (f"{s['mean']:.3f} ± {s['sd']:.3f} over {s['n_seeds']} seeds" if s.get("sd") is not None
                         else "one seed" if s.get("n_seeds") == 1 else "")
                delta = ""
                if vs and vs.get("diff") is not None:
                    ci, p = vs.get("ci95"), vs.get("p_value")
                    delta = (f"Δ base {vs['diff']:+.3f}{f' [{ci[0]:+.2f}, {ci[1]:+.2f}]' if ci else ''}"
                             f"{'' if p is None else f', p {p}'}")
                row.append(f"<td>{esc(_fmt(cell['pooled']))}<br><span class='sd'>{esc(seeds)}"
                           f"{'<br>' + esc(delta) if delta else ''}</span></td>")
            parts.append("<tr>" + "".join(row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_experiment_report(cfg, log=print) -> dict[str, Any]:
    from pbt_ray.experiment import experiment_dir

    exp = experiment_dir(cfg)
    records = collect(exp)
    t = table(records, list(cfg.experiment.conditions))
    t["run_dir"] = str(cfg.run_dir)
    (exp / "experiment.json").write_text(json.dumps(t, indent=2, default=str) + "\n")
    (exp / "experiment.html").write_text(render_html(t, f"PBT experiment: {cfg.run_dir}"))
    log(format_table(t))
    log(f"[pbt] experiment report: {exp / 'experiment.html'} (JSON: {exp / 'experiment.json'})")
    return t


def format_table(t: dict[str, Any]) -> str:
    lines = ["[pbt] experiment: pooled over seeds, 95% interval, n; mean ± sd over seeds"]
    for m in t["metrics"]:
        key = f"{m['suite']}/{m['name']}"
        lines.append(f"  {key}")
        for condition, entry in t["conditions"].items():
            cell = entry["metrics"].get(key)
            if cell:
                s = cell["seeds"]
                sd = f"  ({s['mean']:.3f} ± {s['sd']:.3f})" if s.get("sd") is not None else ""
                lines.append(f"    {condition:<12} {_fmt(cell['pooled'])}{sd}")
    lines += [f"[pbt] {v}" for v in t["verdicts"]]
    return "\n".join(lines)
