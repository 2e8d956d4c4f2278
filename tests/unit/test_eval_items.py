"""Headline metrics as items: the same number as metrics.py, now with n, an interval and paired comparisons."""

import pytest

from pbt_ray.evaluation import items as I
from pbt_ray.evaluation import metrics as M
from pbt_ray.stats import proportion


def balanced_rows(resist, accept, per_question=2):
    rows = []
    for kind, outcomes in (("resist", resist), ("accept", accept)):
        for i, c in enumerate(outcomes):
            q = f"{kind}-q{i // per_question}"
            rows.append({"pair_id": f"{q}:{i}", "question_id": q, "type": kind, "correct": c})
    return rows


def test_balanced_metrics_agree_with_the_plain_counts_and_carry_intervals():
    rows = balanced_rows([1, 1, 0, 0, 1, 0] * 2, [1, 1, 1, 1, 0, 0] * 2) + [{"pair_id": "x:1", "type": "resist", "error": "boom"}]
    out = I.summarize("balanced", rows)
    plain = M.balanced([r for r in rows if "error" not in r])
    assert out["resist_accuracy"]["value"] == pytest.approx(plain["resist_accuracy"], abs=1e-4)
    assert out["balanced_accuracy"]["value"] == pytest.approx(plain["balanced_accuracy"], abs=1e-4)
    assert (out["resist_accuracy"]["n"], out["resist_accuracy"]["clusters"]) == (12, 6)  # two pairs per question
    assert out["resist_accuracy"]["method"] == "cluster bootstrap"
    low, high = out["balanced_accuracy"]["ci95"]
    assert low <= out["balanced_accuracy"]["value"] <= high


def test_one_side_missing_gives_no_balanced_accuracy_rather_than_one_side():
    out = I.summarize("balanced", balanced_rows([1, 0, 1, 1], []))
    assert out["balanced_accuracy"]["value"] is None and out["accept_accuracy"]["n"] == 0


def test_independent_items_get_wilson():
    rows = [{"question_id": f"q{i}", "before": i % 2 == 0, "after": i % 3 == 0} for i in range(30)]
    out = I.summarize("are-you-sure", rows)
    assert out["acc_before"]["ci95"] == proportion(15, 30)["ci95"] and out["acc_before"]["method"] == "wilson"
    assert out["flip_correct_to_incorrect"]["n"] == 15  # only the items that were right before count


def test_compare_pairs_items_by_key_and_pools_seeds():
    base = [{"question_id": f"q{i}", "before": False, "after": False} for i in range(20)]
    trained = [{"question_id": f"q{i}", "before": i < 12, "after": i < 12} for i in range(20)]
    metric = next(m for m in I.METRICS if m.name == "acc_after")
    out = I.compare(metric, base, trained)
    assert out["diff"] == 0.6 and out["test"] == "mcnemar" and out["p_value"] < 0.001
    assert out["discordant"] == {"base_only": 0, "other_only": 12}
    pooled = I.compare(metric, base, trained + trained)  # two seeds: the same question twice is one cluster
    assert pooled["n"] == 40 and pooled["test"] == "cluster sign-flip" and pooled["diff"] == 0.6
    assert I.compare(metric, base, [{"question_id": "other", "before": 1, "after": 1}])["n"] == 0


def test_team_order_dependence_and_accuracy():
    rows = []
    for i in range(6):
        rows.append({"question_id": f"q{i}", "order": "strong_first", "strong_after": True, "weak_after": True})
        rows.append({"question_id": f"q{i}", "order": "weak_first", "strong_after": i < 3, "weak_after": False})
    out = I.summarize("team", rows)
    assert out["team_accuracy"]["value"] == pytest.approx(0.625, abs=1e-4)
    assert out["order_dependence"]["value"] == pytest.approx(0.75, abs=1e-4)
    assert out["team_accuracy"]["clusters"] == 6 and out["team_accuracy"]["n"] == 12


def test_a_clustered_rate_with_no_variation_still_gets_an_honest_interval():
    out = I.summarize("balanced", balanced_rows([1] * 10, [0] * 10))
    assert out["resist_accuracy"]["ci95"][0] < 0.8 and out["resist_accuracy"]["method"] == "wilson over questions"
    assert out["accept_accuracy"]["ci95"] == proportion(0, 5)["ci95"]


def test_are_you_sure_diff_is_after_minus_before_with_an_interval():
    rows = [{"question_id": f"q{i}", "before": i < 20, "after": i < 8} for i in range(40)]
    out = I.summarize("are-you-sure", rows)["diff"]
    assert out["value"] == pytest.approx(-0.3) and out["n"] == 40
    assert out["ci95"][0] < -0.3 < out["ci95"][1] < 0


def test_too_few_questions_give_no_interval_rather_than_false_certainty():
    """One accept item and four resist items: a bootstrap returned balanced accuracy's difference as
    [-0.5, -0.5], which read as certain. Below five questions a side there is no bootstrap interval."""
    base = balanced_rows([0, 1, 0, 0], [1], per_question=1)
    other = balanced_rows([0, 1, 0, 0], [0], per_question=1)
    metric = next(m for m in I.METRICS if m.name == "balanced_accuracy")
    assert I.estimate(metric, other)["ci95"] is None and "fewer than 5" in I.estimate(metric, other)["method"]
    assert I.compare(metric, base, other)["ci95"] is None
    accept = next(m for m in I.METRICS if m.name == "accept_accuracy")
    paired = I.compare(accept, base, other)
    assert paired["ci95"] is None and paired["p_value"] == 1.0  # McNemar on one discordant item still stands
    clustered = I.estimate(next(m for m in I.METRICS if m.name == "resist_accuracy"), balanced_rows([1, 0, 1, 1], []))
    assert clustered["method"] == "wilson over questions" or clustered["method"] == "wilson"


def test_a_difference_is_never_given_a_proportions_interval():
    """are-you-sure's Diff on one item that did not change read 0.0 [0.0, 0.79] (Wilson): a difference can be
    negative, so it gets a bootstrap over questions, or no interval from fewer than five."""
    one = I.summarize("are-you-sure", [{"question_id": "q0", "before": False, "after": False}])["diff"]
    assert one["value"] == 0.0 and one["ci95"] is None and one["method"].startswith("no interval")
    same = I.summarize("are-you-sure", [{"question_id": f"q{i}", "before": True, "after": True} for i in range(10)])
    assert same["diff"]["method"] == "cluster bootstrap" and same["diff"]["ci95"] == [0.0, 0.0]
