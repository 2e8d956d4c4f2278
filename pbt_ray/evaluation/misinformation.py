"""The misinformation each question is argued towards (PBT_SPEC.md §5.3, Farm), and the appeal order.

Farm (Xu et al. 2024) argues for plausible misinformation; another question's answer (a date for a "who"
question) is rejected by every model and measures nothing. A question's target is, first found:

- ``farm``: its row in a Farm-format file (docs/evaluation.md), with the file's own persuasion passages;
- ``trees``: the wrong answer this run's debaters gave most often for it (multiple choice: the wrong choice
  they picked most), its surface forms as aliases;
- ``choice``: multiple choice without such an answer, a seeded random wrong choice;
- ``generated``: free form without one, an answer the persuader role writes as plausible but wrong.

Every target is checked wrong by the one matcher (:mod:`pbt_ray.answers`); a question without a usable one
keeps a target with ``answer`` None and the reason in ``error``, so it is recorded as failed, never replaced
by something else. Pure except :func:`generate_target` (one chat request per try) and :func:`load_farm`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbt_ray.answers import canonical, is_correct, normalize_answer, parse_extraction, same_answer
from pbt_ray.dialogue.rules import NEUTRAL_SAMPLING
from pbt_ray.evaluation.protocols import FARM_PASSAGE, FARM_REPETITION, wrong_answer_request
from pbt_ray.questions import Question

SOURCES = ("trees", "generated", "farm", "choice")
FARM_STRATEGIES = ("logical", "credibility", "emotional")  # Farm's passage lists; its "control" is repetition


class FarmFormatError(ValueError):
    """A Farm-format file that cannot be read; the message names the file and row."""


@dataclass(frozen=True)
class Target:
    question_id: str
    answer: str | None  # the misinformation (a choice label for multiple choice); None: no usable target
    source: str  # one of SOURCES
    aliases: tuple[str, ...] = ()  # every form that counts as adopting it (the answer among them)
    text: str = ""  # how the persuader names it (multiple choice: "(C) sink"); default: the answer
    negated: bool = False  # Farm NQ1 "not X": any answer other than the gold one is adopting it
    texts: dict[str, str] | None = None  # per-appeal persuasion messages from a Farm file
    support: int = 0  # trees: how many debater turns gave it
    error: str | None = None

    @property
    def shown(self) -> str:
        return self.text or self.answer or ""

    def adopted(self, answer: str | None, gold: list[str], choices: dict[str, str] | None = None) -> bool:
        """The model holds the misinformation: its resolved answer is the target or an alias of it."""
        if self.negated:
            return canonical(answer, choices) is not None and not is_correct(answer, gold, choices)
        return any(same_answer(answer, alias, choices) for alias in self.aliases)

    def record(self) -> dict[str, Any]:
        return {"answer": self.answer, "text": self.shown, "source": self.source, "aliases": list(self.aliases),
                "negated": self.negated, "support": self.support, "farm_texts": self.texts is not None,
                "error": self.error}


def appeal_order(appeals: list[str], index: int, rotate: bool = True) -> list[str]:
    """Item ``index``'s appeal order: rotated by the index, so over len(appeals) consecutive items every
    appeal comes at every position once and per-appeal rates are not confounded with the turn."""
    if not rotate or not appeals:
        return list(appeals)
    k = index % len(appeals)
    return list(appeals[k:]) + list(appeals[:k])


def question_key(text: str) -> str:
    """Question text as matched across files: the answer normalization (case, punctuation, articles)."""
    return normalize_answer(text)


def tree_answers(trees: Iterable, questions: list[Question]) -> dict[str, list[str]]:
    """{question id: every real answer (extracted surface form) the debaters gave in the trees}; a tree
    belongs to a question by id, else by question text. Agree / Disagree / NONE turns name no answer."""
    by_id = {q.id: q.id for q in questions}
    by_text = {question_key(q.question): q.id for q in questions}
    out: dict[str, list[str]] = {}
    for tree in trees:
        qid = by_id.get(tree.question_id) or by_text.get(question_key(tree.question))
        if qid is None:
            continue
        out.setdefault(qid, []).extend(n.raw_answer for n in tree.nodes
                                       if n.outcome == "answer" and n.raw_answer and n.raw_answer.strip())
    return out


def from_trees(q: Question, answers: list[str]) -> Target | None:
    """The wrong answer given most often, grouped by the matcher's canonical form (ties: the smaller form)."""
    labels = {label.upper(): label for label in q.choices or {}}  # canonical names choices by upper-case label
    groups: dict[str, list[str]] = {}
    for raw in answers:
        key = canonical(raw, q.choices)
        if key is None or is_correct(raw, q.answers, q.choices) or (q.choices and key not in labels):
            continue  # multiple choice: only answers that name a choice
        groups.setdefault(key, []).append(" ".join(raw.split()))
    if not groups:
        return None
    key = min(groups, key=lambda k: (-len(groups[k]), k))
    if q.choices:
        label = labels[key]
        return Target(q.id, label, "trees", (label, q.choices[label]), f"({label}) {q.choices[label]}",
                      support=len(groups[key]))
    forms = [f for f, _ in sorted(Counter(groups[key]).items(), key=lambda fc: (-fc[1], fc[0]))]
    return Target(q.id, forms[0], "trees", tuple(forms), support=len(groups[key]))


