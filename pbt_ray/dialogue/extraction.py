"""Answer extraction with the extractor model: a few-shot prompt, in our own words (PBT_SPEC.md §1.8).

The extractor reads one turn and completes ``Final Answer: <1-3 words>``, or one of three special
outcomes when the turn holds no answer of its own: Agree (it only agrees with the partner), Disagree (it
only rejects the partner's answer), NONE (nothing usable). The few-shot examples are earlier chat turns
and the answer line is prefilled, which keeps even small models on format. Parsing is
:func:`pbt_ray.answers.parse_extraction`; an empty turn is NONE without a model call.
"""

from __future__ import annotations

import re

from pbt_ray.answers import parse_extraction

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
REQUEST_OPTIONS = {"continue_final_message": True, "add_generation_prompt": False, "stop": ["\n"]}
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
