"""Episodes against the served app: the advisor's signals and the frozen receivers' answers, read by the one answer
instrument (multiple choice and trivia: :class:`pbt_ray.dialogue.extraction.Extractor` and the one resolution and
matching rule) or the numeric rule (:mod:`pbt_ray.advisor.checking`), so an answer is scored the same way in
episodes and in every evaluation. Every request waits through a replica restart (:mod:`pbt_ray.serving.retry`)."""

from __future__ import annotations

import asyncio
from typing import Any

from pbt_ray.advisor.checking import final_number, numeric_correct, states_answer
from pbt_ray.advisor.episodes import Episode
from pbt_ray.advisor.prompts import advisor_messages, clean_signal, receiver_messages, task_of
from pbt_ray.questions import Question


class Table:
    """The advisor, the receivers and the extractor behind one retrying chat client."""

    def __init__(self, client, acfg, extractor: str, extract_mode: str):
        from pbt_ray.dialogue.extraction import Extractor

        self.client, self.acfg = client, acfg
        self.gate = asyncio.Semaphore(acfg.concurrency)
        self.reader = Extractor(client, extractor, extract_mode)

    async def _chat(self, model: str, messages, temperature: float, max_tokens: int) -> str:
        async with self.gate:
            return (await self.client.chat(model, messages, temperature=temperature, max_tokens=max_tokens)).text

    async def signal(self, advisor: str, q: Question, temperature: float) -> str:
        return clean_signal(await self._chat(advisor, advisor_messages(q), temperature, self.acfg.signal_max_tokens))

    async def answer(self, receiver: str, q: Question, signal: str | None, temperature: float) -> tuple[str, str | None, bool]:
        """(reply, answer as read, right)."""
        from pbt_ray.answers import is_correct, resolve

        reply = " ".join((await self._chat(receiver, receiver_messages(q, signal), temperature,
                                           self.acfg.max_tokens)).split())
        if task_of(q) == "numeric":
            value = final_number(reply)
            return reply, None if value is None else str(value), numeric_correct(reply, q.answers)

        async def request(model, messages, **params):
            async with self.gate:
                return await self.client.chat(model, messages, **params)

        reading = await self.reader.read(q.question, reply, q.choices, request=request)
        answer = resolve(reading.outcome, reading.answer, choices=q.choices)
        return reply, answer, is_correct(answer, q.answers, q.choices)

    async def episode(self, k: int, q: Question, signal_id: str, signal: str, advisor: str | None, receiver: str,
                      n: int, temperature: float) -> Episode:
        results = await asyncio.gather(*(self.answer(receiver, q, signal or None, temperature) for _ in range(n)))
        return Episode(episode_id=f"r{k}-{q.id}-{signal_id}-{receiver}", round=k, question_id=q.id, gold=list(q.answers),
                       signal_id=signal_id, signal=signal, advisor=advisor, receiver=receiver,
                       receiver_prompt=receiver_messages(q, signal or None)[0]["content"],
                       replies=[r[0] for r in results], answers=[r[1] for r in results], correct=[r[2] for r in results],
                       states_answer=bool(signal) and states_answer(signal, q.answers, q.choices,
                                                                    "numeric" if task_of(q) == "numeric" else "text"))

    async def question(self, k: int, q: Question, advisor: str, receivers: list[str]) -> list[Episode]:
        """One question's episodes: each receiver's n answers without a signal and with each of K signals."""
        a = self.acfg
        signals = await asyncio.gather(*(self.signal(advisor, q, a.advisor_temperature) for _ in range(a.signals)))
        jobs = [self.episode(k, q, "none", "", None, r, a.answers, a.receiver_temperature) for r in receivers]
        jobs += [self.episode(k, q, f"s{j}", s, advisor, r, a.answers, a.receiver_temperature)
                 for j, s in enumerate(signals) if s for r in receivers]
        return list(await asyncio.gather(*jobs))


async def gather_questions(table: Table, k: int, questions: list[Question], advisor: str, receivers: list[str],
                           progress=None) -> tuple[list[Episode], dict[str, Any]]:
    async def one(q):
        try:
            return await table.question(k, q, advisor, receivers), None
        except Exception as exc:  # noqa: BLE001 - counted; the stage reruns
            return [], f"{q.id}: {type(exc).__name__}: {exc}"
        finally:
            if progress is not None:
                progress()

    out = await asyncio.gather(*(one(q) for q in questions))
    errors = [e for _, e in out if e]
    return [ep for eps, _ in out for ep in eps], {"questions": len(questions), "failed": len(errors),
                                                  "errors": errors[:5]}
