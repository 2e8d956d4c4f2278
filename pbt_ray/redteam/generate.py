"""Bouts and judge verdicts against the served app (the roles attacker and judge), asynchronously and in parallel.

A bout: the attacker rewrites one seed twin towards its class (K samples), the oracle labels the rewrite (on the
embedded default: the twin's class by construction, double-checked by the keyword rule of
:mod:`pbt_ray.redteam.oracle`; where the two disagree the label is unknown), and the judge classifies
it (greedy). Every request waits through a replica restart (:mod:`pbt_ray.serving.retry`); a bout whose requests
keep failing is counted as failed, never written, and the stage reruns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pbt_ray.redteam.bouts import Bout
from pbt_ray.redteam.data import Item
from pbt_ray.redteam.prompts import attacker_messages, clean_rewrite, judge_messages, parse_verdict


def oracle(construction: str, text: str) -> tuple[str | None, list[str]]:
    """(label, votes): the construction label when the keyword rule agrees; None when it does not (the rewrite may
    have dropped the disallowed ask, or added one: no label is trusted, so the bout is off target and never judge
    data). Measured on 135M rewrites, the rule misses some rephrased asks: None is the honest answer there."""
    from pbt_ray.redteam.oracle import keyword_label

    rule = keyword_label(text)
    return (construction if rule == construction else None), [f"construction:{construction}", f"keyword:{rule}"]


def majority(votes: list[str | None]) -> str | None:
    """The label more than half of the votes name; None without one (an unreadable vote names none)."""
    for label in ("problematic", "acceptable"):
        if sum(v == label for v in votes) * 2 > len(votes):
            return label
    return None


class Arena:
    """One attacker and one judge (served model ids or roles) behind a chat client; ``oracle_model`` labels when
    ``redteam.oracle`` is model."""

    def __init__(self, client, rcfg, concurrency: int | None = None, oracle_model: str | None = None):
        self.client, self.rcfg, self.oracle_model = client, rcfg, oracle_model
        self.gate = asyncio.Semaphore(concurrency or rcfg.concurrency)
        if rcfg.oracle == "model" and not oracle_model:
            raise ValueError("redteam.oracle is model but no oracle model was given")

    async def label(self, construction: str, text: str) -> tuple[str | None, list[str]]:
        """(label, votes) of a rewrite: by construction (:func:`oracle`) or by the oracle model's majority."""
        if self.rcfg.oracle == "construction":
            return oracle(construction, text)

        async def vote() -> str | None:
            async with self.gate:
                result = await self.client.chat(self.oracle_model, judge_messages(text), temperature=0.7,
                                                max_tokens=self.rcfg.max_tokens)
            return parse_verdict(result.text)

        votes = await asyncio.gather(*(vote() for _ in range(self.rcfg.oracle_votes)))
        return majority(list(votes)), [f"{self.oracle_model}:{v}" for v in votes]

    async def rewrite(self, attacker: str, item: Item) -> str:
        async with self.gate:
            result = await self.client.chat(attacker, attacker_messages(item.text, item.label),
                                            temperature=self.rcfg.temperature, max_tokens=self.rcfg.max_tokens)
        return clean_rewrite(result.text)

    async def verdict(self, judge: str, text: str, kind: str = "request") -> tuple[str, str | None]:
        async with self.gate:
            result = await self.client.chat(judge, judge_messages(text, kind), temperature=0.0,
                                            max_tokens=self.rcfg.max_tokens)
        return result.text.strip(), parse_verdict(result.text)

    async def bout(self, k: int, attacker: str, judge: str, item: Item, j: int) -> Bout | None:
        """One rewrite of ``item`` towards its class, labelled and judged; None when the attacker wrote nothing."""
        prompt = await self.rewrite(attacker, item)
        if len(prompt.split()) < 3:
            return None
        label, votes = await self.label(item.label, prompt)
        raw, verdict = await self.verdict(judge, prompt)
        return Bout(bout_id=f"r{k}-{item.id}-{j}", round=k, seed_id=item.id, target_class=item.label,
                    attacker_model=attacker, prompt=prompt, oracle_label=label, judge_model=judge, judge_raw=raw,
                    judge_verdict=verdict, oracle_votes=votes)


async def _gather(jobs: list, progress: Callable[[], None] | None = None) -> tuple[list, list[str]]:
    async def guarded(job):
        try:
            return await job, None
        except Exception as exc:  # noqa: BLE001 - counted; the stage reruns what failed
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            if progress is not None:
                progress()

    out = await asyncio.gather(*(guarded(j) for j in jobs))
    return [r for r, e in out], [e for r, e in out if e]


async def bouts(arena: Arena, k: int, attacker: str, judge: str, items: list[Item], progress=None
                ) -> tuple[list[Bout], dict[str, Any]]:
    jobs = [arena.bout(k, attacker, judge, item, j) for item in items for j in range(arena.rcfg.rewrites)]
    results, errors = await _gather(jobs, progress)
    done = [b for b in results if b is not None]
    return done, {"requested": len(jobs), "written": len(done), "failed": len(errors),
                  "empty_rewrites": sum(r is None for r in results) - len(errors), "errors": errors[:5]}


async def verdicts(arena: Arena, judge: str, items: list[Item], kind: str = "request", progress=None) -> list[dict]:
    """The judge's verdict on each item, as result rows (an item whose requests failed: a row with its error)."""
    results, _ = await _gather([arena.verdict(judge, item.text, kind) for item in items], progress)
    rows = []
    for item, result in zip(items, results):
        row = {"id": item.id, "pair": item.pair, "label": item.label, "contentious": item.contentious,
               "text": item.text, "judge": judge}
        if result is None:
            row["error"] = "request failed"
        else:
            row["raw"], row["verdict"] = result
        rows.append(row)
    return rows


async def attacks(arena: Arena, attacker: str, items: list[Item], progress=None) -> list[dict]:
    """One rewrite per item by ``attacker``, labelled by the oracle (the judges' verdicts are added later)."""
    async def one(item: Item):
        prompt = await arena.rewrite(attacker, item)
        label, votes = await arena.label(item.label, prompt) if prompt else (None, [])  # None: not on target
        return prompt, label, votes

    results, _ = await _gather([one(item) for item in items], progress)
    rows = []
    for item, result in zip(items, results):
        row = {"id": item.id, "pair": item.pair, "target_class": item.label, "attacker": attacker}
        if result is None:
            row["error"] = "request failed"
        else:
            prompt, label, votes = result
            row.update(prompt=prompt, oracle_label=label, oracle_votes=votes)
        rows.append(row)
    return rows
