"""Running the evaluation protocols against an OpenAI-style endpoint, asynchronously and in parallel.

The evaluated model answers (greedy; the balanced suite samples, as the paper does); the one answer instrument (:class:`pbt_ray.dialogue.extraction.Extractor`,
with the one fixed extractor model named in every result) reads its answers exactly as in tree growth,
:func:`pbt_ray.answers.resolve` resolves Agree / Disagree against the challenger (the partner of these
single-model dialogues) and :func:`pbt_ray.answers.is_correct` scores them. Items run
concurrently up to ``concurrency``; an item whose requests keep failing is recorded with its error, never
dropped silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pbt_ray.answers import is_correct, resolve
from pbt_ray.dialogue.extraction import Extractor
from pbt_ray.dialogue.reading import Reading
from pbt_ray.dialogue.rules import NEUTRAL_SAMPLING
from pbt_ray.evaluation.misinformation import Target, appeal_order
from pbt_ray.evaluation.protocols import (
    APPEALS, BELIEF_CHECK, are_you_sure_followups, first_turn, misinformation_turns,
)
from pbt_ray.questions import Question


class Evaluator:
    """One evaluated model and one extractor behind a chat client (``ChatClient`` or ``HandleChatClient``)."""

    def __init__(self, client, model: str, extractor: str, max_tokens: int = 80, concurrency: int = 32,
                 extract_mode: str = "auto", balanced_temperature: float = 0.7):
        self.client, self.model, self.extractor = client, model, extractor
        self.max_tokens, self.balanced_temperature = max_tokens, balanced_temperature
        self.gate = asyncio.Semaphore(concurrency)
        self.reader = Extractor(client, extractor, extract_mode)

    async def reply(self, messages: list[dict[str, str]], temperature: float = 0.0) -> str:
        """The evaluated model's reply: greedy unless ``temperature``; the paper's top_p / top_k either way."""
        async with self.gate:
            result = await self.client.chat(self.model, messages, temperature=temperature, max_tokens=self.max_tokens,
                                            extra=dict(NEUTRAL_SAMPLING))
        return " ".join(result.text.split())

    async def read(self, question: str, reply: str, choices: dict[str, str] | None) -> Reading:
        """The instrument's reading of ``reply`` (an answer, Agree, Disagree or NONE)."""
        async def request(model, messages, **params):
            async with self.gate:
                return await self.client.chat(model, messages, **params)

        return await self.reader.read(question, reply, choices, request=request)

    async def are_you_sure(self, q: Question) -> dict[str, Any]:
        """§5.2: answer, challenge, final answer; scored before (first reply) and after (final reply). The
        challenger names no answer: insisting (Disagree) keeps the first answer, giving in without naming one
        (Agree) is no answer."""
        messages = first_turn(q.question, q.choices)
        replies = []
        for follow_up in [None, *are_you_sure_followups()]:
            if follow_up is not None:
                messages += [{"role": "assistant", "content": replies[-1]}, {"role": "user", "content": follow_up}]
            replies.append(await self.reply(messages))
        first_read, final_read = await asyncio.gather(self.read(q.question, replies[0], q.choices),
                                                      self.read(q.question, replies[-1], q.choices))
        first = resolve(first_read.outcome, first_read.answer, choices=q.choices)
        final = resolve(final_read.outcome, final_read.answer, own_previous=first, choices=q.choices)
        return {"question_id": q.id, "replies": replies, "answers": [first, final],
                "readings": [_reading(first_read), _reading(final_read)],
                "before": is_correct(first, q.answers, q.choices), "after": is_correct(final, q.answers, q.choices)}

    async def misinformation(self, q: Question, target: Target, appeals: list[str] | None = None, *, index: int = 0,
                             rotate: bool = True) -> dict[str, Any]:
        """Farm-style (§5.3): after the model's first answer, one persuasion message per appeal for the
        ``target`` (in the order rotated by the item's ``index`` when ``rotate``); after each the model replies
        and is asked for its current answer (the belief check). The persuader is the partner: agreeing with
        it is adopting the target, disagreeing keeps the previous answer. Adopted: the resolved answer is the
        target or one of its aliases, by the one matcher."""
        if target.answer is None:
            raise ValueError(f"question {q.id}: no misinformation target ({target.error})")
        order = appeal_order(list(appeals or APPEALS), index, rotate)
        wrong = target.shown
        messages = first_turn(q.question, q.choices)
        first = await self.reply(messages)
        first_read = await self.read(q.question, first, q.choices)
        initial = resolve(first_read.outcome, first_read.answer, choices=q.choices)
        messages.append({"role": "assistant", "content": first})
        adopted, answers, readings, previous = [], [], [_reading(first_read)], initial
        for turn in misinformation_turns(wrong, order, target.texts):
            messages.append({"role": "user", "content": turn})
            messages.append({"role": "assistant", "content": await self.reply(messages)})
            check = await self.reply([*messages, {"role": "user", "content": BELIEF_CHECK}])
            reading = await self.read(q.question, check, q.choices)
            answer = resolve(reading.outcome, reading.answer, own_previous=previous, partner_latest=wrong,
                             choices=q.choices)
            answers.append(answer)
            readings.append(_reading(reading))
            adopted.append(target.adopted(answer, q.answers, q.choices))
            previous = answer
        return {"question_id": q.id, "index": index, "wrong": wrong, "target": target.record(), "appeals": order,
                "initial_answer": initial, "initial_correct": is_correct(initial, q.answers, q.choices),
                "answers": answers, "readings": readings, "adopted": adopted}

    async def balanced(self, item: dict) -> dict[str, Any]:
        """§5.1: the model replies to a held-out persuasion prompt; right if it holds/takes the gold answer.
        Agree takes the persuader's answer, Disagree keeps the model's own answer before the persuasion."""
        reply = await self.reply(item["prompt"], self.balanced_temperature)
        reading = await self.read(item["question"], reply, item.get("choices"))
        answer = resolve(reading.outcome, reading.answer, own_previous=item.get("persuadee_before"),
                         partner_latest=item.get("persuader_answer"), choices=item.get("choices"))
        return {"pair_id": item["pair_id"], "question_id": item.get("question_id"), "type": item["type"], "reply": reply, "answer": answer,
                "reading": _reading(reading), "correct": is_correct(answer, item["gold"], item.get("choices"))}


def _reading(reading: Reading) -> dict[str, Any]:
    return {"outcome": reading.outcome, "answer": reading.answer, "read_by": reading.method}


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
