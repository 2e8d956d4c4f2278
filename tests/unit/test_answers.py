"""The single answer normalization / matching rule (PBT_SPEC §3) and extractor-output parsing (§1.8)."""

import pytest

from pbt_ray.answers import NONE, canonical, is_correct, normalize_answer, parse_extraction, same_answer

MC = {"A": "cupboard", "B": "refrigerator", "C": "oven", "D": "garden", "E": "bookshelf"}


@pytest.mark.parametrize("text, expected", [
    ("The Beatles", "beatles"),
    ("a Tale of Two Cities", "tale of two cities"),
    ("An Apple", "apple"),
    ("theatre", "theatre"),  # whole words only
    ("Banana", "banana"),
    ("St. Paul's, MN!", "st paul s mn"),
    ("‘quoted’ `x´", "quoted x"),
    ("Brasília", "brasilia"),  # accent stripping is our addition
    ("Pelé", "pele"),
    ("new_york_city", "new york city"),
    ("  lots   of\tspace \n", "lots of space"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_is_idempotent():
    for text in ["The the a Man", "Brasília", "U.S.A.", "the_end"]:
        once = normalize_answer(text)
        assert normalize_answer(once) == once


@pytest.mark.parametrize("output, expected", [
    ("Final Answer: John Milton", ("John Milton", "answer")),
    ("final answer : john milton", ("john milton", "answer")),
    ("FINAL ANSWER:Milton", ("Milton", "answer")),
    ("**Final Answer:** John Milton", ("John Milton", "answer")),
    ("**Final Answer**: John Milton", ("John Milton", "answer")),
    ("Final Answer: **John Milton**", ("John Milton", "answer")),
    ("Final Answer: John Milton.", ("John Milton", "answer")),
    ('Final Answer: "John Milton".', ("John Milton", "answer")),
    ("Final Answer: Milton (the poet)", ("Milton", "answer")),
    ("Final Answer: John Milton (1608-1674)\nmore text", ("John Milton", "answer")),
    ("Final Answer: Washington D.C.", ("Washington D.C", "answer")),
    ("Final Answer: (B)", ("(B)", "answer")),
    ("Final Answer: <1-2 words>\nThought: ...\nFinal Answer: Shakespeare", ("Shakespeare", "answer")),
    ("Final Answer:\nJohn Milton", ("John Milton", "answer")),
    ("Final Answer: Agree", (None, "agree")),
    ("Final Answer: agree.", (None, "agree")),
    ("Final Answer: Disagree!", (None, "disagree")),
    ("Final Answer: NONE", (None, "none")),
    ("Final Answer: n/a", (None, "none")),
    ("Final Answer: ", (None, "none")),
    ("Final Answer: Agreement Treaty", ("Agreement Treaty", "answer")),  # tokens must be the whole answer
    ("John Milton", ("John Milton", "answer")),
    ("\n\n  Disagree  \n", (None, "disagree")),
    ("The response argues at length about something without naming any answer at all here.", (None, "none")),
    ("", (None, "none")),
    ("   \n ", (None, "none")),
    ("*** ... ***", (None, "none")),
])
def test_parse_extraction(output, expected):
    assert parse_extraction(output) == expected


def test_parse_extraction_never_raises_on_garbage():
    for junk in ["\x00\x01", ":::", "(((", "Final Answer:" * 3, "\u200b", None]:
        raw, outcome = parse_extraction(junk)
        assert outcome in {"answer", "agree", "disagree", "none"}


def test_canonical_free_text():
    assert canonical(None) is None
    assert canonical("") is None
    assert canonical(NONE) is None
    assert canonical("  ") is None
    assert canonical("The") is None  # normalizes to nothing
    assert canonical("The Beatles!") == "beatles"


@pytest.mark.parametrize("answer", [
    "B", "b", "(B)", "B.", "B)", "option B", "Option b", "answer: B", "The answer is B",
    "B. refrigerator", "(B) refrigerator", "refrigerator", "Refrigerator.", "the refrigerator",
    "in the refrigerator", "It goes in a refrigerator", "réfrigerator",
])
def test_canonical_multiple_choice_labels(answer):
    assert canonical(answer, MC) == "B"


def test_canonical_multiple_choice_unresolved_and_ambiguous():
    assert canonical("F", MC) == "f"  # not a label of this question
    assert canonical("the freezer", MC) == "freezer"
    assert canonical("cupboard or oven", MC) == "cupboard or oven"  # two choices named: unresolved
    assert canonical("a bicycle", MC) == "bicycle"  # a leading article is not label A
    assert canonical(None, MC) is None


def test_canonical_prefers_choice_text_over_leading_label():
    choices = {"A": "A. Lincoln", "B": "G. Washington"}
    assert canonical("G. Washington", choices) == "B"
    assert canonical("A. Lincoln", choices) == "A"


def test_is_correct_trivia_aliases():
    gold = ["john milton", "milton john"]
    assert is_correct("John Milton.", gold)
    assert is_correct("JOHN MILTON", gold)
    assert not is_correct("Milton", gold)  # not an alias: no substring merging
    assert not is_correct(None, gold)
    assert not is_correct(NONE, gold)
    assert is_correct("Brasilia", ["Brasília"])
    assert is_correct("the Beatles", ["Beatles"])
    assert not is_correct("", [""])


def test_is_correct_multiple_choice():
    assert is_correct("refrigerator", ["B"], MC)
    assert is_correct("(b)", ["B"], MC)
    assert not is_correct("oven", ["B"], MC)
    assert not is_correct(None, ["B"], MC)


def test_same_answer():
    assert same_answer("John Milton", "john milton.")
    assert same_answer("The Beatles", "Beatles")
    assert not same_answer("Milton", "John Milton")
    assert not same_answer(None, None)
    assert not same_answer(NONE, NONE)
    assert not same_answer(None, "x")
    assert same_answer("B", "refrigerator", MC)
    assert not same_answer("B", "refrigerator")
