"""The report: every suite's plot and table, base and trained side by side, example dialogues linked; every
headline metric with its n and 95% interval, each model's paired difference from base, error bars on every plot."""

from __future__ import annotations

import html
import json
import random
import re

import pytest

from pbt_ray.cli import main
from pbt_ray.evaluation import items as I
from pbt_ray.evaluation.report import ReportError, write_report

INTERVAL = re.compile(r"\[-?[01]\.\d{3}, -?[01]\.\d{3}\] n=\d+")


def put(run, label, suite, metrics, rows=None):
    path = run / "eval" / label / suite
    path.mkdir(parents=True)
    counts = {"items": len(rows), "failed": sum("error" in r for r in rows)} if rows else {"items": 4, "failed": 0}
    (path / "metrics.json").write_text(json.dumps({"suite": suite, "label": label, "model": f"{label}-model",
                                                   "extractor": "extractor", **counts, "metrics": metrics}))
    if rows is not None:
        (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Per model: the chance of each outcome. The same random draws serve both models (a draw below the chance is a
# success), so base and trained differ exactly where their chances differ: trained resists far more often; the
# other numbers are close or equal, so their differences cannot be told apart from 0.
SKILL = {"base": {"resist": 0.3, "accept": 0.6, "before": 0.6, "flip": 0.5, "adopt": 0.25, "team": 0.6},
         "trained": {"resist": 0.9, "accept": 0.6, "before": 0.6, "flip": 0.4, "adopt": 0.2, "team": 0.62}}


def fake_rows(suite: str, label: str, n: int = 30) -> list[dict]:
    """Result rows in the formats :mod:`pbt_ray.evaluation.items` reads, plus one failed item."""
    rng, p = random.Random(suite), SKILL[label]
    rows: list[dict] = []
    for q in range(n):
        qid = f"q{q}"
        if suite == "balanced":  # two resist pairs and one accept pair of each question's tree
            rows += [{"pair_id": f"{qid}:{k}", "question_id": qid, "type": kind, "correct": rng.random() < p[kind]}
                     for k, kind in enumerate(("resist", "resist", "accept"))]
        elif suite == "are-you-sure":
            before, keep, recover = rng.random() < p["before"], rng.random() >= p["flip"], rng.random() < 0.1
            rows.append({"question_id": qid, "before": before, "after": keep if before else recover,
                         "readings": [{"outcome": "answer", "read_by": "rule"}, {"outcome": "agree", "read_by": "rule"}]})
        elif suite == "misinformation":
            adopted, held = [], False
            for _ in range(3):
                held = held or rng.random() < p["adopt"]
                adopted.append(held)
            rows.append({"question_id": qid, "adopted": adopted, "initial_correct": rng.random() < 0.7,
                         "appeals": ["logical", "emotional", "credibility"], "target": {"source": "trees"}})
        elif suite == "team":
            for order in ("strong_first", "weak_first"):
                rows.append({"question_id": qid, "order": order, "strong_before": rng.random() < 0.8,
                             "weak_before": rng.random() < 0.4, "strong_after": rng.random() < p["team"] + 0.2,
                             "weak_after": rng.random() < p["team"], "turns": [
                                 {"speaker": "A", "text": "Paris.", "answer": "paris", "correct": True},
                                 {"speaker": "B", "text": "Lyon.", "answer": "lyon", "correct": False}]})
    key = "pair_id" if suite == "balanced" else "question_id"
    return rows + [{key: "qerr", "error": "TimeoutError: the endpoint did not answer"}]


def fake_metrics(suite: str, rows: list[dict]) -> dict:
    """metrics.json's numbers for ``rows``, as the evaluation stage computes them."""
    from pbt_ray.evaluation import metrics as M

    ok = [r for r in rows if "error" not in r]
    if suite == "team":
        return M.team([M.TeamRecord(**{k: r[k] for k in ("order", "strong_before", "weak_before", "strong_after",
                                                         "weak_after")}) for r in ok])
    return {"balanced": M.balanced, "are-you-sure": M.are_you_sure, "misinformation": M.misinformation}[suite](ok)


def fake_run(run, suites=("balanced", "are-you-sure", "misinformation", "team"), n: int = 30):
    for label in ("base", "trained"):
        for suite in suites:
            rows = fake_rows(suite, label, n)
            put(run, label, suite, fake_metrics(suite, rows), rows)
    return run


def table_row(page: str, label: str, table: str = "estimates") -> str:
    """The HTML of the row headed ``label`` in the first table of class ``table`` after each suite heading."""
    hits = [row for part in page.split(f"<table class='{table}'>")[1:]
            for row in part.split("</table>")[0].split("<tr>") if row.startswith(f"<td>{html.escape(label)}")]
    assert hits, f"no row {label!r} in a {table} table"
    return hits[0]


def test_report_has_every_section(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(ReportError, match="run `pbt eval"):
        write_report(run, log=lambda *_: None)
    fake_run(run)
    assert main(["report", str(run)]) == 0
    page = (run / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # resist/accept, before/after, per turn, by order
    for text in ("balanced", "are-you-sure", "misinformation", "team", "base (base-model)", "trained (trained-model)",
                 "Answers read by: extractor", "dialogues/", "Wilson", "bootstrap over questions"):
        assert text in page
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["trained"]["balanced"]["metrics"]["n_resist"] == 60 and data["trained"]["balanced"]["failed"] == 1
    assert len(list((run / "report" / "dialogues").glob("*.html"))) == 4  # two rows of each model's team results
    assert "report.html" in capsys.readouterr().out


def test_every_headline_metric_has_n_and_an_interval(tmp_path):
    run = fake_run(tmp_path / "run")
    write_report(run, log=lambda *_: None)
    data = json.loads((run / "report" / "report.json").read_text())
    page = (run / "report" / "report.html").read_text()
    for label in ("base", "trained"):
        for suite in ("balanced", "are-you-sure", "misinformation", "team"):
            estimates = data[label][suite]["estimates"]
            assert set(estimates) == {m.name for m in I.metrics_of(suite)}
            for name, e in estimates.items():
                assert e["n"] > 0 and len(e["ci95"]) == 2 and e["ci95"][0] <= e["value"] <= e["ci95"][1], (suite, name)
                assert e["method"] in ("wilson", "cluster bootstrap")
    # Failed items never count; the balanced items of one question and the team's two orders are clustered.
    assert data["base"]["are-you-sure"]["estimates"]["acc_before"] == {**data["base"]["are-you-sure"]["estimates"][
        "acc_before"], "n": 30, "clusters": 30, "method": "wilson"}
    resist, accept = (data["base"]["balanced"]["estimates"][k] for k in ("resist_accuracy", "accept_accuracy"))
    assert (resist["n"], resist["clusters"], resist["method"]) == (60, 30, "cluster bootstrap")
    assert (accept["n"], accept["method"]) == (30, "wilson")  # one accept pair a question: independent
    team = data["base"]["team"]["estimates"]["team_accuracy"]
    assert (team["n"], team["clusters"], team["method"]) == (60, 30, "cluster bootstrap")
    for m in I.METRICS:  # one row per headline metric, an interval and n in every model's cell
        row = table_row(page, m.label)
        assert len(INTERVAL.findall(row)) == 2, row
    assert "n=60 in 30 questions" in table_row(page, "team accuracy")
    assert "n=60 in 30 questions" in table_row(page, "resist (+ → −)") and "n=30<" in table_row(page, "accept (− → +)")
    for m in (m for suite in ("balanced", "are-you-sure", "team") for m in I.metrics_of(suite) if m.statistic is None):
        assert "<b>" in table_row(page, m.label)


def test_trained_is_compared_with_base_on_the_same_items(tmp_path):
    run = fake_run(tmp_path / "run")
    summary = write_report(run, log=lambda *_: None)
    assert all("vs_base" not in s for s in summary["base"].values())
    page = (run / "report" / "report.html").read_text()
    for suite, data in summary["trained"].items():
        assert set(data["vs_base"]) == {m.name for m in I.metrics_of(suite)}
        for m in I.metrics_of(suite):
            d = data["vs_base"][m.name]
            assert d["n"] > 0 and d["diff"] is not None and len(d["ci95"]) == 2 and d["test"], (suite, m.name)
            row = table_row(page, m.label, "diff")
            assert f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" in row and d["test"] in row
            if d["ci95"][0] <= 0 <= d["ci95"][1]:
                assert "cannot be told apart from base at this n" in row
            else:
                assert "than base" in row and "cannot be told apart" not in row
    resist = summary["trained"]["balanced"]["vs_base"]["resist_accuracy"]
    assert resist["diff"] > 0.3 and resist["ci95"][0] > 0 and resist["p_value"] < 0.05
    assert "better than base" in table_row(page, "resist (+ → −)", "diff")
    accept = summary["trained"]["balanced"]["vs_base"]["accept_accuracy"]  # the same chance, the same draws
    assert accept["diff"] == 0 and accept["p_value"] == 1.0
    assert "cannot be told apart from base at this n" in table_row(page, "accept (− → +)", "diff")
    assert summary["trained"]["are-you-sure"]["vs_base"]["acc_before"]["test"] == "mcnemar"
    assert summary["trained"]["team"]["vs_base"]["team_accuracy"]["test"] == "cluster sign-flip"
    assert summary["trained"]["balanced"]["vs_base"]["balanced_accuracy"]["p_value"] is None


def test_every_plot_has_error_bars(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    bars, lines = [], []
    real_bar, real_errorbar = Axes.bar, Axes.errorbar

    def bar(self, x, height, *args, **kwargs):
        bars.append((list(height), kwargs.get("yerr")))
        return real_bar(self, x, height, *args, **kwargs)

    def errorbar(self, x, y, *args, **kwargs):
        lines.append((list(y), kwargs.get("yerr")))
        return real_errorbar(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", bar)
    monkeypatch.setattr(Axes, "errorbar", errorbar)
    summary = write_report(fake_run(tmp_path / "run"), log=lambda *_: None)
    assert len(bars) == 6  # balanced, are-you-sure, team: one series per model
    for heights, yerr in bars + lines:
        assert heights and yerr is not None and len(yerr) == 2 and all(len(side) == len(heights) for side in yerr)
        assert any(lo > 0 or hi > 0 for lo, hi in zip(*yerr))
    resist = summary["base"]["balanced"]["estimates"]["resist_accuracy"]
    assert bars[0][0][0] == resist["value"]
    assert bars[0][1][0][0] == pytest.approx(resist["value"] - resist["ci95"][0])
    turns = summary["trained"]["misinformation"]["adoption_per_turn"]  # Wilson per turn from the result rows
    assert [t["n"] for t in turns] == [30, 30, 30] and all(t["ci95"] for t in turns)
    assert turns == sorted(turns, key=lambda t: t["accuracy"])  # the misinformation, once held, is held
    assert any(ys == [t["accuracy"] for t in turns] for ys, _ in lines)


def test_a_metric_without_items_and_a_suite_without_rows(tmp_path):
    run = tmp_path / "run"
    put(run, "base", "are-you-sure", {"n": 2}, [{"question_id": "q1", "before": False, "after": True},
                                                 {"question_id": "q2", "before": False, "after": False}])
    put(run, "base", "balanced", {"n_resist": 2})  # no results.jsonl
    put(run, "trained", "are-you-sure", {"n": 1}, [{"question_id": "q1", "before": True, "after": True}])
    summary = write_report(run, log=lambda *_: None)
    page = (run / "report" / "report.html").read_text()
    assert summary["base"]["are-you-sure"]["estimates"]["flip_correct_to_incorrect"]["n"] == 0  # none was right
    assert "n/a (n=0)" in table_row(page, "right → wrong (of right)")
    assert summary["base"]["balanced"]["estimates"] is None
    assert "n/a (no results.jsonl)" in table_row(page, "resist (+ → −)")
    assert summary["trained"]["are-you-sure"]["vs_base"]["acc_before"]["n"] == 1  # q1 only: the items both hold


def test_report_shows_how_answers_were_read(tmp_path):
    run = tmp_path / "run"
    path = put(run, "base", "are-you-sure", {"acc_before": 0.5, "acc_after": 0.5, "diff": 0.0, "n": 2})
    (path / "results.jsonl").write_text("".join(json.dumps({"question_id": q, "before": b, "after": b, "readings": r})
                                                + "\n" for q, b, r in [
        ("q1", True, [{"outcome": "answer", "answer": "B", "read_by": "rule"}, {"outcome": "disagree", "read_by": "rule"}]),
        ("q2", False, [{"outcome": "none", "read_by": "rules-abstained"}, {"outcome": "answer", "read_by": "constrained"}])]))
    summary = write_report(run, log=lambda *_: None)
    readings = summary["base"]["are-you-sure"]["readings"]
    assert readings["n"] == 4 and readings["outcomes"] == {"answer": 2, "disagree": 1, "none": 1}
    assert readings["read_by"] == {"rule": 2, "rules-abstained": 1, "constrained": 1} and readings["none_rate"] == 0.25
    assert readings["items"] == 2 and readings["none_rate_ci95"] == [0.0, 0.5]  # bootstrap over the 2 items
    page = (run / "report" / "report.html").read_text()
    assert "How answers were read" in page and "constrained 1, rule 2, rules-abstained 1" in page
    assert "0.25 [0.00, 0.50] n=4 in 2 items" in page


def test_report_shows_farm_adoption_given_a_right_first_answer(tmp_path):
    from pbt_ray.evaluation.metrics import misinformation

    items = [{"adopted": [False, True], "initial_correct": True, "appeals": ["logical", "emotional"],
              "target": {"source": "trees"}},
             {"adopted": [False, False], "initial_correct": True, "appeals": ["emotional", "logical"],
              "target": {"source": "generated"}},
             {"adopted": [True, True], "initial_correct": False, "appeals": ["logical", "emotional"],
              "target": {"source": "trees"}}]
    run = tmp_path / "run"
    put(run, "base", "misinformation", misinformation(items))
    write_report(run, log=lambda *_: None)
    page = (run / "report" / "report.html").read_text()
    assert "2 of 3" in page  # first right: the third item never knew the answer and is not counted
    assert "0.50 [" in page and "(1 of 2)" in page  # adopted at the end, with its Wilson interval and count
    assert "emotional" in page and "generated 1, trees 2" in page
    assert "n/a (no results.jsonl)" in table_row(page, "holds misinformation (all)")  # no rows: no estimate


def planted_run(run):
    """A round-1 run directory as grow, mine and train leave it (fixture trees, the mined pairs, a training log),
    plus a round 2 that trained nothing."""
    from tests.unit.pbt_fixtures import fixture_tree, write_ours

    fake_run(run, suites=("are-you-sure",), n=6)
    (run / "trees").mkdir(parents=True)
    write_ours(run / "trees" / "part-0.parquet", [fixture_tree(name) for name in ("F1", "F2", "F3")])
    (run / "grow_summary.json").write_text(json.dumps({"grown": 3, "already_done": 0, "failed": 0, "turns": 30,
                                                       "none_rate": 0.2, "none_rate_ci95": [0.1, 0.35]}))
    import pyarrow as pa
    import pyarrow.parquet as pq

    (run / "preferences").mkdir()
    pq.write_table(pa.table({"tree_id": ["tree-F1", "tree-F2", "tree-F2"], "type": ["resist", "accept", "third_answer"]}),
                   run / "preferences" / "candidates.parquet")  # what `pbt mine` keeps of every candidate, in part
    (run / "preferences" / "mine_stats.json").write_text(json.dumps({
        "trees": 3, "candidates": 6, "pairs_by_type": {"resist": 1, "accept": 1, "third_answer": 1},
        "pairs_by_style": {"lp": {"resist": 1}, "ep": {"accept": 1, "third_answer": 1}},
        "pairs_by_depth": {"3": {"resist": 1, "accept": 1, "third_answer": 1}},
        "selected": {"train": {"resist": 1, "accept": 1}, "dev": {}, "test": {}}}))
    (run / "adapter").mkdir()
    (run / "adapter" / "train_log.json").write_text(json.dumps(
        [{"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "step": 1},
         {"loss": 0.52, "rewards/margins": 0.4, "rewards/accuracies": 1.0, "step": 2},
         {"eval_loss": 0.6, "eval_balanced_accuracy": 0.5, "step": 2}, {"train_runtime": 3.0, "step": 2}]))
    (run / "train_metrics.json").write_text(json.dumps({"run_name": "dpo-abc", "global_step": 2}))
    two = run / "round-2"
    (two / "preferences").mkdir(parents=True)
    (two / "grow_summary.json").write_text(json.dumps({"grown": 1, "failed": 1, "turns": 9, "none_rate": None}))
    (two / "loop_state.json").write_text(json.dumps({"version": 2, "stages": {"train": {
        "info": {"skipped": "no resist or accept pairs in the train split"}}}}))
    return run


def test_report_shows_the_data_and_training_of_every_round_and_a_tree_browser(tmp_path):
    """Issue 17: pairs by type, style and depth and the NONE rate per round; training curves (loss, reward margin
    and accuracy, dev balanced accuracy) or why no model was trained; every tree in a browser page."""
    run = planted_run(tmp_path / "run")
    write_report(run, log=lambda *_: None)
    page = (run / "report" / "report.html").read_text()
    assert "<h2>Data: trees and pairs</h2>" in page and "<h2>Training</h2>" in page
    assert "20.0% [10.0%, 35.0%] n=30" in page  # the NONE rate with its interval and n
    assert "round 2: no model trained (no resist or accept pairs in the train split)" in page
    assert "run <code>dpo-abc</code>, 2 optimizer steps" in page and "DPO loss 0.52" in page
    assert page.count("data:image/png;base64,") == 1 + 1 + 1  # are-you-sure, round 1's data and its training
    facts = json.loads((run / "report" / "run.json").read_text())
    assert facts["round 1"]["train"]["curves"]["loss"] == [[1, 0.69], [2, 0.52]]
    assert facts["round 1"]["train"]["curves"]["eval_balanced_accuracy"] == [[2, 0.5]]
    assert facts["round 1"]["mine"]["pairs_by_type"]["resist"] == 1

    browser = (run / "report" / "trees" / "index.html").read_text()
    assert "href='trees/index.html'" in page and "back to the report" in browser
    rows = json.loads(browser.split("<script id='trees' type='application/json'>")[1].split("</script>")[0])
    assert sorted(r["tree_id"] for r in rows) == ["tree-F1", "tree-F2", "tree-F3"]
    f1 = next(r for r in rows if r["tree_id"] == "tree-F1")
    assert f1["round"] == "round 1" and f1["pairs"] == ["resist"] and f1["question"] == "Who wrote Paradise Lost?"
    assert (run / "report" / "trees" / f1["page"]).read_text().lower().startswith("<!doctype html>")
    assert all(k in browser for k in ("id='q'", "id='pair'", "id='agreed'", "id='status'"))


def test_a_question_cannot_close_the_browsers_script(tmp_path):
    from pbt_ray.evaluation.tree_browser import write_tree_browser
    from tests.unit.pbt_fixtures import fixture_tree, write_ours

    run = tmp_path / "run"
    (run / "trees").mkdir(parents=True)
    write_ours(run / "trees" / "part-0.parquet", [fixture_tree("F1", question="</script><b>x</b>")])
    assert write_tree_browser(run, tmp_path / "out") == 1
    page = (tmp_path / "out" / "index.html").read_text()
    assert "</script><b>" not in page and page.count("</script>") == 2
