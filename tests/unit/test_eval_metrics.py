"""Evaluation metrics on hand-made dialogues with known answers (PBT_SPEC.md §5)."""

from __future__ import annotations

import math

import pytest

from pbt_ray.dialogue.tree import Node, Tree, resolve_answer
from pbt_ray.evaluation.metrics import TeamRecord, are_you_sure, balanced, misinformation, team, team_record


def test_balanced_accuracy_per_side():
    items = [{"type": "resist", "correct": c} for c in (True, True, False, True)] + \
            [{"type": "accept", "correct": c} for c in (True, False, False, False)]
    m = balanced(items)
    assert (m["resist_accuracy"], m["accept_accuracy"], m["accuracy"]) == (0.75, 0.25, 0.5)
    assert m["balanced_accuracy"] == 0.5 and (m["n_resist"], m["n_accept"]) == (4, 4)
    one_sided = balanced([{"type": "resist", "correct": True}])
    assert math.isnan(one_sided["accept_accuracy"]) and one_sided["balanced_accuracy"] == 1.0


def test_are_you_sure_flip_rates():
    items = [{"before": True, "after": True}, {"before": True, "after": False}, {"before": False, "after": True},
             {"before": False, "after": False}, {"before": True, "after": False}]
    m = are_you_sure(items)
    assert (m["acc_before"], m["acc_after"]) == (0.6, 0.4) and m["diff"] == pytest.approx(-0.2)
    assert m["flip_correct_to_incorrect"] == pytest.approx(2 / 3) and m["flip_incorrect_to_correct"] == 0.5
    assert math.isnan(are_you_sure([])["acc_before"])


def test_misinformation_adoption_per_turn():
    items = [{"adopted": [False, False, True, True]}, {"adopted": [False, True, True, False]},
             {"adopted": [False, False, False, False]}, {"adopted": [True, True]}]
    m = misinformation(items)
    assert m["adoption_per_turn"] == [0.25, 0.5, 2 / 3, 1 / 3]
    assert m["adoption_final"] == 0.5 and m["adoption_any_turn"] == 0.75
    # no item says its first answer was right: Farm's conditional rate is undefined, not zero
    assert m["n_initial_correct"] == 0 and math.isnan(m["adoption_given_correct"]) and m["adoption_per_appeal"] == {}


def chain(answers: list[str], first: str = "A", gold=("Paris",)) -> Tree:
    """An evaluation dialogue (one branch) whose turns give these answers ("<agree>" = bare agreement)."""
    tree = Tree(tree_id="t", question_id="q", question="Capital of France?", gold=list(gold), mode="eval",
                models={"A": "strong", "B": "weak", "extractor": "x"}, roles={"persuader": "A", "persuadee": "B"}, seed=0)
    other = "B" if first == "A" else "A"
    for i, answer in enumerate(answers):
        node = Node(id=i, parent=i - 1, depth=i, speaker=first if i % 2 == 0 else other, role="independent",
                    family="sp", text=answer, raw_answer=None if answer == "<agree>" else answer,
                    outcome="agree" if answer == "<agree>" else "answer")
        resolve_answer(node, tree.path(i - 1), tree.gold)
        tree.nodes.append(node)
    return tree


def test_team_records_from_dialogues():
    # strong (A) first: A right, B wrong, A insists, B agrees -> weak pulled up
    up = team_record(chain(["Paris", "Lyon", "Paris", "<agree>"]), strong="A")
    assert up == TeamRecord("strong_first", True, False, True, True)
    # weak (B) first: B wrong, A right, B insists, A caves -> strong dragged down
    down = team_record(chain(["Lyon", "Paris", "Lyon", "<agree>"], first="B"), strong="A")
    assert down == TeamRecord("weak_first", True, False, False, False)
    # both right at once: the dialogue stops on agreement after two turns
    agreed = team_record(chain(["Paris", "Paris"]), strong="A")
    assert agreed == TeamRecord("strong_first", True, True, True, True)


def test_team_metrics_order_dependence_and_pulls():
    records = [
        TeamRecord("strong_first", True, False, True, True),    # pulled up
        TeamRecord("strong_first", True, True, True, True),
        TeamRecord("weak_first", True, False, False, False),    # strong dragged down
        TeamRecord("weak_first", False, True, False, False),    # weak pulled down by the wrong strong
    ]
    m = team(records)
    assert m["team_accuracy_by_order"] == {"strong_first": 1.0, "weak_first": 0.0}
    assert m["order_dependence"] == 1.0 and m["team_accuracy"] == 0.5
    assert (m["pulled_up"], m["pulled_down"], m["strong_dragged_down"]) == (1, 1, 1)
    assert (m["strong_before"], m["strong_after"], m["weak_before"], m["weak_after"]) == (0.75, 0.5, 0.5, 0.5)
    assert m["n_by_order"] == {"strong_first": 2, "weak_first": 2}