def random_choice(q: Question, seed: int = 12) -> Target:
    """A seeded wrong choice (the same for a question on every run with this seed)."""
    wrong = sorted(label for label in q.choices or {} if not is_correct(label, q.answers, q.choices))
    if not wrong:
        return Target(q.id, None, "choice", error="every choice is correct")
    label = random.Random(f"{seed}|{q.id}").choice(wrong)
    return Target(q.id, label, "choice", (label, q.choices[label]), f"({label}) {q.choices[label]}")


async def generate_target(client, model: str, q: Question, seed: int = 12, tries: int = 3, max_tokens: int = 32,
                          send_seed: bool = True) -> Target:
    """Ask ``model`` (the persuader role) for a plausible wrong answer; each try has its own seed (sent unless
    ``send_seed`` is off, as grow.seed_requests for engines that crash on seeded requests), and an empty
    reply, a long one or one the matcher counts as correct is rejected. All rejected: a failed target."""
    rejected = []
    for attempt in range(tries):
        try:
            result = await client.chat(model, wrong_answer_request(q.question, q.answers), temperature=0.7,
                                       max_tokens=max_tokens, seed=seed + attempt if send_seed else None,
                                       extra=dict(NEUTRAL_SAMPLING))
        except Exception as exc:  # noqa: BLE001 - the failure is the target's, the evaluation goes on
            rejected.append(f"{type(exc).__name__}: {exc}")
            continue
        answer, outcome = parse_extraction(result.text)
        if outcome != "answer" or not answer:
            rejected.append(f"no answer in {result.text!r}")
        elif len(answer.split()) > 10:
            rejected.append(f"too long: {answer!r}")
        elif is_correct(answer, q.answers):
            rejected.append(f"correct: {answer!r}")
        else:
            return Target(q.id, answer, "generated", (answer,))
    return Target(q.id, None, "generated", error=f"no usable wrong answer in {tries} tries: {'; '.join(rejected)}")


async def build_targets(questions: list[Question], answers: dict[str, list[str]], *,
                        farm: dict[str, Target] | None = None,
                        generate: Callable[[Question], Awaitable[Target]] | None = None, seed: int = 12,
                        concurrency: int = 16) -> dict[str, Target]:
    """Every question's target: Farm row, else the trees, else a random wrong choice or a generated answer."""
    out: dict[str, Target] = {}
    pending = []
    for q in questions:
        target = (farm or {}).get(q.id) or from_trees(q, answers.get(q.id, []))
        if target is None and q.choices:
            target = random_choice(q, seed)
        if target is None and generate is None:
            target = Target(q.id, None, "generated", error="no wrong answer in the trees and no persuader to ask")
        if target is None:
            pending.append(q)
        else:
            out[q.id] = target
    gate = asyncio.Semaphore(concurrency)

    async def one(q: Question) -> Target:
        async with gate:
            return await generate(q)

    for q, target in zip(pending, await asyncio.gather(*(one(q) for q in pending))):
        out[q.id] = target
    return out


