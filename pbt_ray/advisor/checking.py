"""Whether a receiver's answer is right, per task: the project's matcher (:func:`pbt_ray.answers.is_correct`) for
trivia and multiple choice, an exact numeric rule for arithmetic and GSM8K-style final answers.

The numeric rule: the reply's final answer is the number after the last '####' (GSM8K's marker), else after the
last "answer is" / "answer:", else the last number in the reply; commas in thousands and a trailing '.0' are
ignored, fractions and decimals compare exactly as rationals. Small and exact on purpose: `math-verify` (which
parses LaTeX) is what MATH-500's symbolic answers will need, not arithmetic.
"""

from __future__ import annotations

import re
from fractions import Fraction

from pbt_ray.answers import is_correct

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?"
_MARKED = re.compile(rf"####\s*\$?\s*({_NUMBER})")
_STATED = re.compile(rf"answer\s*(?:is|:|=)\s*\$?\s*({_NUMBER})", re.IGNORECASE)
_ANY = re.compile(_NUMBER)


def to_number(text: str) -> Fraction | None:
    text = text.replace(",", "").strip()
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def final_number(reply: str) -> Fraction | None:
    """The reply's final numeric answer (see the module doc), or None when it states none."""
    for pattern in (_MARKED, _STATED):
        found = pattern.findall(reply)
        if found:
            return to_number(found[-1])
    found = [m for m in _ANY.findall(reply) if re.search(r"\d", m)]
    return to_number(found[-1]) if found else None


def numeric_correct(reply: str, gold: list[str]) -> bool:
    value = final_number(reply)
    return value is not None and any(value == to_number(g) for g in gold if to_number(g) is not None)


def check(task: str, answer: str | None, gold: list[str], choices: dict[str, str] | None = None) -> bool:
    """``task`` numeric: ``answer`` is the whole reply, read by :func:`final_number`; otherwise ``answer`` is what
    the answer instrument read, scored by the one matcher every stage uses."""
    if task == "numeric":
        return answer is not None and numeric_correct(answer, gold)
    return is_correct(answer, gold, choices)


def states_answer(signal: str, gold: list[str], choices: dict[str, str] | None = None, task: str = "text") -> bool:
    """Whether an advisor's signal simply states the answer (the gold number; a gold alias; a gold choice's text or
    its label named as the answer, "option B", "answer is (B)"), rather than a hint: reported next to the gains,
    since a signal that gives the answer away is not persuasion."""
    text = signal.lower()

    def mentions(name: str) -> bool:
        return len(name) > 1 and re.search(rf"(?<![a-z0-9]){re.escape(name.lower())}(?![a-z0-9])", text) is not None

    if task == "numeric":
        values = {to_number(g) for g in gold} - {None}
        return any(to_number(m) in values for m in _ANY.findall(signal))
    if choices:
        labels = [g for g in gold if g in choices]
        named = any(re.search(rf"\b(answer|option|choice)\s*(is\s*)?[(\[]?{re.escape(g.lower())}\b", text) for g in labels)
        return named or any(mentions(choices[g]) for g in labels)
    return any(mentions(g) for g in gold)
