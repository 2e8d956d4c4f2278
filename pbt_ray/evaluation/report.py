"""`pbt report`: the evaluation results of a run as JSON and as one self-contained HTML page with plots.

Reads ``<run dir>/eval/<label>/<suite>/metrics.json`` (labels: base, trained, ...) and writes
``<run dir>/report/report.json`` and ``report.html``: resist vs accept per model, accuracy before/after the
"are you sure?" challenge, misinformation adoption per turn, team accuracy by speaking order, every model
side by side, plus example dialogues rendered by the tree viewer. Plots are PNGs inlined as base64, so the
page is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

SUITE_ORDER = ("balanced", "are-you-sure", "misinformation", "team")


class ReportError(ValueError):
    pass


def collect(run_dir: Path) -> dict[str, dict[str, dict]]:
    """{label: {suite: metrics.json content}} for every evaluation of the run."""
    root = Path(run_dir) / "eval"
    found: dict[str, dict[str, dict]] = {}
    for path in sorted(root.glob("*/*/metrics.json")):
        label, suite = path.parent.parent.name, path.parent.name
        found.setdefault(label, {})[suite] = json.loads(path.read_text())
    if not found:
        raise ReportError(f"no evaluation results under {root}; run `pbt eval <suite>` (or `pbt run`) first")
    return found


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _bars(title: str, groups: list[str], series: dict[str, list[float]], ylabel: str = "accuracy") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [0 if v != v else v for v in values], width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def plots(results: dict[str, dict[str, dict]]) -> dict[str, str]:
    labels = list(results)
    figures: dict[str, str] = {}

    def metric(label: str, suite: str, key: str, default=float("nan")):
        return results[label].get(suite, {}).get("metrics", {}).get(key, default)

    if any("balanced" in r for r in results.values()):
        figures["balanced"] = _bars("Balanced persuasion: resist vs accept", ["resist (+ → −)", "accept (− → +)", "balanced"],
                                    {lb: [metric(lb, "balanced", k) for k in ("resist_accuracy", "accept_accuracy",
                                                                           "balanced_accuracy")] for lb in labels})
    if any("are-you-sure" in r for r in results.values()):
        figures["are-you-sure"] = _bars('"Are you sure?": accuracy before and after the challenge', ["before", "after"],
                                        {lb: [metric(lb, "are-you-sure", "acc_before"), metric(lb, "are-you-sure", "acc_after")]
                                         for lb in labels})
    if any("misinformation" in r for r in results.values()):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for lb in labels:
            per_turn = metric(lb, "misinformation", "adoption_per_turn", [])
            if per_turn:
                ax.plot(range(1, len(per_turn) + 1), [0 if v != v else v for v in per_turn], marker="o", label=lb)
        ax.set_xlabel("persuasion turn")
        ax.set_ylabel("adopted the misinformation")
        ax.set_ylim(0, 1)
        ax.set_title("Misinformation adoption per turn (lower is better)")
        ax.legend(fontsize=8)
        figures["misinformation"] = _png(fig)
    if any("team" in r for r in results.values()):
        figures["team"] = _bars("Team accuracy by speaking order", ["strong first", "weak first"],
                                {lb: [metric(lb, "team", "team_accuracy_by_order", {}).get(o, float("nan"))
                                      for o in ("strong_first", "weak_first")] for lb in labels})
    return figures


def _examples(run_dir: Path, limit: int = 2) -> list[tuple[str, str]]:
    """(title, html) of a few team dialogues, rendered as trees by the viewer."""
    from pbt_ray.dialogue.tree import Node, Tree
    from pbt_ray.dialogue.view import render_html

    out = []
    for path in sorted(Path(run_dir).glob("eval/*/team/results.jsonl")):
        for line in path.read_text().splitlines()[:limit]:
            row = json.loads(line)
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
    for line in path.read_text().splitlines():
        readings = [r for r in _readings_of(json.loads(line)) if r.get("outcome") is not None]
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
    run_dir = Path(run_dir)
    results = collect(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = {label: {suite: {"model": r.get("served", {}).get("model", r.get("model")),
                               "extractor": _extractor_words(r), "items": r.get("items"),
                               "failed": r.get("failed"), "metrics": r.get("metrics"),
                               "readings": reading_stats(run_dir, label, suite)}
                       for suite, r in sorted(suites.items(), key=lambda kv: SUITE_ORDER.index(kv[0]) if kv[0] in SUITE_ORDER else 9)}
               for label, suites in results.items()}
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    figures = plots(results)
    examples_dir = out / "dialogues"
    examples_dir.mkdir(exist_ok=True)
    links = []
    for title, page in _examples(run_dir):
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in title) + ".html"
        (examples_dir / name).write_text(page)
        links.append((title, f"dialogues/{name}"))
    (out / "report.html").write_text(_html(summary, figures, links))
    log(f"[pbt] report: {out / 'report.html'} (JSON: {out / 'report.json'})")
    return summary


def _misinformation_html(rows: list[tuple[str, dict]]) -> str:
    """Farm's metric: adoption among the items the model first answered right, with its count and interval,
    per appeal too (the appeal order rotates, so no appeal always comes first), and where the targets came from."""
    esc = html.escape
    out = ["<p>Adoption among the items the model first answered right (Farm's rate; lower is better), "
           "95% Wilson interval, and per appeal at the belief check right after it.</p>",
           "<table><tr><th>model</th><th>first right</th><th>adopted at the end</th><th>adopted at any turn</th>"
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


def _html(summary: dict, figures: dict[str, str], links: list[tuple[str, str]]) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>PBT evaluation report</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}"
             "th:first-child,td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             "<h1>PBT evaluation report</h1>"]
    extractors = sorted({str(s.get("extractor")) for suites in summary.values() for s in suites.values()})
    parts.append(f"<p>Models: {esc(', '.join(summary))}. Answers read by: {esc(', '.join(extractors))}.</p>")
    for suite in SUITE_ORDER:
        rows = [(label, suites[suite]) for label, suites in summary.items() if suite in suites]
        if not rows:
            continue
        parts.append(f"<h2>{esc(suite)}</h2>")
        if suite in figures:
            parts.append(f"<img alt='{esc(suite)}' src='data:image/png;base64,{figures[suite]}'>")
        keys = [k for k, v in rows[0][1]["metrics"].items() if isinstance(v, (int, float))]
        if suite == "misinformation":  # the Farm rates, counts and intervals have their own table below
            keys = [k for k in keys if k in ("adoption_final", "adoption_any_turn", "n", "initial_accuracy")]
        parts.append("<table><tr><th>model</th>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>")
        for label, data in rows:
            cells = []
            for k in keys:
                v = data["metrics"].get(k)
                cells.append("n/a" if isinstance(v, float) and v != v else (f"{v:.3f}" if isinstance(v, float) else esc(str(v))))
            parts.append(f"<tr><td>{esc(label)} ({esc(str(data['model']))})</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        if suite == "misinformation":
            parts.append(_misinformation_html(rows))
    read_rows = [(label, suite, s["readings"]) for label, suites in summary.items() for suite, s in suites.items()
                 if s.get("readings")]
    if read_rows:
        parts.append("<h2>How answers were read</h2><p>Every reply above was read by one instrument "
                     "(<code>pbt bench extract</code> measures it on labelled replies): what it read in each suite, "
                     "and which step read it (rule: the deterministic reader; constrained: the extractor model limited "
                     "to the reply's spans or the choice labels).</p>")
        parts.append("<table><tr><th>model</th><th>suite</th><th>replies read</th><th>answer</th><th>agree</th>"
                     "<th>disagree</th><th>none</th><th>NONE rate [95% CI, bootstrap over items]</th><th>read by</th></tr>")
        for label, suite, r in read_rows:
            by = ", ".join(f"{k} {v}" for k, v in sorted(r["read_by"].items()))
            parts.append(f"<tr><td>{esc(label)}</td><td>{esc(suite)}</td><td>{r['n']}</td>"
                         + "".join(f"<td>{r['outcomes'].get(o, 0)}</td>" for o in ("answer", "agree", "disagree", "none"))
                         + f"<td>{_rate(r['none_rate'], r.get('none_rate_ci95'))}</td><td>{esc(by)}</td></tr>")
        parts.append("</table>")
    if links:
        parts.append("<h2>Example dialogues</h2><ul>")
        parts += [f"<li><a href='{esc(href)}'>{esc(title)}</a></li>" for title, href in links]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
