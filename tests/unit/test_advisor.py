"""The advisor recipe's pure logic (issue 19, done-when 1): episode records, utility, mining (ties, the minimum
gap, several receivers) and the numeric checker."""

from fractions import Fraction

import pytest

from pbt_ray.advisor.checking import check, final_number, numeric_correct, states_answer
from pbt_ray.advisor.episodes import Episode, read_episodes, utilities, write_episodes
from pbt_ray.advisor.mining import advisor_pairs, advisor_sft_rows
from pbt_ray.advisor.tasks import arithmetic_items


def ep(q, sid, receiver, correct, signal=None):
    return Episode(episode_id=f"{q}-{sid}-{receiver}", round=1, question_id=q, gold=["7"], signal_id=sid,
                   signal=signal if signal is not None else ("" if sid == "none" else f"hint {sid}"),
                   advisor=None if sid == "none" else "adv", receiver=receiver, receiver_prompt="p",
                   replies=["r"] * len(correct), answers=["7"] * len(correct), correct=correct)


def test_the_final_number_of_a_reply():
    assert final_number("3 + 4 = 7\n#### 7") == 7
    assert final_number("First 12, then 30. So the answer is 1,234.") == 1234
    assert final_number("We get 2/4 of it") == Fraction(1, 2)
    assert final_number("no number here") is None
    assert numeric_correct("The answer: 42.0", ["42"]) and not numeric_correct("41 or so", ["42"])
    assert check("numeric", "#### -3", ["-3"]) and not check("numeric", None, ["3"])
    assert check("text", "B", ["B"], {"A": "cat", "B": "dog"}) and check("text", "paris", ["Paris"])


def test_a_signal_that_states_the_answer_is_flagged():
    assert states_answer("It is 42, trust me", ["42"], task="numeric")
    assert not states_answer("Add the tens first", ["42"], task="numeric")
    assert states_answer("The answer is (B).", ["B"], {"A": "cat", "B": "dog"})
    assert states_answer("Think of a dog", ["B"], {"A": "cat", "B": "dog"})
    assert not states_answer("Think about which animal barks", ["B"], {"A": "cat", "B": "dog"})
    assert states_answer("Maybe Paris?", ["Paris", "City of Light"]) and not states_answer("A French city", ["Paris"])


def test_utility_is_accuracy_with_minus_without_averaged_over_receivers():
    episodes = [ep("q1", "none", "r1", [False, False]), ep("q1", "none", "r2", [True, False]),
                ep("q1", "s1", "r1", [True, True]), ep("q1", "s1", "r2", [True, True]),
                ep("q1", "s2", "r1", [False, False]), ep("q1", "s2", "r2", [False, False]),
                ep("q2", "s1", "r1", [True])]  # no baseline for q2: left out, not counted as 0
    u = utilities(episodes)
    assert u == {("q1", "s1"): pytest.approx((1.0 + 0.5) / 2), ("q1", "s2"): pytest.approx((0.0 - 0.5) / 2)}


def test_pairs_need_the_minimum_gap_break_ties_by_id_and_sft_keeps_helpful_signals():
    episodes = [ep("q1", "none", "r1", [False, True]),
                ep("q1", "s1", "r1", [True, True]), ep("q1", "s2", "r1", [True, True]),  # tie for the top
                ep("q1", "s3", "r1", [False, False]),
                ep("q2", "none", "r1", [True, False]), ep("q2", "s1", "r1", [True, False]),
                ep("q2", "s2", "r1", [True, True])]  # gap 0.5 - 0 = 0.5 >= 0.25
    pairs = advisor_pairs(episodes, min_gap=0.25)
    assert [(p.question_id, p.chosen, p.rejected) for p in pairs] == [("q1", "hint s1", "hint s3"),
                                                                      ("q2", "hint s2", "hint s1")]
    assert advisor_pairs(episodes, min_gap=0.75) == [pairs[0]]  # q1: 0.5 - (-0.5) = 1.0; q2: 0.5
    rows = advisor_sft_rows(episodes)
    assert [(r.question_id, r.signal) for r in rows] == [("q1", "hint s1"), ("q1", "hint s2"), ("q2", "hint s2")]


