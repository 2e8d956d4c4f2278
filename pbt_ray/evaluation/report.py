"""`pbt report`: the evaluation results of a run as JSON and as one self-contained HTML page with plots.

Reads ``<run dir>/eval/<label>/<suite>/metrics.json`` and ``results.jsonl`` (labels: base, trained, ...) and
writes ``<run dir>/report/report.json`` and ``report.html``: every headline metric of every suite per model with
its n and 95% interval (:func:`pbt_ray.evaluation.items.summarize` over the suite's result rows), each model's
paired difference from base on the items both hold (:func:`pbt_ray.evaluation.items.compare`), plots with error
bars, plus example dialogues rendered by the tree viewer. Plots are PNGs inlined as base64, so the page is one
file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from pbt_ray.evaluation import items as I

SUITE_ORDER = ("balanced", "are-you-sure", "misinformation", "team")

INTERVALS_NOTE = ("Every rate is shown with its n and a 95% interval: a Wilson interval where the items are "
                  "independent, and a bootstrap over questions (2,000 resamples of whole questions) where items of "
                  "one question are correlated (the balanced pairs of one tree, the two speaking orders of a team "
                  "debate). Differences from base are paired on the items both models hold, with the same kind of "
                  "interval and a p-value (McNemar for independent 0/1 items, a sign-flip test over questions "
                  "otherwise); where the interval contains 0 the two models cannot be told apart at this n.")


def _ok(r: dict) -> bool:
    return "error" not in r


# Quantities shown below the headline table, defined as items (same intervals as the headline metrics).
SECONDARY: dict[str, tuple[I.Metric, ...]] = {
    "balanced": (
        I.Metric("balanced", "accuracy", "accuracy (all items)", "higher",
                 lambda r: _ok(r) and r.get("type") in ("resist", "accept"), lambda r: float(bool(r["correct"]))),),
    "are-you-sure": (
        I.Metric("are-you-sure", "flip_incorrect_to_correct", "wrong → right (of wrong)", "higher",
                 lambda r: _ok(r) and not r["before"], lambda r: float(bool(r["after"]))),),
    "misinformation": (
        I.Metric("misinformation", "initial_accuracy", "first answer right", "higher",
                 lambda r: _ok(r) and bool(r.get("adopted")), lambda r: float(bool(r.get("initial_correct")))),
        I.Metric("misinformation", "adoption_any_turn", "holds misinformation at any turn (all)", "lower",
                 lambda r: _ok(r) and bool(r.get("adopted")), lambda r: float(any(r["adopted"])))),
    "team": tuple(
        I.Metric("team", f"team_accuracy_{order}", f"team accuracy, {order.replace('_', ' ')}", "higher",
                 lambda r, o=order: _ok(r) and r.get("order") == o,
                 lambda r: (float(bool(r["strong_after"])) + float(bool(r["weak_after"]))) / 2)
        for order in ("strong_first", "weak_first")) + tuple(
        I.Metric("team", key, label, "higher", _ok, lambda r, k=key: float(bool(r[k])))
        for key, label in (("strong_before", "stronger model before"), ("strong_after", "stronger model after"),
                           ("weak_before", "weaker model before"))),
}


class ReportError(ValueError):
    pass


RERUN_EVAL = "rerun the evaluation that wrote it (`pbt eval SUITE`, `pbt run --from eval`) or move it away"


def load_json(path: Path, fix: str = RERUN_EVAL) -> Any:
    """A JSON file the report reads; a truncated or hand-broken one is a ReportError naming it, not a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc}); {fix}") from None


