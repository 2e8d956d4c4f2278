"""The answer instrument's pure parts: the deterministic reader, the constraint builder, the one resolution
rule, and the gold-file contract of `pbt bench extract`."""

from __future__ import annotations

import asyncio
import json

import pytest

from pbt_ray.answers import resolve
from pbt_ray.dialogue.extraction import Extractor, constrained_options, constrained_request, read_constrained
from pbt_ray.dialogue.extraction_bench import GoldError, load_gold, summarize
from pbt_ray.dialogue.reading import Reading, answer_spans, choice_candidates, read_reply

FRIDGE = {"A": "cupboard", "B": "refrigerator", "C": "oven", "D": "garden", "E": "bookshelf"}
MILK = "Where would you most likely keep milk to stop it going sour?"


@pytest.mark.parametrize(("reply", "expected"), [
    ("(B)", ("answer", "B")),
    ("B", ("answer", "B")),
    ("B) refrigerator", ("answer", "B")),
    ("(B) refrigerator, because it is cold.", ("answer", "B")),
    ("I would keep it in the refrigerator.", ("answer", "B")),
    ("Milk spoils when warm, so the answer is (B).", ("answer", "B")),
    ("The answer is not (A) cupboard but (B) refrigerator.", ("answer", "B")),
    ("You said (A) cupboard, but it's (B) refrigerator.", ("answer", "B")),
    ("Between (A) cupboard and (B) refrigerator, I choose (B) refrigerator.", ("answer", "B")),
    ("(A) cupboard (B) refrigerator (C) oven (D) garden (E) bookshelf", ("none", None)),
    ("It is definitely not (C) oven.", ("none", None)),
    ("You're right, I agree with you.", ("agree", None)),
    ("You picked (C) oven, which is wrong. I'm not changing my mind.", ("disagree", None)),
    ("", ("none", None)),
])
def test_multiple_choice_reading(reply, expected):
    reading = read_reply(MILK, reply, FRIDGE)
    assert reading is not None and (reading.outcome, reading.answer) == expected


@pytest.mark.parametrize(("question", "reply", "expected"), [
    ("What is the capital of France?", "The capital of France is Paris.", "Paris"),
    ("What is the capital of France?", "Paris", "Paris"),
    ("What is the capital of France?", "Paris, without a doubt. Nowhere else has been the seat of government.", "Paris"),
    ("What is the capital of Australia?", "I'm sure the capital of Australia is Sydney; it's the biggest city.", "Sydney"),
    ("What is the capital of Australia?", "Many people say Sydney, but it is Canberra.", "Canberra"),
    ("What is the capital of Australia?", "The other agent is wrong; it's Canberra.", "Canberra"),
    ("What is the capital of Australia?", "You're right, it's Canberra.", "Canberra"),
    ("Who wrote Hamlet?", "Shakespeare wrote it, around 1600.", "Shakespeare"),
    ("Who wrote Hamlet?", "Who wrote Hamlet? Shakespeare did.", "Shakespeare"),
    ("Who discovered penicillin?", "Penicillin was discovered by Alexander Fleming in 1928.", "Alexander Fleming"),
    ("What is the capital of Italy?", "Rome is the capital of Italy. Rome is the capital of Italy.", "Rome"),
    ("In what year did the Berlin Wall fall?", "It came down in November 1989, and Germany reunified in 1990.", "1989"),
    ("How many legs does a spider have?", "A spider has 8 legs, I'm certain.", "8"),
    ("Which planet is largest?", "I think it's Jupiter, because it is a gas giant.", "Jupiter"),
    ("Which planet is largest?", "The answer is: Jupiter.", "Jupiter"),
])
def test_free_form_reading(question, reply, expected):
    reading = read_reply(question, reply)
    assert reading is not None and reading.outcome == "answer" and reading.answer == expected


@pytest.mark.parametrize(("reply", "outcome"), [
    ("You're absolutely right, I agree.", "agree"),
    ("No, that's wrong. I stand by what I said before.", "disagree"),
    ("I don't think your answer is correct.", "disagree"),
    ("I can't answer that.", "none"),
    ("It is definitely not Rio de Janeiro.", "none"),
    ("It could be Rio de Janeiro or Sao Paulo, I can't decide.", "none"),
    ("Answer in one or two sentences, with more than one word.", "none"),
    ("<|im_end|> User: Assistant:", "none"),
    ("   ", "none"),
])
def test_no_answer_readings(reply, outcome):
    reading = read_reply("What is the largest city in Brazil?", reply)
    assert reading is not None and reading.outcome == outcome and reading.answer is None