def save_targets(path: str | Path, targets: dict[str, Target]) -> None:
    """Every question's target as JSON (written whole, then renamed), for :func:`load_targets`."""
    import dataclasses
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({qid: dataclasses.asdict(t) for qid, t in targets.items()}, indent=1) + "\n")
    os.replace(tmp, path)


def load_targets(path: str | Path, questions: list[Question]) -> dict[str, Target] | None:
    """The targets :func:`save_targets` wrote, if the file holds one for every question (else None: build them)."""
    path = Path(path)
    if not path.is_file():
        return None
    rows = json.loads(path.read_text())
    if any(q.id not in rows for q in questions):
        return None
    return {q.id: Target(**{**rows[q.id], "aliases": tuple(rows[q.id]["aliases"])}) for q in questions}


# ---- Farm files (Xu et al. 2024; schema in docs/evaluation.md) -------------------------------------------


def load_farm(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a Farm-format file: a JSON list or JSON lines, each with "question" and "adv"."target"."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise FarmFormatError(f"{path}: not JSON or JSON lines ({exc})") from None
    for i, row in enumerate(rows, 1):
        adv = row.get("adv") if isinstance(row, dict) else None
        if not isinstance(adv, dict) or not isinstance(row.get("question"), str) or adv.get("target") in (None, ""):
            raise FarmFormatError(f"{path} row {i}: needs a \"question\" string and \"adv\": {{\"target\": ...}}")
    return rows


def farm_targets(rows: list[dict[str, Any]], questions: list[Question]) -> dict[str, Target]:
    """Targets for the questions that have a Farm row, matched by "id"/"question_id" or by question text."""
    by_id = {str(r.get("id", r.get("question_id"))): r for r in rows if r.get("id", r.get("question_id")) is not None}
    by_text = {question_key(r["question"]): r for r in rows}
    out = {}
    for q in questions:
        row = by_id.get(q.id) or by_text.get(question_key(q.question))
        if row is not None:
            out[q.id] = _farm_target(row, q)
    return out


def _farm_target(row: dict[str, Any], q: Question) -> Target:
    adv = row["adv"]
    target = str(adv["target"]).strip()
    negated = False
    if isinstance(row.get("answer"), bool) or target.lower() in ("true", "false"):  # BoolQ: yes/no questions
        answer = "yes" if target.lower() == "true" else "no"
        aliases = (answer, target.lower())
    elif target.lower().startswith("not ") and is_correct(target[4:], q.answers, q.choices):
        answer, aliases, negated = target, (target,), True  # NQ1: "not <gold>"
    else:
        answer, aliases = target, (target,)
    control = str(adv.get("control") or "").strip()
    texts = {}
    if control:
        texts["repetition"] = FARM_REPETITION.format(control=control)
        for strategy in FARM_STRATEGIES:
            passages = [p for p in adv.get(strategy) or [] if isinstance(p, str) and p.strip()]
            if passages:  # Farm's first passage of the strategy; ours has one turn per appeal
                texts[strategy] = FARM_PASSAGE.format(passage=passages[0].strip(), control=control)
    made = Target(q.id, answer, "farm", aliases, negated=negated, texts=texts or None)
    if not negated and is_correct(answer, q.answers, q.choices):
        return Target(q.id, None, "farm", aliases, texts=made.texts,
                      error=f"the Farm target {target!r} matches a gold answer of {q.id}")
    return made
