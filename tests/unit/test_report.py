"""The report: every suite's plot and table, base and trained side by side, example dialogues linked."""

from __future__ import annotations

import json

import pytest

from pbt_ray.cli import main
from pbt_ray.evaluation.report import ReportError, write_report


def put(run, label, suite, metrics):
    path = run / "eval" / label / suite
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"suite": suite, "label": label, "model": f"{label}-model",
                                                   "extractor": "extractor", "items": 4, "failed": 0, "metrics": metrics}))
    return path


def test_report_has_every_section(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(ReportError, match="run `pbt eval"):
        write_report(run, log=lambda *_: None)
    for label, acc in (("base", 0.4), ("trained", 0.7)):
        put(run, label, "balanced", {"resist_accuracy": acc, "accept_accuracy": acc / 2, "balanced_accuracy": acc * 0.75,
                                     "accuracy": acc * 0.75, "n_resist": 2, "n_accept": 2})
        put(run, label, "are-you-sure", {"acc_before": acc, "acc_after": acc - 0.1, "diff": -0.1, "n": 4,
                                         "flip_correct_to_incorrect": 0.2, "flip_incorrect_to_correct": float("nan")})
        put(run, label, "misinformation", {"adoption_per_turn": [0.1, 0.3], "adoption_final": 0.3,
                                           "adoption_any_turn": 0.4, "n": 4})
        team = put(run, label, "team", {"team_accuracy": acc, "order_dependence": 0.1, "n": 2,
                                        "team_accuracy_by_order": {"strong_first": acc, "weak_first": acc - 0.1}})
        (team / "results.jsonl").write_text(json.dumps({"question_id": "q1", "order": "strong_first", "turns": [
            {"speaker": "A", "text": "Paris.", "answer": "paris", "correct": True},
            {"speaker": "B", "text": "Lyon.", "answer": "lyon", "correct": False}]}) + "\n")
    assert main(["report", str(run)]) == 0
    page = (run / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # resist/accept, before/after, per turn, by order
    for text in ("balanced", "are-you-sure", "misinformation", "team", "base (base-model)", "trained (trained-model)",
                 "Answers read by: extractor", "dialogues/"):
        assert text in page
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["trained"]["balanced"]["metrics"]["resist_accuracy"] == 0.7
    assert len(list((run / "report" / "dialogues").glob("*.html"))) == 2
    assert "report.html" in capsys.readouterr().out


def test_report_shows_how_answers_were_read(tmp_path):
    run = tmp_path / "run"
    path = put(run, "base", "are-you-sure", {"acc_before": 0.5, "acc_after": 0.5, "diff": 0.0, "n": 2})
    (path / "results.jsonl").write_text("".join(json.dumps({"question_id": q, "readings": r}) + "\n" for q, r in [
        ("q1", [{"outcome": "answer", "answer": "B", "read_by": "rule"}, {"outcome": "disagree", "read_by": "rule"}]),
        ("q2", [{"outcome": "none", "read_by": "rules-abstained"}, {"outcome": "answer", "read_by": "constrained"}])]))
    summary = write_report(run, log=lambda *_: None)
    readings = summary["base"]["are-you-sure"]["readings"]
    assert readings["n"] == 4 and readings["outcomes"] == {"answer": 2, "disagree": 1, "none": 1}
    assert readings["read_by"] == {"rule": 2, "rules-abstained": 1, "constrained": 1} and readings["none_rate"] == 0.25
    assert readings["items"] == 2 and readings["none_rate_ci95"] == [0.0, 0.5]  # bootstrap over the 2 items
    page = (run / "report" / "report.html").read_text()
    assert "How answers were read" in page and "constrained 1, rule 2, rules-abstained 1" in page


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