def test_the_reader_abstains_where_only_a_model_can_decide():
    assert read_reply("Which planet is largest?", "Saturn is enormous, but Jupiter is bigger still.") is None
    assert read_reply(MILK, "A garden is outdoors and a refrigerator is cold.", FRIDGE) is None


def test_constraint_builder():
    spans = answer_spans("What is the capital of France?", "The capital of France is Paris, a lovely city.")
    assert "Paris" in spans and not any(s.lower() in ("france", "capital", "the capital of france") for s in spans)
    options = constrained_options("What is the capital of France?", "Paris, a lovely city.")
    assert options[-3:] == [" Agree", " Disagree", " NONE"] and " Paris" in options
    mc = constrained_options(MILK, "A garden is outdoors and a refrigerator is cold.",
                             {k: FRIDGE[k] for k in choice_candidates("A garden is outdoors and a refrigerator is cold.", FRIDGE)})
    assert mc == [" D", " B", " Agree", " Disagree", " NONE"]
    request = constrained_request(options)
    assert request["structured_outputs"] == {"choice": options} and "guided_choice" not in request
    assert read_constrained(" Paris", options) == Reading("answer", "Paris", "constrained")
    assert read_constrained(" Agree", options).outcome == "agree"
    assert read_constrained(" NONE", options).outcome == "none"
    assert read_constrained(" Lyon is the answer", options).method == "unconstrained"  # engine ignored the grammar


def test_extractor_modes_and_requests():
    calls = []

    class Engine:
        async def chat(self, model, messages, **params):
            calls.append(params.get("extra") or {})

            class R:
                text = " B" if "structured_outputs" in calls[-1] else " Lyon"
            return R()

    engine = Engine()
    auto = Extractor(engine, "extractor", "auto")
    assert asyncio.run(auto.read(MILK, "(B) refrigerator", FRIDGE)) == Reading("answer", "B", "rule")
    assert calls == []  # unambiguous: no request
    reading = asyncio.run(auto.read(MILK, "A garden is outdoors and a refrigerator is cold.", FRIDGE))
    assert reading == Reading("answer", "B", "constrained") and calls[-1]["structured_outputs"]["choice"][:2] == [" D", " B"]
    prompt = asyncio.run(Extractor(engine, "extractor", "prompt").read("Q?", "Paris"))
    assert prompt == Reading("answer", "Lyon", "prompt") and "structured_outputs" not in calls[-1]
    assert asyncio.run(auto.read("Q?", "  ")) == Reading("none", None, "empty")
    many = asyncio.run(auto.read_many([(MILK, "(C)", FRIDGE), ("Q?", ""), (MILK, "(A) cupboard", FRIDGE)], concurrency=1))
    assert [(r.outcome, r.answer) for r in many] == [("answer", "C"), ("none", None), ("answer", "A")]  # in order
    with pytest.raises(ValueError, match="extract.mode"):
        Extractor(engine, "extractor", "guess")


def test_one_resolution_rule():
    assert resolve("answer", "Paris") == "paris"
    assert resolve("agree", None, own_previous="Lyon", partner_latest="Paris") == "paris"
    assert resolve("disagree", None, own_previous="Lyon", partner_latest="Paris") == "lyon"
    assert resolve("none", "Paris", own_previous="Lyon", partner_latest="Paris") is None
    assert resolve("agree", None) is None  # a challenger that named no answer
    assert resolve("answer", "(B) refrigerator", choices=FRIDGE) == "B"
    with pytest.raises(ValueError):
        resolve("maybe", None)