def test_several_receivers_a_signal_must_help_them_in_general():
    episodes = [ep("q", "none", "r1", [False]), ep("q", "none", "r2", [True]),
                ep("q", "a", "r1", [True]), ep("q", "a", "r2", [False]),   # +1 and -1: utility 0
                ep("q", "b", "r1", [False]), ep("q", "b", "r2", [True])]   # 0 and 0
    assert advisor_pairs(episodes, min_gap=0.01) == []


def test_episodes_round_trip_with_their_schema_version(tmp_path):
    import pyarrow.parquet as pq

    episodes = [ep("q1", "none", "r1", [False, True]), ep("q1", "s1", "r1", [True, True])]
    episodes[1].extra = {"k": 1}
    write_episodes(episodes, tmp_path / "episodes.parquet")
    assert read_episodes(tmp_path / "episodes.parquet") == episodes
    assert pq.read_table(tmp_path / "episodes.parquet").column("accuracy").to_pylist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="2 replies, 2 answers, 1 scores"):
        Episode("e", 1, "q", ["1"], "s", "x", "a", "r", "p", ["a", "b"], ["1", "2"], [True])


def test_arithmetic_items_are_seeded_and_their_answers_computed():
    items = arithmetic_items(6, seed=3)
    assert items == arithmetic_items(6, seed=3) and items != arithmetic_items(6, seed=4)
    for q in items:
        expression = q.question.removeprefix("What is ").rstrip("?").replace("times", "*")
        assert str(eval(expression)) == q.answers[0]  # noqa: S307 - our own generated text


def test_gsm8k_and_math500_rows_become_questions_checked_by_the_numeric_rule():
    from pbt_ray.advisor.prompts import task_of
    from pbt_ray.questions import _map_hub_row

    q = _map_hub_row("openai/gsm8k", {"question": "Tom has 3 apples and buys 4. How many?",
                                      "answer": "3 + 4 = <<3+4=7>>7\n#### 7"})
    assert q.answers == ["7"] and q.id.startswith("gsm8k-") and task_of(q) == "numeric"
    m = _map_hub_row("HuggingFaceH4/MATH-500", {"problem": "Compute 1/2 + 1/4.", "answer": "\\frac{3}{4}",
                                                  "unique_id": "test/algebra/1.json"})
    assert m.id == "test/algebra/1.json" and task_of(m) == "text"  # LaTeX: needs math-verify, not the numeric rule


def test_advisor_questions_split_once_and_receivers_resolve(tmp_path):
    from pbt_ray.advisor.recipe import questions, receivers
    from pbt_ray.config import load_config

    cfg = load_config("advisor-local", [f"runs_dir={tmp_path}"])
    train, held = questions(cfg)
    assert len(train) == 16 and len(held) == 24 and not {q.id for q in train} & {q.id for q in held}
    assert questions(cfg) == (train, held)
    assert any(q.id.startswith("arith-") for q in train + held) and receivers(cfg, cfg) == ["smollm2-135m-instruct"]


def test_the_no_signal_prior_posterior_numbers():
    from pbt_ray.advisor.evaluate import summarize

    def rows(correct, signal="hint"):
        return [{"question_id": f"q{i}", "correct": c, "signal": signal, "states_answer": i == 0}
                for i, c in enumerate(correct)]

    alone = rows([True, True, False, False, False, False], signal=None)
    prior = rows([True, False, False, False, False, False])
    posterior = rows([True, True, True, True, False, False])
    s = summarize(posterior, alone, prior)
    assert s["accuracy"]["accuracy"] == 4 / 6 and s["accuracy"]["n"] == 6 and s["accuracy"]["ci95"]
    assert s["vs_no_signal"]["diff"] == round(2 / 6, 4) and s["vs_no_signal"]["test"] == "mcnemar"
    assert s["vs_prior"]["diff"] == 0.5
    assert s["right_to_wrong"]["accuracy"] == 0.0 and s["wrong_to_right"]["accuracy"] == 0.5
    assert s["relative_gain"]["value"] == 1.0 and s["states_answer"]["right"] == 1
    p = summarize(prior, alone)
    assert p["right_to_wrong"]["accuracy"] == 0.5  # the prior's signal talked the receiver out of a right answer
    none = summarize(rows([False, True]), rows([False, False], signal=None))
    assert none["relative_gain"]["value"] is None and "no interval" in none["relative_gain"]["method"]