def load_jsonl(path: Path, fix: str = RERUN_EVAL) -> list[Any]:
    """The rows of a JSON-lines file; a broken line is a ReportError naming the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not readable ({exc}); {fix}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ReportError(f"{path} line {number}: not JSON ({exc.msg}); {fix}") from None
    return rows


def collect(run_dir: Path) -> dict[str, dict[str, dict]]:
    """{label: {suite: metrics.json content}} for every evaluation of the run."""
    root = Path(run_dir) / "eval"
    found: dict[str, dict[str, dict]] = {}
    for path in sorted(root.glob("*/*/metrics.json")):
        label, suite = path.parent.parent.name, path.parent.name
        found.setdefault(label, {})[suite] = load_json(path)
    if not found:
        raise ReportError(f"no evaluation results under {root}; run `pbt eval <suite>` (or `pbt run`) first")
    return found


def read_rows(run_dir: Path, label: str, suite: str) -> list[dict] | None:
    """The rows of ``<run dir>/eval/<label>/<suite>/results.jsonl`` (None when there is no such file)."""
    path = Path(run_dir) / "eval" / label / suite / "results.jsonl"
    if not path.is_file():
        return None
    return load_jsonl(path)


def adoption_per_turn(rows: list[dict]) -> list[dict[str, Any]]:
    """Misinformation: per persuasion turn, how many items hold the target after it, of the items that reached
    it (failed items excluded), with the Wilson interval (:func:`pbt_ray.stats.proportion`)."""
    from pbt_ray.stats import proportion

    adopted = [r["adopted"] for r in rows if _ok(r) and r.get("adopted")]
    turns = max((len(a) for a in adopted), default=0)
    return [proportion(sum(bool(a[t]) for a in adopted if len(a) > t), sum(len(a) > t for a in adopted))
            for t in range(turns)]


def _numbers(suite: str, rows: list[dict] | None, base_rows: list[dict] | None, with_base: bool) -> dict[str, Any]:
    """Estimates, secondary estimates, per-turn adoption of one suite's rows and, ``with_base``, the paired
    comparison with base's rows (None when either side has no rows)."""
    out: dict[str, Any] = {"estimates": None, "secondary": None}
    if with_base:
        out["vs_base"] = None
    if rows is None:
        return out
    try:
        out["estimates"] = I.summarize(suite, rows)
        out["secondary"] = {m.name: {"label": m.label, "better": m.better, **I.estimate(m, rows)}
                            for m in SECONDARY.get(suite, ())}
        if suite == "misinformation":
            out["adoption_per_turn"] = adoption_per_turn(rows)
        if with_base and base_rows is not None:
            out["vs_base"] = {m.name: I.compare(m, base_rows, rows) for m in I.metrics_of(suite)}
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # rows of another format: say so, show no numbers
        out.update(estimates=None, secondary=None, estimates_error=f"{type(exc).__name__}: {exc}")
        out.pop("adoption_per_turn", None)
        if "vs_base" in out:
            out["vs_base"] = None
    return out


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(title: str, groups: list[str], series: dict[str, list[dict | None]], colors: dict[str, str],
          ylabel: str = "accuracy") -> str:
    """Grouped bars, one per (group, model) estimate, each with its 95% interval as an asymmetric error bar and
    its n at the foot; no bar where the value is None, no error bar where there is no interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / max(1, len(series))
    for i, (name, estimates) in enumerate(series.items()):
        xs, ys, low, high = [], [], [], []
        for g, est in enumerate(estimates):
            if not est or est.get("value") is None:
                continue
            v, ci = est["value"], est.get("ci95")
            x = g + (i - (len(series) - 1) / 2) * width
            xs.append(x)
            ys.append(v)
            low.append(max(0.0, v - ci[0]) if ci else 0.0)
            high.append(max(0.0, ci[1] - v) if ci else 0.0)
            ax.text(x, 0.015, f"n={est['n']}" + ("" if ci else "\nno CI"), ha="center", va="bottom", fontsize=6,
                    color="#222")
        ax.bar(xs, ys, width, yerr=[low, high], capsize=3, color=colors[name], alpha=0.85, label=name,
               error_kw={"elinewidth": 1, "ecolor": "#333"})
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{ylabel} (bars: 95% CI)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _per_turn_plot(summary: dict, colors: dict[str, str]) -> str | None:
    """Misinformation adoption per turn, one line per model, with each turn's Wilson interval."""
    lines = {label: suites["misinformation"].get("adoption_per_turn") for label, suites in summary.items()
             if "misinformation" in suites}
    lines = {label: turns for label, turns in lines.items() if turns}
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for i, (label, turns) in enumerate(lines.items()):
        shift = (i - (len(lines) - 1) / 2) * 0.06  # side by side, so the intervals do not hide each other
        kept = [(t + 1 + shift, p) for t, p in enumerate(turns) if p["accuracy"] is not None]
        xs, ys = [x for x, _ in kept], [p["accuracy"] for _, p in kept]
        err = [[max(0.0, p["accuracy"] - p["ci95"][0]) for _, p in kept],
               [max(0.0, p["ci95"][1] - p["accuracy"]) for _, p in kept]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=colors[label], label=label)
    turns = max(len(t) for t in lines.values())
    ax.set_xticks(range(1, turns + 1))
    ax.set_xlabel("persuasion turn", fontsize=8)
    ax.set_ylabel("holds the misinformation (bars: 95% CI)", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("Misinformation adoption per turn (lower is better)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def plots(summary: dict[str, dict[str, dict]]) -> dict[str, str]:
    """One figure per suite from the report's estimates (see :func:`write_report`), every bar or point with its
    95% interval. A suite without result rows for any model has no figure."""
    labels = list(summary)
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    figures: dict[str, str] = {}

    def series(suite: str, names: list[str]) -> dict[str, list[dict | None]]:
        found = {}
        for label in labels:
            data = summary[label].get(suite) or {}
            pool = {**(data.get("estimates") or {}), **(data.get("secondary") or {})}
            if pool:
                found[label] = [pool.get(name) for name in names]
        return found

    layout = {
        "balanced": ("Balanced persuasion: resist vs accept", ["resist (+ → −)", "accept (− → +)", "balanced"],
                     ["resist_accuracy", "accept_accuracy", "balanced_accuracy"]),
        "are-you-sure": ('"Are you sure?": accuracy before and after the challenge', ["before", "after"],
                         ["acc_before", "acc_after"]),
        "team": ("Team accuracy by speaking order", ["both orders", "strong first", "weak first", "weaker model after"],
                 ["team_accuracy", "team_accuracy_strong_first", "team_accuracy_weak_first", "weak_after"]),
    }
    for suite in SUITE_ORDER:
        if suite == "misinformation":
            figure = _per_turn_plot(summary, colors)
            if figure:
                figures[suite] = figure
            continue
        title, groups, names = layout[suite]
        found = series(suite, names)
        if found:
            figures[suite] = _bars(title, groups, found, colors)
    return figures


def _examples(run_dir: Path, limit: int = 2) -> list[tuple[str, str]]:
    """(title, html) of a few team dialogues, rendered as trees by the viewer."""
    from pbt_ray.dialogue.tree import Node, Tree
    from pbt_ray.dialogue.view import render_html

    out = []
    for path in sorted(Path(run_dir).glob("eval/*/team/results.jsonl")):
        for row in load_jsonl(path)[:limit]:
            if "turns" not in row:
                continue
            tree = Tree(tree_id=f"{path.parent.parent.name}:{row['question_id']}:{row['order']}",
                        question_id=row["question_id"], question=row["question_id"], gold=[], mode="eval",
                        models={}, roles={"persuader": "A", "persuadee": "B"}, seed=0)
            for i, turn in enumerate(row["turns"]):
                tree.nodes.append(Node(id=i, parent=i - 1, depth=i, speaker=turn["speaker"], role="independent",
                                       family="sp", text=turn["text"], answer=turn["answer"], correct=turn["correct"],
                                       outcome=turn.get("outcome") or ("answer" if turn["answer"] else "none"),
                                       raw_answer=turn.get("raw_answer"), read_by=turn.get("read_by")))
            out.append((tree.tree_id, render_html(tree)))
    return out


def _extractor_words(metrics: dict) -> str:
    """Who read a suite's answers: the deterministic reader (extract.mode rules) or the extractor model."""
    model = metrics.get("served", {}).get("extractor", metrics.get("extractor"))
    mode = metrics.get("extract_mode")
    if mode == "rules":
        return "the deterministic reader (extract.mode rules)"
    return f"{model} (extract.mode {mode})" if mode else str(model)


def _readings_of(record: dict) -> list[dict]:
    """The instrument's readings in one results.jsonl record, whatever the suite."""
    if "reading" in record:
        return [record["reading"]]
    if "readings" in record:
        return list(record["readings"])
    return [{"outcome": t.get("outcome"), "read_by": t.get("read_by")} for t in record.get("turns", [])]


def _rate(rate: float, ci95: list[float] | None) -> str:
    return f"{rate:.2f}" + (f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 else " [n too small]")


def reading_stats(run_dir: Path, label: str, suite: str) -> dict[str, Any] | None:
    """What the answer instrument read in a suite's replies: counts by outcome and by the step that read them."""
    path = Path(run_dir) / "eval" / label / suite / "results.jsonl"
    if not path.is_file():
        return None
    from pbt_ray.stats import cluster_rate

    outcomes: dict[str, int] = {}
    read_by: dict[str, int] = {}
    per_item: list[tuple[int, int]] = []  # (NONE, readings) of each item: an item's replies are not independent
    for row in load_jsonl(path):
        readings = [r for r in _readings_of(row) if r.get("outcome") is not None]
        for reading in readings:
            outcomes[reading["outcome"]] = outcomes.get(reading["outcome"], 0) + 1
            step = reading.get("read_by") or "unknown"
            read_by[step] = read_by.get(step, 0) + 1
        per_item.append((sum(r["outcome"] == "none" for r in readings), len(readings)))
    n = sum(outcomes.values())
    if not n:
        return None
    rate = cluster_rate(*zip(*per_item))
    return {"n": n, "items": rate["clusters"], "outcomes": outcomes, "read_by": read_by, "none_rate": rate["rate"],
            "none_rate_ci95": rate["ci95"]}


def write_report(run_dir: str | Path, log=print) -> dict[str, Any]:
    """Write ``report/report.json`` and ``report/report.html`` for the run. Per model and suite the JSON holds
    the metrics.json numbers, the answer readings, ``estimates`` (every headline metric with value, n, clusters,
    ci95 and method; None without results.jsonl), ``secondary`` (the same for the quantities of the smaller table)
    and, for every model but base whose suite base has too, ``vs_base`` (the paired difference per metric)."""
    run_dir = Path(run_dir)
    results = collect(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = {(label, suite): read_rows(run_dir, label, suite) for label, suites in results.items() for suite in suites}

    def order(kv):
        return SUITE_ORDER.index(kv[0]) if kv[0] in SUITE_ORDER else 9

    summary = {}
    for label, suites in results.items():
        summary[label] = {}
        for suite, r in sorted(suites.items(), key=order):
            with_base = label != "base" and suite in results.get("base", {})
            summary[label][suite] = {"model": r.get("served", {}).get("model", r.get("model")),
                                     "extractor": _extractor_words(r), "items": r.get("items"),
                                     "failed": r.get("failed"), "metrics": r.get("metrics"),
                                     "readings": reading_stats(run_dir, label, suite),
                                     **_numbers(suite, rows[(label, suite)], rows.get(("base", suite)), with_base)}
    from pbt_ray.evaluation import run_sections

    run_facts = run_sections.facts(run_dir)
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "run.json").write_text(json.dumps(run_facts, indent=2, default=str) + "\n")  # grow, mine, train per round
    figures = plots(summary)
    pyplot = _pyplot()
    for name, f in run_facts.items():
        for key, draw in (("data", run_sections.data_plot), ("train", run_sections.training_plot)):
            fig = draw(name, f, pyplot)
            if fig is not None:
                figures[f"{key}:{name}"] = _png(fig)
    from pbt_ray.evaluation.tree_browser import write_tree_browser

    try:
        trees_link = "trees/index.html" if write_tree_browser(run_dir, out / "trees") else None
    except Exception as exc:  # noqa: BLE001 - e.g. a corrupt part file: the report is still written, and says so
        log(f"[pbt] tree browser not written: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        trees_link = None
    examples_dir = out / "dialogues"
    examples_dir.mkdir(exist_ok=True)
    links = []
    for title, page in _examples(run_dir):
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in title) + ".html"
        (examples_dir / name).write_text(page)
        links.append((title, f"dialogues/{name}"))
    (out / "report.html").write_text(_html(summary, figures, links, run_sections.sections_html(run_facts, figures, trees_link)))
    log(f"[pbt] report: {out / 'report.html'} (JSON: {out / 'report.json'})")
    return summary


def _misinformation_html(rows: list[tuple[str, dict]]) -> str:
    """Farm's metric: adoption among the items the model first answered right, with its count and interval,
    per appeal too (the appeal order rotates, so no appeal always comes first), and where the targets came from."""
    esc = html.escape
    out = ["<p>Adoption among the items the model first answered right (Farm's rate; lower is better), "
           "95% Wilson interval, and per appeal at the belief check right after it.</p>",
           "<table class='farm'><tr><th>model</th><th>first right</th><th>adopted at the end</th><th>adopted at any turn</th>"
           "<th>per appeal</th><th>targets</th></tr>"]
    for label, data in rows:
        m = data["metrics"] or {}
        if "adoption_given_correct" not in m:
            continue
        knew = m.get("n_initial_correct", 0)

        def cell(key: str, hits_key: str) -> str:
            return f"{_rate(m[key], m.get(key + '_ci95')) if knew else 'n/a'} ({m.get(hits_key, 0)} of {knew})"

        appeals = "<br>".join(esc(f"{name} {_rate(a['rate'], a.get('ci95')) if a['n'] else 'n/a'} (n {a['n']})")
                              for name, a in (m.get("adoption_per_appeal") or {}).items())
        sources = ", ".join(f"{k} {v}" for k, v in sorted((m.get("targets_by_source") or {}).items()))
        out.append(f"<tr><td>{esc(label)}</td><td>{knew} of {m.get('n', 0)}</td>"
                   f"<td>{cell('adoption_given_correct', 'n_adopted_given_correct')}</td>"
                   f"<td>{cell('adoption_given_correct_any_turn', 'n_adopted_given_correct_any_turn')}</td>"
                   f"<td>{appeals}</td><td>{esc(sources)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _cell(est: dict | None, error: str | None = None) -> str:
    """One estimate as ``value [low, high] n=N`` (``in K questions`` under the cluster bootstrap), escaped."""
    esc = html.escape
    if est is None:
        return "<span class='na'>" + esc(f"n/a ({'unreadable results.jsonl' if error else 'no results.jsonl'})") + "</span>"
    n = est.get("n") or 0
    if not n:
        return "<span class='na'>n/a (n=0)</span>"
    count = f"n={n}" + (f" in {_plural(est.get('clusters') or 0, 'question')}"
                        if est.get("method") == "cluster bootstrap" else "")
    if est.get("value") is None:
        return f"<span class='na'>n/a ({esc(count)})</span>"
    ci = est.get("ci95")
    interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[no interval: too few questions]"
    return f"<b>{est['value']:.3f}</b> <span class='ci'>{esc(interval)} {esc(count)}</span>"


def _direction(better: str) -> str:
    return "<span class='dir'>" + ("↑ higher is better" if better == "higher" else "↓ lower is better") + "</span>"


def _reading(d: dict, better: str) -> tuple[str, str]:
    """(css class, words) for a paired difference."""
    if not d.get("n"):
        return "same", "no items in common with base"
    ci = d.get("ci95")
    if d.get("diff") is None or not ci:
        return "same", "no interval (too few questions): cannot be told apart from base at this n"
    if ci[0] <= 0 <= ci[1]:
        return "same", "cannot be told apart from base at this n"
    good = (ci[0] > 0) == (better == "higher")
    return ("better", "better than base") if good else ("worse", "worse than base")


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _vs_base_html(label: str, data: dict, metrics: list[I.Metric]) -> str:
    esc = html.escape
    head = f"<p class='vs'><b>{esc(label)} − base</b>, paired on the items both hold:</p>"
    vs = data.get("vs_base")
    if not vs:
        return head.replace(":</p>", ": no comparison (results.jsonl missing or unreadable on one side).</p>")
    out = [head, "<table class='diff'><tr><th>metric</th><th>difference [95% CI]</th><th>paired n</th><th>p</th>"
                 "<th>test</th><th>reading</th></tr>"]
    for m in metrics:
        d = vs.get(m.name) or {"n": 0}
        ci = d.get("ci95")
        diff = (f"{d['diff']:+.3f} " + (f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "[no interval]")
                if d.get("diff") is not None else "n/a")
        css, words = _reading(d, m.better)
        out.append(f"<tr><td>{esc(m.label)}</td><td>{esc(diff)}</td><td>{d.get('n', 0)}</td><td>{_p(d.get('p_value'))}</td>"
                   f"<td>{esc(str(d.get('test') or '—'))}</td><td class='{css}'>{esc(words)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _secondary_html(suite: str, rows: list[tuple[str, dict]]) -> str:
    """The smaller table: items and failures, the suite's secondary rates (with n and interval) and its counts."""
    esc = html.escape
    lines = [("items (failed)", [f"{d.get('items')} ({d.get('failed')} failed)" for _, d in rows])]
    for m in SECONDARY.get(suite, ()):
        lines.append((m.label, [_cell((d.get("secondary") or {}).get(m.name) if d.get("secondary") is not None else None,
                                      d.get("estimates_error")) for _, d in rows]))
    farm = {"n_initial_correct", "n_adopted_given_correct", "n_adopted_given_correct_any_turn"}
    counts = [k for k, v in ((rows[0][1].get("metrics") or {}).items())
              if isinstance(v, int) and not isinstance(v, bool) and k not in farm]
    for k in counts:
        lines.append((k, [esc(str((d.get("metrics") or {}).get(k, "—"))) for _, d in rows]))
    out = ["<table class='secondary'><tr><th>more</th>"
           + "".join(f"<th>{esc(label)}</th>" for label, _ in rows) + "</tr>"]
    out += [f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for name, cells in lines]
    out.append("</table>")
    return "\n".join(out)


def _html(summary: dict, figures: dict[str, str], links: list[tuple[str, str]], run_html: str = "") -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>PBT evaluation report</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222}"
             "table{border-collapse:collapse;margin:.8rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
             "text-align:right;white-space:nowrap}th{background:#f4f4f4}"
             "th:first-child,td:first-child{text-align:left}img{max-width:100%}"
             ".ci{color:#555;font-size:.9em}.na{color:#888}.dir{display:block;color:#888;font-size:.75em}"
             "table.secondary,table.diff,table.farm{font-size:.85em}table.diff td:nth-child(n+5){white-space:normal}"
             "table.diff td:nth-child(n+5),table.diff th:nth-child(n+5){text-align:left}.same{color:#666;font-style:italic}"
             ".better{color:#1a7f37}.worse{color:#b42318}.vs{margin:.8rem 0 0}.note{color:#444;font-size:.95em}"
             "h2{margin-top:2.2rem;border-bottom:1px solid #ddd}</style></head><body>",
             "<h1>PBT evaluation report</h1>"]
    extractors = sorted({str(s.get("extractor")) for suites in summary.values() for s in suites.values()})
    parts.append(f"<p>Models: {esc(', '.join(summary))}. Answers read by: {esc(', '.join(extractors))}.</p>")
    parts.append(f"<p class='note'>{esc(INTERVALS_NOTE)}</p>")
    for suite in SUITE_ORDER:
        rows = [(label, suites[suite]) for label, suites in summary.items() if suite in suites]
        if not rows:
            continue
        parts.append(f"<h2>{esc(suite)}</h2>")
        if suite in figures:
            parts.append(f"<img alt='{esc(suite)}' src='data:image/png;base64,{figures[suite]}'>")
        metrics = I.metrics_of(suite)
        parts.append("<table class='estimates'><tr><th>metric</th>"
                     + "".join(f"<th>{esc(label)} ({esc(str(data['model']))})</th>" for label, data in rows) + "</tr>")
        for m in metrics:
            cells = [_cell((data.get("estimates") or {}).get(m.name) if data.get("estimates") is not None else None,
                           data.get("estimates_error")) for _, data in rows]
            parts.append(f"<tr><td>{esc(m.label)}{_direction(m.better)}</td>"
                         + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        for label, data in rows:
            if data.get("estimates_error"):
                parts.append(f"<p class='na'>{esc(label)}: results.jsonl could not be read as {esc(suite)} items "
                             f"({esc(data['estimates_error'])}).</p>")
        for label, data in rows:
            if label != "base" and "vs_base" in data:
                parts.append(_vs_base_html(label, data, metrics))
        if suite == "misinformation":
            parts.append(_misinformation_html(rows))
        parts.append(_secondary_html(suite, rows))
    read_rows = [(label, suite, s["readings"]) for label, suites in summary.items() for suite, s in suites.items()
                 if s.get("readings")]
    if read_rows:
        parts.append("<h2>How answers were read</h2><p>Every reply above was read by one instrument "
                     "(<code>pbt bench extract</code> measures it on labelled replies): what it read in each suite, "
                     "and which step read it (rule: the deterministic reader; constrained: the extractor model limited "
                     "to the reply's spans or the choice labels).</p>")
        parts.append("<table class='secondary'><tr><th>model</th><th>suite</th><th>replies read</th><th>answer</th>"
                     "<th>agree</th><th>disagree</th><th>none</th><th>NONE rate [95% CI, bootstrap over items]</th>"
                     "<th>read by</th></tr>")
        for label, suite, r in read_rows:
            by = ", ".join(f"{k} {v}" for k, v in sorted(r["read_by"].items()))
            parts.append(f"<tr><td>{esc(label)}</td><td>{esc(suite)}</td><td>{r['n']}</td>"
                         + "".join(f"<td>{r['outcomes'].get(o, 0)}</td>" for o in ("answer", "agree", "disagree", "none"))
                         + f"<td>{_rate(r['none_rate'], r.get('none_rate_ci95'))} n={r['n']} in "
                         f"{_plural(r['items'], 'item')}</td><td>{esc(by)}</td></tr>")
        parts.append("</table>")
    if run_html:
        parts.append(run_html)
    if links:
        parts.append("<h2>Example dialogues</h2><ul>")
        parts += [f"<li><a href='{esc(href)}'>{esc(title)}</a></li>" for title, href in links]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
