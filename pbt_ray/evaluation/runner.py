"""Running the evaluation protocols against an OpenAI-style endpoint, asynchronously and in parallel.

The evaluated model answers (greedy); the one fixed extractor (named in every result) reads its answers
with the same few-shot prompt as tree growth; :func:`pbt_ray.answers.is_correct` scores them. Items run
concurrently up to ``concurrency``; an item whose requests keep failing is recorded with its error, never
dropped silently.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from pbt_ray.answers import is_correct, same_answer
from pbt_ray.dialogue.extraction import REQUEST_OPTIONS, extraction_messages, parse
from pbt_ray.evaluation.protocols import (
    BELIEF_CHECK, are_you_sure_followups, first_turn, misinformation_turns,
)
from pbt_ray.questions import Question


class Evaluator:
    """One evaluated model and one extractor behind a chat client (``ChatClient`` or ``HandleChatClient``)."""

    def __init__(self, client, model: str, extractor: str, max_tokens: int = 80, concurrency: int = 32):
        self.client, self.model, self.extractor = client, model, extractor
        self.max_tokens = max_tokens
        self.gate = asyncio.Semaphore(concurrency)

    async def reply(self, messages: list[dict[str, str]]) -> str:
        async with self.gate:
            result = await self.client.chat(self.model, messages, temperature=0.0, max_tokens=self.max_tokens)
        return " ".join(result.text.split())

    async def answer(self, question: str, reply: str, choices: dict[str, str] | None) -> str | None:
        """The extractor's reading of ``reply``: an answer, or None (NONE / Agree / Disagree: no own answer)."""
        if not reply.strip():
            return None
        async with self.gate:
            result = await self.client.chat(self.extractor, extraction_messages(question, reply, choices),
                                            temperature=0.0, max_tokens=24, extra=dict(REQUEST_OPTIONS))
        raw, outcome = parse(result.text)
        return raw if outcome == "answer" else None

    async def are_you_sure(self, q: Question) -> dict[str, Any]:
        """§5.2: answer, challenge, final answer; scored before (first reply) and after (final reply)."""
        messages = first_turn(q.question, q.choices)
        replies = []
        for follow_up in [None, *are_you_sure_followups()]:
            if follow_up is not None:
                messages += [{"role": "assistant", "content": replies[-1]}, {"role": "user", "content": follow_up}]
            replies.append(await self.reply(messages))
        first, final = await asyncio.gather(self.answer(q.question, replies[0], q.choices),
                                            self.answer(q.question, replies[-1], q.choices))
        return {"question_id": q.id, "replies": replies, "answers": [first, final],
                "before": is_correct(first, q.answers, q.choices), "after": is_correct(final, q.answers, q.choices)}

    async def misinformation(self, q: Question, wrong: str, appeals: list[str] | None = None) -> dict[str, Any]:
        """Farm-style (§5.3): after the model's first answer, one persuasion message per appeal for ``wrong``;
        after each the model replies and is asked for its current answer (the belief check)."""
        messages = first_turn(q.question, q.choices)
        first = await self.reply(messages)
        messages.append({"role": "assistant", "content": first})
        adopted, answers = [], []
        for turn in misinformation_turns(wrong, appeals):
            messages.append({"role": "user", "content": turn})
            messages.append({"role": "assistant", "content": await self.reply(messages)})
            check = await self.reply([*messages, {"role": "user", "content": BELIEF_CHECK}])
            answer = await self.answer(q.question, check, q.choices)
            answers.append(answer)
            adopted.append(same_answer(answer, wrong, q.choices))
        initial = await self.answer(q.question, first, q.choices)
        return {"question_id": q.id, "wrong": wrong, "initial_correct": is_correct(initial, q.answers, q.choices),
                "answers": answers, "adopted": adopted}

    async def balanced(self, item: dict) -> dict[str, Any]:
        """§5.1: the model replies to a held-out persuasion prompt; right if it holds/takes the gold answer."""
        reply = await self.reply(item["prompt"])
        answer = await self.answer(item["question"], reply, item.get("choices"))
        return {"pair_id": item["pair_id"], "type": item["type"], "reply": reply, "answer": answer,
                "correct": is_correct(answer, item["gold"], item.get("choices"))}


def wrong_answer(q: Question, pool: list[Question], seed: int = 12) -> str:
    """The misinformation to argue for: a wrong choice (multiple choice), else another question's gold answer
    (seeded per question). Farm ships generated, plausible misinformation; pass its file when you have it."""
    rng = random.Random(f"{seed}|{q.id}")
    if q.choices:
        wrong = [label for label in q.choices if not is_correct(label, q.answers, q.choices)]
        return rng.choice(wrong)
    others = [o.answers[0] for o in pool if o.id != q.id and not is_correct(o.answers[0], q.answers)]
    if not others:
        raise ValueError(f"question {q.id}: no other question's answer to use as misinformation")
    return rng.choice(others)


async def run_all(items: list, run_one: Callable[[Any], Awaitable[dict]], key: str = "id",
                  on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every item concurrently (the Evaluator bounds requests); failures become records with the error."""
    async def guarded(item) -> dict:
        try:
            result = await run_one(item)
        except Exception as exc:  # noqa: BLE001 - recorded with its item, the rest of the run goes on
            ident = getattr(item, key, None) if not isinstance(item, dict) else item.get(key)
            result = {"error": f"{type(exc).__name__}: {exc}", key: ident}
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(guarded(i) for i in items)))
