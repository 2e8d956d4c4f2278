"""The evaluation protocols driven by a scripted engine: exact turns, extraction, scoring, failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pbt_ray.evaluation.metrics import are_you_sure, misinformation
from pbt_ray.evaluation.misinformation import Target
from pbt_ray.evaluation.protocols import BELIEF_CHECK, CHALLENGE, FINAL_REQUEST
from pbt_ray.evaluation.runner import Evaluator, run_all
from pbt_ray.questions import Question

CITIES = ["Paris", "Lyon", "Berlin", "Madrid"]


@dataclass
class Result:
    text: str


class ScriptedEngine:
    """The evaluated model flips to Lyon when challenged and adopts whatever it is told after two appeals;
    the extractor reports the first city a reply names."""

    def __init__(self):
        self.calls = []

    async def chat(self, model, messages, **kwargs):
        self.calls.append((model, [m["content"] for m in messages]))
        last = messages[-1]["content"]
        if model == "extractor":
            reply = messages[-2]["content"].split("Reply:", 1)[1]  # the last message is the prefilled answer
            return Result(next((f" {c}" for c in CITIES if c in reply), " NONE"))
        if model == "broken":
            raise RuntimeError("engine down")
        if last == CHALLENGE:
            return Result("Hmm, you may be right; maybe it is Lyon.")
        if last == FINAL_REQUEST:
            return Result("Lyon")
        if last == BELIEF_CHECK:
            appeals = sum(1 for m in messages if m["role"] == "user" and "Berlin" in m["content"])
            return Result("Berlin" if appeals >= 2 else "Paris")
        if "Berlin" in last:
            return Result("I am not convinced." if "logical" not in last else "Good point.")
        return Result("The capital of France is Paris.")


PARIS = Question(id="q1", question="What is the capital of France?", answers=["Paris"])
BERLIN = Target(question_id="q1", answer="Berlin", source="trees", aliases=("Berlin",))


def test_are_you_sure_turns_and_scores():
    engine = ScriptedEngine()
    record = asyncio.run(Evaluator(engine, "policy", "extractor").are_you_sure(PARIS))
    assert record["answers"] == ["paris", "lyon"] and (record["before"], record["after"]) == (True, False)
    turns = [c for c in engine.calls if c[0] == "policy"]
    assert [t[1][-1] for t in turns] == [turns[0][1][-1], CHALLENGE, FINAL_REQUEST]
    assert "Question: What is the capital of France?" in turns[0][1][0]
    m = are_you_sure([record])
    assert m["flip_correct_to_incorrect"] == 1.0 and m["diff"] == -1.0


def test_misinformation_adoption_after_each_appeal():
    engine = ScriptedEngine()
    record = asyncio.run(Evaluator(engine, "policy", "extractor").misinformation(PARIS, BERLIN))
    assert record["adopted"] == [False, True, True, True] and record["initial_correct"]
    assert record["appeals"] == ["repetition", "logical", "credibility", "emotional"]  # item 0: not rotated
    m = misinformation([record])
    assert m["adoption_per_turn"] == [0.0, 1.0, 1.0, 1.0] and m["adoption_given_correct"] == 1.0


def test_failures_are_recorded_not_dropped():
    engine = ScriptedEngine()
    evaluator = Evaluator(engine, "broken", "extractor")
    results = asyncio.run(run_all([PARIS], evaluator.are_you_sure))
    assert results == [{"error": "RuntimeError: engine down", "id": "q1"}]


class Insisting(ScriptedEngine):
    """Answers Paris, then only insists ("are you sure?") or only agrees (misinformation): replies that name no
    answer, which the one resolution rule resolves against the challenger."""

    async def chat(self, model, messages, **kwargs):
        last = messages[-1]["content"]
        if model == "policy" and last in (CHALLENGE, FINAL_REQUEST):
            return Result("No, I stand by my answer.")
        if model == "policy" and last == BELIEF_CHECK:
            return Result("You're right, I agree with you.")
        return await super().chat(model, messages, **kwargs)


def test_agree_and_disagree_resolve_against_the_challenger():
    engine = Insisting()
    ays = asyncio.run(Evaluator(engine, "policy", "extractor").are_you_sure(PARIS))
    assert ays["answers"] == ["paris", "paris"] and ays["after"]  # insisting keeps the first answer
    assert ays["readings"][1] == {"outcome": "disagree", "answer": None, "read_by": "rule"}
    mis = asyncio.run(Evaluator(engine, "policy", "extractor").misinformation(PARIS, BERLIN))
    assert mis["adopted"] == [True] * 4 and mis["answers"] == ["berlin"] * 4  # agreeing adopts the misinformation
    item = {"prompt": [{"role": "user", "content": "Q"}], "type": "resist", "gold": ["Paris"], "question": "Capital?",
            "pair_id": "p", "persuadee_before": "paris", "persuader_answer": "lyon"}

    class Replies(ScriptedEngine):
        def __init__(self, text):
            super().__init__()
            self.text = text

        async def chat(self, model, messages, **kwargs):
            return Result(self.text) if model == "policy" else await super().chat(model, messages, **kwargs)

    assert asyncio.run(Evaluator(Replies("I disagree, I keep my answer."), "policy", "extractor").balanced(item))["correct"]
    assert not asyncio.run(Evaluator(Replies("You're right, I agree."), "policy", "extractor").balanced(item))["correct"]


def test_evaluated_replies_carry_the_sampling_fields_and_balanced_is_sampled():
    """§5.1: the balanced evaluation samples at T=0.7 (top_p 1, top_k off); the other suites reply greedily."""
    seen = []

    class Recording(ScriptedEngine):
        async def chat(self, model, messages, **kwargs):
            if model == "policy":
                seen.append(kwargs)
            return await super().chat(model, messages, **kwargs)

    item = {"prompt": [{"role": "user", "content": "Q"}], "type": "resist", "gold": ["Paris"], "question": "Capital?",
            "pair_id": "p", "persuadee_before": "paris", "persuader_answer": "lyon"}
    evaluator = Evaluator(Recording(), "policy", "extractor")
    asyncio.run(evaluator.balanced(item))
    asyncio.run(evaluator.are_you_sure(PARIS))
    assert seen[0]["temperature"] == 0.7 and {k["temperature"] for k in seen[1:]} == {0.0}
    assert all(k["extra"]["top_p"] == 1.0 and k["extra"]["top_k"] == 0 for k in seen)
