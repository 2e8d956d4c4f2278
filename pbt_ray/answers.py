"""The one answer normalization and matching rule of the project (PBT_SPEC.md §3).

The reference code matches answers five different ways (exact strings for pruning, Levenshtein merges
for preference labels, TriviaQA normalization in some evals). Here every comparison - tree pruning,
correctness, agreement, preference labels, evals - goes through :func:`canonical`, so an answer that
counts as correct in one stage counts as correct in all of them.

Pure Python on purpose: it runs inside Ray workers, tests and the CLI without any extra dependency.
"""

from __future__ import annotations

import re
import string
import unicodedata

NONE = "NONE"

_PUNCT = set(string.punctuation) | {"‘", "’", "´", "`"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MARKER = re.compile(r"final\s+answer[\s*]*:", re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»"
_PAREN_TAIL = re.compile(r"^(.*\S)\s*\([^()]*\)$")
_TOKEN_TAIL = re.compile(r"[\s.!?,;:]+$")
_MAX_FALLBACK_WORDS = 8


def normalize_answer(text: str) -> str:
    """TriviaQA ``normalize_answer`` plus accent stripping.

    Steps of the official script: underscores -> spaces, lowercase, ASCII punctuation and the quotes
    ‘ ’ ´ ` -> space, whole-word a/an/the -> space, collapse whitespace, strip. Our addition: NFKD
    decomposition with combining marks dropped, so "Brasília" matches the alias "Brasilia".
    """
    text = unicodedata.normalize("NFKD", text.replace("_", " ").lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _clean(text: str) -> str:
    """Strip what extractor models wrap answers in: whitespace, quotes, markdown bold, a final '.'."""
    previous = None
    while text != previous:
        previous = text
        text = text.strip().strip(_QUOTES).strip("*_").strip()
        if text.endswith("."):  # also eats the "..." the reference appends to unfinished turns
            text = text[:-1]
    match = _PAREN_TAIL.match(text)
    return match.group(1).strip() if match else text


def parse_extraction(output: str) -> tuple[str | None, str]:
    """Read an extractor model's output into ``(raw_answer, outcome)``; never raises.

    The answer is the rest of the line after the LAST "Final Answer:" (models sometimes restate the
    instructions' example first); when that line is empty the next non-empty line is used. Without a
    marker a short first line (<= 8 words) is taken as the answer, since small extractors often answer
    bare. The special tokens Agree / Disagree / NONE (and "n/a", empty) become outcomes, not answers.
    """
    text = output if isinstance(output, str) else ""
    markers = list(_MARKER.finditer(text))
    if markers:
        lines = text[markers[-1].end():].split("\n")
        candidate = lines[0]
        if not _clean(candidate):
            candidate = next((line for line in lines[1:] if _clean(line)), "")
        answer = _clean(candidate)
    else:
        first = next((line for line in text.split("\n") if line.strip()), "")
        answer = _clean(first)
        if len(answer.split()) > _MAX_FALLBACK_WORDS:
            return None, "none"
    token = _TOKEN_TAIL.sub("", answer).lower()
    if token in ("agree", "disagree"):
        return None, token
    if token in ("", "none", "n/a"):
        return None, "none"
    return answer, "answer"


_LABEL_ONLY = re.compile(r"^\(?([a-z])\)?[.):]?$", re.IGNORECASE)
_LABEL_PREFIXED = re.compile(
    r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is\s*)?[:\-]?\s*\(?([a-z])\)?(?:[.):]|\s|$)",
    re.IGNORECASE,
)
_LABEL_LEADING = re.compile(r"^(?:\(([a-z])\)|([a-z])[.):](?:\s|$))", re.IGNORECASE)


def _resolve_label(answer: str, choices: dict[str, str]) -> str | None:
    """The choice label an answer names, or None. Choice text is tried first so that an answer like
    "A. Lincoln" only becomes label A when no choice reads "A. Lincoln"."""
    labels = {label.upper(): label for label in choices}
    texts = {label.upper(): normalize_answer(text) for label, text in choices.items()}
    norm = normalize_answer(answer)
    exact = [label for label, text in texts.items() if text and text == norm]
    if len(exact) == 1:
        return exact[0]
    stripped = answer.strip()
    for pattern in (_LABEL_ONLY, _LABEL_PREFIXED, _LABEL_LEADING):
        match = pattern.match(stripped)
        if match:
            letter = next(g for g in match.groups() if g).upper()
            if letter in labels:
                return letter
    padded = f" {norm} "
    contained = [label for label, text in texts.items() if text and f" {text} " in padded]
    return contained[0] if len(contained) == 1 else None


def canonical(answer: str | None, choices: dict[str, str] | None = None) -> str | None:
    """The form stored in trees and compared for agreement; None means "no answer".

    Free text: :func:`normalize_answer`. Multiple choice: the upper-case label the answer names
    (label forms such as "(B)", "option B", "B. refrigerator", or the choice text), falling back to
    the normalized text when it names no choice.
    """
    if answer is None or not answer.strip() or answer.strip() == NONE:
        return None
    if choices:
        label = _resolve_label(answer, choices)
        if label is not None:
            return label
    return normalize_answer(answer) or None


def is_correct(answer: str | None, gold: list[str], choices: dict[str, str] | None = None) -> bool:
    """Exact match after :func:`canonical` against any gold alias (TriviaQA EM, PBT_SPEC §3)."""
    value = canonical(answer, choices)
    return value is not None and value in {canonical(g, choices) for g in gold}


def same_answer(a: str | None, b: str | None, choices: dict[str, str] | None = None) -> bool:
    """Two agents agree when both gave an answer and the canonical forms are equal."""
    ca, cb = canonical(a, choices), canonical(b, choices)
    return ca is not None and ca == cb


OUTCOMES = ("answer", "agree", "disagree", "none")


def resolve(outcome: str, answer: str | None, *, own_previous: str | None = None, partner_latest: str | None = None,
            choices: dict[str, str] | None = None) -> str | None:
    """The one resolution rule: the canonical answer a turn stands for, given what the reader found in it.

    ``answer`` -> its canonical form; ``agree`` -> the partner's latest answer (agreeing with the
    misinformation is adopting it); ``disagree`` -> the speaker's own previous answer (insisting after "are
    you sure?" keeps the first answer); ``none`` -> no answer (scored wrong). Tree growth, mining, every
    evaluation and the in-training dev metric resolve readings here, so one reply is scored the same way in
    every stage. ``own_previous`` and ``partner_latest`` are answers as stored (canonical or raw).
    """
    if outcome == "answer":
        return canonical(answer, choices)
    if outcome == "agree":
        return canonical(partner_latest, choices)
    if outcome == "disagree":
        return canonical(own_previous, choices)
    if outcome == "none":
        return None
    raise ValueError(f"unknown extraction outcome {outcome!r} (one of {', '.join(OUTCOMES)})")