def test_bundled_gold_set_is_the_documented_contract():
    items = load_gold("bundled:extraction")
    assert len(items) >= 150 and len({i["id"] for i in items}) == len(items)
    outcomes = {i["expected"]["outcome"] for i in items}
    assert outcomes == {"answer", "agree", "disagree", "none"}
    assert sum(1 for i in items if i.get("choices")) >= 50


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "not valid JSON"),
    (json.dumps({"id": "x", "question": "q", "reply": "r"}), "missing 'expected'"),
    (json.dumps({"id": "x", "question": "q", "reply": "r", "expected": {"outcome": "maybe"}}), "expected.outcome"),
    (json.dumps({"id": "x", "question": "q", "reply": "r", "expected": {"outcome": "answer", "answers": []}}), "acceptable"),
    (json.dumps({"id": "x", "question": "q", "reply": "r", "choices": {"A": "a"},
                 "expected": {"outcome": "answer", "answers": ["Z"]}}), "labels"),
])
def test_bad_gold_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"id": "ok", "question": "q", "reply": "r", "expected": {"outcome": "none"}}) + "\n" + line + "\n")
    with pytest.raises(GoldError, match=rf"gold.jsonl:2: .*{message}"):
        load_gold(path)


def test_summary_counts_and_intervals():
    items = [{"id": "1", "question": "q", "reply": "Paris", "expected": {"outcome": "answer", "answers": ["Paris"]}},
             {"id": "2", "question": "q", "reply": "(B)", "choices": FRIDGE, "expected": {"outcome": "answer", "answers": ["B"]}},
             {"id": "3", "question": "q", "reply": "I agree", "expected": {"outcome": "agree", "answers": []}}]
    readings = [Reading("answer", "paris"), Reading("answer", "A"), Reading("none")]
    s = summarize(items, readings)
    assert (s["n"], s["right"]) == (3, 1) and 0 < s["ci95"][0] < 1 / 3 < s["ci95"][1] < 1
    assert s["per_kind"]["multiple-choice"]["accuracy"] == 0 and s["per_outcome"]["agree"]["n"] == 1
    assert s["confusion"]["agree"]["none"] == 1 and s["worst_misreads"][0]["id"] == "2"  # a wrong answer first
    assert [r["right"] for r in s["items"]] == [True, False, False]


@pytest.mark.parametrize(("reply", "expected"), [
    ("(c) is the one, no doubt.", ("answer", "C")),
    ("The third option, since ovens are hot.", ("answer", "C")),
    ("my pick is option b", ("answer", "B")),
    ("E is silly and D is silly; A is right.", ("answer", "A")),
    ("Somebody could argue for the oven, but the answer is really B.", ("answer", "B")),
    ("A garden or a cupboard? No: the refrigerator.", ("answer", "B")),
    ("I'm torn between A and B here.", ("none", None)),
    ("Nope, not buying that.", ("disagree", None)),
    ("The other agent has this one wrong; I don't think option C is right.", ("disagree", None)),
])
def test_more_multiple_choice_forms(reply, expected):
    reading = read_reply(MILK, reply, FRIDGE)
    assert reading is not None and (reading.outcome, reading.answer) == expected


@pytest.mark.parametrize(("question", "reply", "expected"), [
    ("What language do Brazilians speak?", "Brazilians speak Portuguese, like the Portuguese themselves.", "Portuguese"),
    ("Who painted The Starry Night?", "It was painted by the Dutch artist Vincent van Gogh in 1889.", "Vincent van Gogh"),
    ("What is the currency of Canada?", "Canada uses the Canadian dollar, not the US dollar.", "Canadian dollar"),
    ("Who won the first Nobel Prize in Physics?", "That prize went to Wilhelm Rontgen in 1901.", "Wilhelm Rontgen"),
    ("What is the hardest natural material?", "Nothing in nature beats diamond for hardness.", "diamond"),
    ("How many degrees Fahrenheit is freezing?", "It freezes at thirty-two degrees Fahrenheit.", "thirty-two"),
    ("Who wrote Moby-Dick?", "Herman Melville wrote it; he was a sailor before he was a novelist.", "Herman Melville"),
    ("What is the capital of Egypt?", "Cairo is the capital. Egypt is such a fascinating country.", "Cairo"),
])
def test_more_free_form_answers(question, reply, expected):
    reading = read_reply(question, reply)
    assert reading is not None and reading.outcome == "answer" and reading.answer == expected


@pytest.mark.parametrize("reply", ["<|im_start|>assistant", "[Agent 1]:", "Question: What is the capital of Chile?",
                                   "I honestly don't know the answer to this one.", "I'm not sure, it could be many things."])
def test_debris_and_non_answers_are_none(reply):
    reading = read_reply("What is the capital of Chile?", reply)
    assert reading is not None and reading.outcome == "none"
